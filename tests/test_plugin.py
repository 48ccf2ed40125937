"""Plugin behaviour through pytester: parametrization, ordering, -k selection, results and report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytest_vllmgrid.progress import config_of_nodeid

from conftest import REPO, fake_grid, read_events, servers_using

TWO_TESTS = """
def test_first(vllm_endpoint):
    assert vllm_endpoint.base_url.startswith("http://127.0.0.1:")

def test_second(vllm_endpoint, vllm_config):
    assert vllm_endpoint.model == "tiny"
"""


def three_configs() -> list[dict]:
    return [{"name": n, "env": {"FAKE_NAME": n}, "max_num_seqs": i + 1}
            for i, n in enumerate(["prefix_only_a", "baseline", "prefix_only_b"])]


def test_each_config_is_deployed_once_and_torn_down_before_the_next(pytester, write_grid, events_file):
    grid = write_grid(fake_grid(three_configs(), baseline="baseline"))
    pytester.makepyfile(test_bench=TWO_TESTS)
    result = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    assert read_events(events_file) == ["start baseline", "stop baseline", "start prefix_only_a",
                                        "stop prefix_only_a", "start prefix_only_b", "stop prefix_only_b"]


def test_k_selects_matching_configs_and_deploys_nothing_else(pytester, write_grid, events_file):
    grid = write_grid(fake_grid(three_configs(), baseline="baseline"))
    pytester.makepyfile(test_bench=TWO_TESTS)
    result = pytester.runpytest_subprocess("--grid", str(grid), "-k", "prefix_only", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    started = [e for e in read_events(events_file) if e.startswith("start")]
    assert started == ["start prefix_only_a", "start prefix_only_b"]


def test_ids_are_config_names(pytester, write_grid):
    grid = write_grid(fake_grid(three_configs(), baseline="baseline"))
    pytester.makepyfile(test_bench=TWO_TESTS)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--co", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["test_bench.py::test_first[[]baseline[]]", "test_bench.py::test_first[[]prefix_only_a[]]"])


def test_collect_only_lists_every_benchmark_once_per_seed_config():
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--grid", "configs/grid.json", "--co", "-q",
                          "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    seed_names = json.loads((REPO / "configs" / "grid.json").read_text())
    names = [c["name"] for c in seed_names["configs"]]
    assert len(names) == 12
    per_config = {n: [i for i in ids if config_of_nodeid(i, names) == n] for n in names}
    counts = {len(v) for v in per_config.values()}
    assert len(counts) == 1 and counts.pop() > 0, per_config
    assert len(ids) == sum(len(v) for v in per_config.values())


def test_results_json_per_config_and_markdown_report(pytester, write_grid):
    grid = write_grid(fake_grid(three_configs()[:2], baseline="baseline"))
    pytester.makepyfile(test_bench=TWO_TESTS)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    data = json.loads((pytester.path / "out" / "baseline.json").read_text())
    assert data["config_name"] == "baseline"
    assert data["status"] == "complete"
    assert data["config_params"] == {"max_num_seqs": 2}
    assert data["deployment"]["status"] == "success"
    assert data["deployment"]["startup_time_seconds"] > 0
    assert data["deployment"]["health_check_attempts"] >= 1
    assert data["tests"]["first"]["status"] == "passed"
    assert data["errors"] == []
    manifest = json.loads((pytester.path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and set(manifest["configs"]) == {"baseline", "prefix_only_a"}
    report = (pytester.path / "out" / "report.md").read_text()
    assert "prefix_only_a" in report and "## Recommendation" in report
    result.stdout.fnmatch_lines(["*vllmgrid*", "*markdown report: *report.md"])


def test_a_config_that_fails_to_deploy_errors_with_vllms_reason_and_the_grid_goes_on(pytester, write_grid, events_file):
    configs = three_configs()
    configs[0]["env"]["FAKE_VLLM_EXIT"] = "--bogus-flag"
    grid = write_grid(fake_grid(configs, baseline="baseline"))
    pytester.makepyfile(test_bench=TWO_TESTS)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(["*deployment of prefix_only_a failed*unrecognized arguments: --bogus-flag*"])
    failed = json.loads((pytester.path / "out" / "prefix_only_a.json").read_text())
    assert failed["status"] == "failed" and failed["deployment"]["status"] == "failed"
    assert failed["deployment"]["error"]["exit_code"] == 2
    assert "start prefix_only_b" in read_events(events_file)


def test_baseline_that_cannot_deploy_stops_the_run(pytester, write_grid, events_file):
    configs = three_configs()
    configs[1]["env"]["FAKE_VLLM_EXIT"] = "--bogus-flag"
    grid = write_grid(fake_grid(configs, baseline="baseline"))
    pytester.makepyfile(test_bench=TWO_TESTS)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*baseline config 'baseline' could not deploy*"])
    assert read_events(events_file) == []
    assert result.ret != 0


def test_no_server_process_survives_the_session(pytester, write_grid, events_file):
    grid = write_grid(fake_grid(three_configs()[:1], baseline="prefix_only_a"))
    pytester.makepyfile(test_bench=TWO_TESTS)
    pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    assert servers_using(events_file) == []
    assert read_events(events_file) == ["start prefix_only_a", "stop prefix_only_a"]


def test_endpoint_deployer_measures_an_already_running_server(pytester, write_grid):
    from fault_server import FaultServerProcess

    with FaultServerProcess("ok", model="tiny", max_lifetime_s=60) as server:
        grid = write_grid({"deployer": "endpoint", "endpoint": {"base_url": server.base_url},
                           "served_model_name": "tiny", "configs": [{"name": "running"}]})
        pytester.makepyfile(test_bench=TWO_TESTS.replace("127.0.0.1:", "127.0.0.1"))
        result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=2)
        data = json.loads((pytester.path / "out" / "running.json").read_text())
        assert data["deployment"]["endpoint"] == server.base_url
        assert data["deployment"]["params_applied"] is False


def test_endpoint_deployer_preflight_fails_when_nothing_answers(pytester, write_grid):
    grid = write_grid({"deployer": "endpoint", "endpoint": {"base_url": "http://127.0.0.1:9"},
                       "configs": [{"name": "running"}]})
    pytester.makepyfile(test_bench=TWO_TESTS)
    result = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*preflight of the endpoint deployer failed: endpoint http://127.0.0.1:9 does not answer*"])
