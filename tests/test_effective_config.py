"""Effective-config proof: after readiness the server's startup line, cache_config_info gauge and /v1/models
are compared with the flags the grid states; a stated flag the server does not run fails the deployment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import fake_grid
from pytest_vllmgrid.deploy.effective import check_flags, parse_non_default_args, requested_flags
from pytest_vllmgrid.grid import ServerConfig
from pytest_vllmgrid.results import read_config_result

H200_RUN = Path(__file__).parent / "data" / "h200_run"
UP = "def test_up(vllm_endpoint):\n    assert vllm_endpoint.base_url\n"

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", ["baseline", "chunked_prefill", "prefix_caching"])
def test_the_h200_runs_startup_lines_confirm_every_compared_flag_its_config_states(name: str) -> None:
    args = parse_non_default_args((H200_RUN / name / "server.log").read_text())
    params = read_config_result(json.loads((H200_RUN / f"{name}.json").read_text())).config_params
    checks = {c.flag: c for c in check_flags(params, args, {}, {})}
    assert args["max_model_len"] == 40960 and args["served_model_name"] == ["qwen3-8b-dummy"]
    assert {f: c.status for f, c in checks.items() if c.status != "not_verifiable"} == {
        f: "confirmed" for f in ("max_model_len", "gpu_memory_utilization", "enable_prefix_caching",
                                 "enable_chunked_prefill", *(["max_num_batched_tokens"] if name == "chunked_prefill"
                                                             else []))}
    assert checks["enforce_eager"].status == "not_verifiable"  # False is vLLM's default: the line omits it


def test_the_last_startup_line_counts_and_a_value_that_is_no_literal_is_kept_as_text() -> None:
    log = ("INFO [api_utils.py:286] non-default args: {'max_num_seqs': 8}\n"
           "INFO [api_utils.py:286] non-default args: {'max_num_seqs': 4, "
           "'load_format': <LoadFormat.DUMMY: 'dummy'>, 'tool_call_parser': 'a,b'}\n")
    assert parse_non_default_args(log) == {"max_num_seqs": 4, "load_format": "<LoadFormat.DUMMY: 'dummy'>",
                                           "tool_call_parser": "a,b"}
    assert parse_non_default_args("INFO no such line") is None


def test_a_gauge_that_contradicts_a_stated_flag_is_a_mismatch_naming_requested_and_seen() -> None:
    checks = check_flags({"enable_prefix_caching": True, "gpu_memory_utilization": 0.9},
                         {"enable_prefix_caching": True}, {"enable_prefix_caching": "False",
                                                           "gpu_memory_utilization": "0.9"}, {})
    assert [(c.flag, c.status) for c in checks][:2] == [("enable_prefix_caching", "mismatch"),
                                                        ("gpu_memory_utilization", "confirmed")]
    assert checks[0].text() == "enable_prefix_caching requested true, seen true (startup log); false (/metrics)"


def test_unstated_flags_are_recorded_as_seen_and_extra_args_count_as_stated() -> None:
    config = ServerConfig(name="c", index=0, params={"max_num_seqs": None},
                          extra_args=("--max-model-len", "2k", "--no-enable-chunked-prefill"))
    assert requested_flags(config) == {"max_model_len": "2k", "enable_chunked_prefill": False}
    checks = {c.flag: c for c in check_flags(requested_flags(config), {}, {"block_size": "16"},
                                             {"max_model_len": 2000})}
    assert checks["max_model_len"].status == "confirmed"  # vLLM reads 2k as 2000
    assert checks["enable_chunked_prefill"].status == "not_verifiable"
    assert checks["block_size"].status == "seen" and checks["block_size"].seen == {"metrics": 16}


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_up=UP)
    return pytester.runpytest_subprocess(*args, "--results-dir", "out", "-p", "no:cacheprovider",
                                         "-p", "no:hypothesispytest", timeout=90)


def test_a_server_running_its_configs_flags_records_them_confirmed_and_the_report_shows_it(
        pytester: pytest.Pytester, write_grid) -> None:
    params = {"enable_prefix_caching": False, "max_num_seqs": 4, "max_model_len": 2048, "enforce_eager": True}
    result = run(pytester, "--grid", str(write_grid(fake_grid([{"name": "base", **params}]))))
    result.assert_outcomes(passed=1)
    effective = json.loads((pytester.path / "out" / "base.json").read_text())["deployment"]["effective"]
    statuses = {c["flag"]: c["status"] for c in effective["checks"]}
    assert statuses == {"enable_prefix_caching": "confirmed", "max_num_seqs": "confirmed",
                        "max_model_len": "confirmed", "enforce_eager": "not_verifiable", "block_size": "seen",
                        "gpu_memory_utilization": "seen", "kv_cache_dtype": "seen"}
    assert set(effective["sources"]) == {"log", "metrics", "models"} and effective["unavailable"] == {}
    report = (pytester.path / "out" / "report.md").read_text()
    line = next(l for l in report.splitlines() if l.startswith("- base: "))
    assert "## Effective config" in report and line.startswith(
        "- base: confirmed: enable_prefix_caching=false (startup log, /metrics), max_num_seqs=4 (startup log), "
        "max_model_len=2048 (startup log, /v1/models); not verifiable: enforce_eager; not stated, seen: "), line


def test_a_server_that_runs_another_value_fails_its_deployment_naming_flag_requested_and_seen(
        pytester: pytest.Pytester, write_grid) -> None:
    configs = [{"name": "base", "enable_prefix_caching": True},
               {"name": "lying", "enable_prefix_caching": True, "env": {"FAKE_VLLM_LIE": "enable_prefix_caching"}}]
    result = run(pytester, "--grid", str(write_grid(fake_grid(configs, baseline="base"))), "-rA")
    result.assert_outcomes(passed=1, errors=1)
    error = ("deployment of lying failed: server for lying does not run the requested config: enable_prefix_caching "
             "requested true, seen false (startup log, /metrics)")
    assert f"{error}; full log: out/lying/server.log" in result.outlines, result.outlines[-25:]
    lying = json.loads((pytester.path / "out" / "lying.json").read_text())
    assert lying["status"] == "failed" and lying["deployment"]["error"]["kind"] == "config_mismatch"
    assert [c["status"] for c in lying["deployment"]["effective"]["checks"] if c["flag"] == "enable_prefix_caching"] \
        == ["mismatch"]
    assert "- lying: MISMATCH: enable_prefix_caching requested true, seen false (startup log, /metrics)" in \
        (pytester.path / "out" / "report.md").read_text()


def test_the_endpoint_deployer_records_what_the_server_shows_without_failing_on_unstated_flags(
        pytester: pytest.Pytester) -> None:
    from fault_server import FaultServerProcess

    labels = json.dumps({"enable_prefix_caching": "False", "block_size": "32", "gpu_memory_utilization": "0.5",
                         "cache_dtype": "auto"})
    with FaultServerProcess("ok", model="my-model", max_lifetime_s=60, cache_config=labels) as server:
        result = run(pytester, "--vllm-deployer", "endpoint", "--vllm-endpoint-url", server.base_url)
    result.assert_outcomes(passed=1)
    effective = json.loads((pytester.path / "out" / "endpoint.json").read_text())["deployment"]["effective"]
    assert {c["flag"]: (c["status"], c["seen"]) for c in effective["checks"]} == {
        "enable_prefix_caching": ("seen", {"metrics": False}), "block_size": ("seen", {"metrics": 32}),
        "gpu_memory_utilization": ("seen", {"metrics": 0.5}), "kv_cache_dtype": ("seen", {"metrics": "auto"}),
        "max_model_len": ("seen", {"models": 4096})}
    assert effective["unavailable"] == {"log": "the deployer keeps no server log"}
