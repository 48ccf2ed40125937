"""The seeds' grid workflow: order, early stop on the goal, dry run, live progress lines."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from conftest import REPO, fake_grid, read_events

THRESHOLDS_GOAL = """
thresholds:
  ttft.errors: {max: 0}
goal: [ttft.errors]
"""


def configs(*names: str) -> list[dict]:
    return [{"name": n, "env": {"FAKE_NAME": n}, "max_num_seqs": i + 1} for i, n in enumerate(names)]


@pytest.fixture
def ttft_benchmark(pytester):
    """The real TTFT benchmark file, run against the fake vLLM."""
    shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")


def test_configs_run_in_phase_then_priority_order_baseline_first(pytester, write_grid, events_file):
    grid = write_grid(fake_grid([
        {"name": "late", "phase": "two", "priority": 1, "env": {"FAKE_NAME": "late"}},
        {"name": "early_low", "phase": "one", "priority": 5, "env": {"FAKE_NAME": "early_low"}},
        {"name": "base", "phase": "two", "env": {"FAKE_NAME": "base"}},
        {"name": "early_high", "phase": "one", "priority": 2, "env": {"FAKE_NAME": "early_high"}},
    ], baseline="base", phases=["one", "two"]))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider").assert_outcomes(passed=4)
    starts = [e.split()[1] for e in read_events(events_file) if e.startswith("start")]
    assert starts == ["base", "early_high", "early_low", "late"]


def test_stop_when_met_skips_the_remaining_configs_with_the_reason(pytester, write_grid, events_file, ttft_benchmark):
    (pytester.path / "th.yaml").write_text(THRESHOLDS_GOAL)
    grid = write_grid(fake_grid(configs("base", "good", "never_run"), baseline="base", thresholds="th.yaml"))
    result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-stop-when-met", "--results-dir", "out",
                                           "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=4, skipped=2)
    result.stdout.fnmatch_lines(["*goal met by good*"])
    assert "start never_run" not in read_events(events_file)
    skipped = json.loads((pytester.path / "out" / "never_run.json").read_text())
    assert skipped["status"] == "skipped" and skipped["skip_reason"] == "goal met by good"
    assert "goal met by good" in (pytester.path / "out" / "report.md").read_text()


def test_without_stop_when_met_every_config_runs(pytester, write_grid, events_file, ttft_benchmark):
    (pytester.path / "th.yaml").write_text(THRESHOLDS_GOAL)
    grid = write_grid(fake_grid(configs("base", "good", "also_run"), baseline="base", thresholds="th.yaml"))
    pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider").assert_outcomes(passed=6)
    assert "start also_run" in read_events(events_file)


def test_dry_run_prints_each_command_line_and_an_estimate_and_deploys_nothing(pytester, write_grid, events_file):
    grid = write_grid(fake_grid(configs("base", "other"), baseline="base"))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-dry-run", "-p", "no:cacheprovider")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*dry run: grid *grid.json is valid*preflight passed*",
                                 "2 config(s), 2 benchmark(s); no estimate: no earlier run of grid 'grid' with model "
                                 "'fake-model' under *results",
                                 "[[]1/2[]] base (baseline)", "*command: *fake_vllm.py serve fake-model --host 127.0.0.1"
                                 " --port '<free port>' --served-model-name tiny --max-num-seqs 1",
                                 "[[]2/2[]] other"])
    assert "estimated total" not in result.stdout.str()
    assert read_events(events_file) == []


def test_dry_run_fails_when_preflight_fails(pytester, write_grid):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        grid = write_grid(fake_grid(configs("base"), port=busy.getsockname()[1]))
        pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
        result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-dry-run", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*preflight*port * is already in use*"])


def test_dry_run_fails_on_an_invalid_grid(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "a", "max_num_seqs": "x"}]))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-dry-run", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_progress_lines_in_a_non_tty_log(pytester, write_grid):
    grid = write_grid(fake_grid(configs("base", "other"), baseline="base"))
    pytester.makepyfile(test_x="def test_a(vllm_endpoint): pass\ndef test_b(vllm_endpoint): pass")
    result = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["[[]1/2[]] base: deploying…", "[[]1/2[]] base: ready in * s",
                                 "[[]1/2[]] base: done in * s: a ✓ b ✓ — 1 config(s) left, ETA *",
                                 "[[]2/2[]] other: deploying…", "[[]2/2[]] other: done in *: a ✓ b ✓"])
    assert "\x1b[" not in result.stdout.str().split("[1/2] base: deploying")[1].split("\n")[0]


def test_quiet_hides_progress_and_verbose_adds_per_test_lines(pytester, write_grid):
    grid = write_grid(fake_grid(configs("base"), baseline="base"))
    pytester.makepyfile(test_x="def test_a(vllm_endpoint): pass")
    quiet = pytester.runpytest_subprocess("--grid", str(grid), "-q", "-p", "no:cacheprovider")
    assert "deploying…" not in quiet.stdout.str()
    verbose = pytester.runpytest_subprocess("--grid", str(grid), "-v", "-p", "no:cacheprovider")
    verbose.stdout.fnmatch_lines(["[[]1/1[]] base: a ✓*"])
