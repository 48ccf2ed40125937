"""Command-line options are checked before anything deploys, one line each, as the grid file's keys are."""

from __future__ import annotations

import json

import pytest

from conftest import fake_grid, read_events

BAD_THRESHOLDS = "thresholds:\n  kv_cache.accelleration: {min: 1.0}\n"
ONE_TEST = "def test_x(vllm_endpoint): pass"


def usage_error(result: pytest.RunResult) -> str:
    """The run's one error line (pytest prints a UsageError as 'ERROR: ...' on stderr)."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    return result.stderr.str()


def test_a_bad_metric_in_vllm_thresholds_fails_before_the_default_grid_deploys(pytester, events_file):
    (pytester.path / "th.yaml").write_text(BAD_THRESHOLDS)
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--vllm-thresholds", "th.yaml", "-p", "no:cacheprovider")
    err = usage_error(result)
    assert "--vllm-thresholds: thresholds file th.yaml" in err
    assert "kv_cache has no metric 'accelleration'" in err and "(did you mean acceleration?)" in err
    assert read_events(events_file) == [] and not (pytester.path / "results").exists()


def test_a_bad_metric_in_vllm_thresholds_fails_like_the_grids_thresholds_key(pytester, write_grid, events_file):
    (pytester.path / "th.yaml").write_text(BAD_THRESHOLDS)
    grid = write_grid(fake_grid([{"name": "base"}]))
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-thresholds", "th.yaml", "-p", "no:cacheprovider")
    assert "(did you mean acceleration?)" in usage_error(result)
    assert read_events(events_file) == []


def test_a_misspelt_vllm_bench_key_is_one_line_with_did_you_mean(pytester):
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--vllm-bench", "prefix_tokns=4096", "-p", "no:cacheprovider")
    err = usage_error(result)
    line = next(line for line in err.splitlines() if "prefix_tokns" in line)
    assert line.startswith("ERROR: --vllm-bench prefix_tokns=4096: unknown benchmark setting 'prefix_tokns'")
    assert "(did you mean prefix_tokens" in line and "allowed: repetitions, " in line
    assert "cpu-tiny.yaml" not in err  # the option is to blame, not the embedded grid


def test_a_bad_vllm_bench_value_names_the_option_and_the_rule(pytester):
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--vllm-bench", "prefix_tokens=8", "-p", "no:cacheprovider")
    assert "ERROR: --vllm-bench prefix_tokens=8: benchmark setting 'prefix_tokens' = 8: Input should be greater " \
           "than or equal to 16" in usage_error(result)


def test_a_bad_grid_benchmarks_key_names_the_grid_field(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "base"}], benchmarks={"warmpu": 1}))
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    assert "field 'benchmarks.warmpu': unknown benchmark setting 'warmpu' (did you mean warmup?)" in usage_error(result)


def test_vllm_repetitions_zero_is_refused_up_front(pytester, events_file):
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--vllm-repetitions", "0", "-p", "no:cacheprovider")
    assert "ERROR: --vllm-repetitions 0: benchmark setting 'repetitions' = 0" in usage_error(result)
    assert read_events(events_file) == []


def test_an_ini_number_that_is_not_one_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nvllm_replicas = two\n")
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert "ini vllm_replicas = 'two': expected an integer" in usage_error(result)


def test_endpoint_deployer_without_a_grid_measures_the_running_server(pytester):
    from fault_server import FaultServerProcess

    with FaultServerProcess("ok", model="my-model", max_lifetime_s=60) as server:
        pytester.makepyfile(test_x="def test_x(vllm_endpoint):\n    assert vllm_endpoint.model == 'my-model'\n")
        result = pytester.runpytest_subprocess("--vllm-deployer", "endpoint", "--vllm-endpoint-url", server.base_url,
                                               "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "out" / "endpoint.json").read_text())
    assert data["deployment"]["endpoint"] == server.base_url and data["deployment"]["model"] == "my-model"


def test_endpoint_url_replaces_the_grids_endpoint_section(pytester, write_grid):
    from fault_server import FaultServerProcess

    with FaultServerProcess("ok", model="tiny", max_lifetime_s=60) as server:
        grid = write_grid({"deployer": "endpoint", "endpoint": {"base_url": "http://127.0.0.1:9"},
                           "served_model_name": "tiny", "configs": [{"name": "running"}]})
        pytester.makepyfile(test_x=ONE_TEST)
        result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-endpoint-url", server.base_url,
                                               "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert json.loads((pytester.path / "out" / "running.json").read_text())["deployment"]["endpoint"] == server.base_url


def test_vllm_deployer_endpoint_turns_a_process_grid_onto_a_running_server(pytester, write_grid, events_file):
    from fault_server import FaultServerProcess

    with FaultServerProcess("ok", model="tiny", max_lifetime_s=60) as server:
        grid = write_grid(fake_grid([{"name": "base"}]))
        pytester.makepyfile(test_x=ONE_TEST)
        result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-deployer", "endpoint",
                                               "--vllm-endpoint-url", server.base_url, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert read_events(events_file) == []  # nothing was started


def test_vllm_deployer_endpoint_without_a_url_says_what_is_missing(pytester):
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--vllm-deployer", "endpoint", "-p", "no:cacheprovider")
    assert "deployer 'endpoint' needs the server's URL: --vllm-endpoint-url URL" in usage_error(result)


def test_a_malformed_endpoint_url_is_refused(pytester):
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--vllm-deployer", "endpoint", "--vllm-endpoint-url", "localhost:8000",
                                           "-p", "no:cacheprovider")
    assert '--vllm-endpoint-url = "localhost:8000": expected http://HOST:PORT' in usage_error(result)


def test_an_endpoint_url_with_a_process_grid_asks_for_the_endpoint_deployer(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "base"}]))
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-endpoint-url", "http://127.0.0.1:8000",
                                           "-p", "no:cacheprovider")
    assert "only the endpoint deployer reads it, and the grid's deployer is 'process'; add --vllm-deployer endpoint" \
        in usage_error(result)


def test_an_endpoint_serving_several_models_asks_which(pytester):
    import http.server
    import threading

    class TwoModels(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps({"data": [{"id": "a"}, {"id": "b"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TwoModels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pytester.makepyfile(test_x=ONE_TEST)
        result = pytester.runpytest_subprocess("--vllm-deployer", "endpoint", "--vllm-endpoint-url",
                                               f"http://127.0.0.1:{server.server_port}", "-p", "no:cacheprovider")
    finally:
        server.shutdown()
    assert "lists 2 models (a, b): name the one to measure with --vllm-model NAME" in usage_error(result)


def test_a_test_suite_without_vllm_options_is_not_validated(pytester, monkeypatch):
    monkeypatch.setenv("VLLMGRID_CACHE_DIR", str(pytester.path / "cache"))
    pytester.makepyfile(test_plain="def test_plain(): pass")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_vllm_noise_from_without_a_run_is_refused_up_front(pytester, events_file):
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--vllm-noise-from", "no-such-run", "-p", "no:cacheprovider")
    assert "ERROR: --vllm-noise-from no-such-run: not a results directory with config results" in usage_error(result)
    assert read_events(events_file) == []
