"""The `vllmgrid` console script: compare two stored runs (exit codes, table) and rebuild reports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_gate import latencies, shifted_runs, store_run, ttft_measurement
from pytest_vllmgrid.cli import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, main


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    """OLD, an A/A rerun of it, and a run whose baseline is 30% slower."""
    def run(name: str, scale: float, seed: int) -> Path:
        store_run(tmp_path / name, {"baseline": {"ttft[short]": ttft_measurement(
            [v * scale for v in latencies(80, seed)])}})
        return tmp_path / name
    return {"old": run("old", 1.0, 1), "same": run("same", 1.0, 2), "slow": run("slow", 1.3, 3)}


def test_a_a_comparison_exits_zero(runs, capsys) -> None:
    assert main(["compare", str(runs["old"]), str(runs["same"]), "--fail", "ttft_p50:10%"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "ttft[short].ttft_ms" in out and "regression gate: passed (1 comparison(s))" in out
    assert "one run per side: the CI covers request-to-request noise only" in out


def test_a_significant_regression_exits_one_and_names_it(runs, capsys) -> None:
    assert main(["compare", str(runs["old"]), str(runs["slow"]), "--fail", "ttft_p50:10%"]) == EXIT_REGRESSION
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("baseline"))
    assert "ttft[short].ttft_ms" in row and "+10%" in row and "95% CI" in row and row.rstrip().endswith("REGRESSION")
    assert "regression gate: 1 regression(s) in 1 comparison(s)" in out


def test_a_regression_within_the_allowed_percentage_exits_zero(runs) -> None:
    assert main(["compare", str(runs["old"]), str(runs["slow"]), "--fail", "ttft_p50:60%"]) == EXIT_OK


def test_without_fail_specs_the_table_is_informative_only(runs, capsys) -> None:
    assert main(["compare", str(runs["old"]), str(runs["slow"])]) == EXIT_OK
    assert "significantly worse" in capsys.readouterr().out


def test_an_unknown_metric_exits_two_with_the_allowed_names(runs, capsys) -> None:
    assert main(["compare", str(runs["old"]), str(runs["same"]), "--fail", "latency:10%"]) == EXIT_USAGE
    assert "allowed metric names: ttft_p50" in capsys.readouterr().err


def test_a_missing_directory_exits_two(runs, tmp_path, capsys) -> None:
    assert main(["compare", str(tmp_path / "nowhere"), str(runs["same"])]) == EXIT_USAGE
    assert "no such results directory" in capsys.readouterr().err


def test_a_spec_that_judges_nothing_exits_two(runs, capsys) -> None:
    assert main(["compare", str(runs["old"]), str(runs["same"]), "--fail", "throughput:5%"]) == EXIT_USAGE
    assert "WARNING: throughput:5% judged nothing" in capsys.readouterr().out


def test_report_rebuilds_markdown_json_and_html(runs, capsys) -> None:
    for name in ("report.md", "report.json", "report.html"):
        (runs["old"] / name).unlink(missing_ok=True)
    assert main(["report", str(runs["old"])]) == EXIT_OK
    assert all((runs["old"] / name).is_file() for name in ("report.md", "report.json", "report.html"))
    assert "html report: " in capsys.readouterr().out


def test_console_script_is_installed(runs) -> None:
    script = shutil.which("vllmgrid", path=str(Path(sys.executable).parent))
    assert script, "vllmgrid console script missing: pip install -e ."
    out = subprocess.run([script, "compare", str(runs["old"]), str(runs["slow"]), "--fail", "ttft_p50:10%"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == EXIT_REGRESSION, out.stdout + out.stderr


@pytest.fixture
def run_sets(tmp_path: Path) -> dict[str, list[str]]:
    """Three runs each: OLD, an A/A rerun of it, and runs 30% slower (every run shifted as a whole)."""
    def runs(prefix: str, scale: float, seeds: list[int]) -> list[str]:
        paths = []
        for seed, values in zip(seeds, shifted_runs(80 * scale, seeds)):
            store_run(tmp_path / f"{prefix}{seed}", {"baseline": {"ttft[short]": ttft_measurement(values)}})
            paths.append(str(tmp_path / f"{prefix}{seed}"))
        return paths
    return {"old": runs("old", 1.0, [1, 2, 3]), "same": runs("same", 1.0, [4, 5, 6]),
            "slow": runs("slow", 1.3, [7, 8, 9])}


def test_several_runs_per_side_after_a_double_dash(run_sets, capsys) -> None:
    old, same, slow = run_sets["old"], run_sets["same"], run_sets["slow"]
    assert main(["compare", *old, "--", *same, "--fail", "ttft_p50:10%"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "runs as the unit" in out and "regression gate: passed (1 comparison(s))" in out
    assert main(["compare", "--fail", "ttft_p50:10%", *old, "--", *slow]) == EXIT_REGRESSION
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("baseline"))
    assert " 3/3 " in row and row.rstrip().endswith("REGRESSION")
    assert f"compared with {', '.join(old)} (OLD, 3 run(s)); NEW: {', '.join(slow)}" in out


def test_several_runs_per_side_with_old_and_new_options(run_sets, capsys) -> None:
    old, slow = run_sets["old"], run_sets["slow"]
    assert main(["compare", "--old", *old, "--new", *slow, "--fail", "ttft_p50:10%"]) == EXIT_REGRESSION
    assert main(["compare", "--new", slow[0], "--fail", "ttft_p50:50%", *old]) == EXIT_OK
    out = capsys.readouterr().out
    assert " 3/1 " in out


def test_several_directories_without_a_separator_or_twice_the_same_exit_two(run_sets, capsys) -> None:
    old = run_sets["old"]
    assert main(["compare", *old]) == EXIT_USAGE
    assert "OLD... -- NEW..." in capsys.readouterr().err
    assert main(["compare", old[0], old[0], "--", old[2]]) == EXIT_USAGE
    assert "given twice" in capsys.readouterr().err
