"""pytest-xdist scale-out: one config per worker, disjoint GPU sets and ports, one report."""

from __future__ import annotations

import json
import re

import pytest

from conftest import fake_grid

pytest.importorskip("xdist")

RECORD_ENV = """
import os, json
def test_env(vllm_endpoint, vllm_config):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
    port = int(vllm_endpoint.base_url.rsplit(":", 1)[1])
    out = os.path.join(os.environ["SEEN_DIR"], f"seen-{vllm_config.name}.json")
    out = __import__("pathlib").Path(out)
    out.write_text(json.dumps({"worker": worker, "port": port}))

def test_second(vllm_endpoint):
    pass
"""


def configs(*names: str) -> list[dict]:
    return [{"name": n, "env": {"FAKE_NAME": n}} for n in names]


def test_each_config_runs_on_one_worker_with_disjoint_gpu_sets(pytester, write_grid, events_file, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("FAKE_VLLM_RECORD_CUDA", "1")
    monkeypatch.setenv("SEEN_DIR", str(pytester.path))
    grid = write_grid(fake_grid(configs("base", "a", "b", "c"), baseline="base"))
    pytester.makepyfile(test_x=RECORD_ENV)
    result = pytester.runpytest_subprocess("--grid", str(grid), "-n", "2", "--vllm-gpus-per-config", "2",
                                           "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    starts = [line.split() for line in events_file.read_text().splitlines() if line.startswith("start")]
    cuda_by_config = {parts[1]: parts[2] for parts in starts}
    assert sorted(cuda_by_config) == ["a", "b", "base", "c"]  # each config deployed exactly once
    worker_of = {name: json.loads((pytester.path / f"seen-{name}.json").read_text())["worker"]
                 for name in cuda_by_config}
    expected = {"gw0": "cuda=0,1", "gw1": "cuda=2,3"}  # worker gwI gets devices [2I, 2I+2)
    assert {name: cuda_by_config[name] for name in worker_of} == {
        name: expected[worker] for name, worker in worker_of.items()}
    for name, worker in worker_of.items():  # the results say where each config ran
        deployment = json.loads((pytester.path / "out" / f"{name}.json").read_text())["deployment"]
        assert (deployment["worker"], ",".join(deployment["gpu_devices"])) == (worker, expected[worker][5:])


def test_workers_use_disjoint_port_ranges_and_one_report_aggregates_all(pytester, write_grid, monkeypatch):
    monkeypatch.setenv("SEEN_DIR", str(pytester.path))
    grid = write_grid(fake_grid(configs("base", "a", "b"), baseline="base"))
    pytester.makepyfile(test_x=RECORD_ENV)
    result = pytester.runpytest_subprocess("--grid", str(grid), "-n", "2", "--vllm-port-base", "31000",
                                           "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    ports = {}
    for name in ("base", "a", "b"):
        data = json.loads((pytester.path / "out" / f"{name}.json").read_text())
        assert data["status"] == "complete"
        ports[name] = data["deployment"]["port"]
    assert all(31000 <= p < 31200 for p in ports.values())
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert {c["name"] for c in report["configs"]} == {"base", "a", "b"}
    assert json.loads((pytester.path / "out" / "manifest.json").read_text())["status"] == "complete"


def test_too_few_gpus_for_the_workers_is_a_clear_error(pytester, write_grid, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    grid = write_grid(fake_grid(configs("base", "a"), baseline="base"))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    result = pytester.runpytest_subprocess("--grid", str(grid), "-n", "2", "--vllm-gpus-per-config", "1",
                                           "-p", "no:cacheprovider")
    assert re.search(r"only 1 are visible", result.stdout.str() + result.stderr.str())


def test_xdist_without_grid_tests_leaves_no_results_behind(pytester):
    """The plugin is active wherever it is installed: `pytest -n 2` on ordinary tests must not make a
    results directory, a manifest or reports."""
    pytester.makepyfile(test_plain="def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert not (pytester.path / "results").exists()
    assert "report" not in result.stdout.str()


RELATIVE = """description: TTFT relative to the baseline, the baseline judged against itself too
thresholds:
  ttft.ttft_ms: {max_vs_baseline_pct: 400, skip_baseline: false}
"""


def test_baseline_relative_bounds_under_xdist_judge_every_config_and_never_wait_on_themselves(pytester, write_grid):
    """The baseline's own record is written only once its outcome is known: it must not wait for it (a hang
    until the hour-long baseline wait ran out), and the other worker's config waits for it, then is judged."""
    import shutil

    from conftest import REPO

    shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")
    (pytester.path / "th.yaml").write_text(RELATIVE)
    grid = write_grid(fake_grid(configs("base", "other"), baseline="base", thresholds="th.yaml"))
    result = pytester.runpytest_subprocess("--grid", str(grid), "-n", "2", "-k", "short", "--results-dir", "out",
                                           "-p", "no:cacheprovider", "--timeout", "120")
    result.assert_outcomes(passed=2)
    for name in ("base", "other"):
        verdicts = json.loads((pytester.path / "out" / f"{name}.json").read_text())["tests"]["ttft[short]"]["thresholds"]
        assert [v["status"] for v in verdicts] == ["pass"], (name, verdicts)
        assert "baseline" in verdicts[0]["message"]
