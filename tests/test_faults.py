"""Fault injection end to end: for each fault mode of tests/fault_server.py, a grid of three fake vLLM servers
(base, faulty, after) runs the real TTFT benchmark. The faulty config's tests fail or error with a one-line reason
naming the fault, the next config passes, every server is stopped and every results file stays valid."""

from __future__ import annotations

import ast
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fault_server import MODES
from conftest import REPO, fake_grid, read_events, servers_using
from reliability import Case, reliability_case

pytestmark = pytest.mark.timeout(180)

TESTS = ("ttft[short]", "ttft[long]")
QUICK = ("--vllm-repetitions", "3", "--vllm-warmup", "0")  # few requests where each waits on a timeout; 3: the fewest a figure may rest on (judge.MIN_SAMPLES)
TTFT_MAX_500 = "thresholds:\n  ttft.ttft_ms: {max: 500}\n"


@dataclass(frozen=True)
class Fault:
    """One fault injected into the middle config, and what its two TTFT tests must end with."""

    id: str
    env: dict[str, str]
    expected: str
    outcome: str  # "failed" (the benchmark ran and failed) or "error" (the deployment failed)
    reason: str  # regex every faulty test's one-line message must match
    kinds: tuple[str, ...] = ()  # error kinds the client must have classified (benchmark ran)
    args: tuple[str, ...] = ()
    thresholds: str | None = None
    startup_timeout_s: float = 30
    per_test: dict[str, tuple[str, str]] = field(default_factory=dict)  # test -> (outcome, reason) overrides


def _not_ready(stage: str) -> str:
    return rf"^Failed: deployment of faulty failed: server for faulty not ready after 3 s \(stage {stage}"


def _no_success(kind: str) -> str:
    return rf"^AssertionError: no request succeeded: .*'{kind}'"


AFTER_READY = {"FAKE_VLLM_FAULT_AFTER": "1"}  # the readiness probe's completion is served; the fault starts after
FAULTS = [
    Fault("never_ready", {"FAKE_VLLM_MODE": "never_ready"},
          "deployment times out after startup_timeout_s (3 s) naming `/health answered 503`; tests error",
          "error", _not_ready(r"http: /health answered 503\)"), startup_timeout_s=3),
    Fault("http_500 from start", {"FAKE_VLLM_MODE": "http_500"},
          "not ready: deployment times out naming the completion probe's HTTP 500 and body; tests error",
          "error", _not_ready(r"completion: /v1/completions answered 500: .*injected failure"), startup_timeout_s=3),
    Fault("http_503 from start", {"FAKE_VLLM_MODE": "http_503"},
          "not ready: deployment times out naming the completion probe's HTTP 503; tests error",
          "error", _not_ready(r"completion: /v1/completions answered 503"), startup_timeout_s=3),
    Fault("reset from start", {"FAKE_VLLM_MODE": "reset"},
          "not ready: deployment times out naming the dropped connection; tests error",
          "error", _not_ready(r"completion: RemoteProtocolError: Server disconnected"), startup_timeout_s=3),
    Fault("stall from start", {"FAKE_VLLM_MODE": "stall"},
          "not ready: the stalled probe is cut at the startup deadline (ReadTimeout), not after 30 s; tests error",
          "error", _not_ready(r"completion: ReadTimeout"), startup_timeout_s=3),
    Fault("wrong_model", {"FAKE_VLLM_MODE": "wrong_model"},
          "not ready: deployment times out naming the model list it got; tests error",
          "error", _not_ready(r"models: /v1/models lists \['other-model'\], not 'tiny'\)"), startup_timeout_s=3),
    Fault("http_500 mid-run", {"FAKE_VLLM_MODE": "http_500", **AFTER_READY},
          "client classifies `http_status`; both benchmarks fail: no request succeeded",
          "failed", _no_success("http_status"), ("http_status",)),
    Fault("http_503 mid-run", {"FAKE_VLLM_MODE": "http_503", **AFTER_READY},
          "client classifies `http_status`; both benchmarks fail: no request succeeded",
          "failed", _no_success("http_status"), ("http_status",)),
    Fault("reset mid-stream", {"FAKE_VLLM_MODE": "reset", **AFTER_READY},
          "client classifies `disconnect` (connection reset after 3 chunks); both benchmarks fail",
          "failed", _no_success("disconnect"), ("disconnect",)),
    Fault("malformed_sse", {"FAKE_VLLM_MODE": "malformed_sse"},
          "client classifies `malformed_sse`; both benchmarks fail",
          "failed", _no_success("malformed_sse"), ("malformed_sse",)),
    Fault("stall mid-stream", {"FAKE_VLLM_MODE": "stall", **AFTER_READY},
          "client read timeout (request_timeout_s=2) classifies `timeout`; both benchmarks fail within seconds",
          "failed", _no_success("timeout"), ("timeout",),
          args=("--vllm-bench", "request_timeout_s=2", *QUICK)),
    Fault("wrong_model mid-run", {"FAKE_VLLM_MODE": "wrong_model", **AFTER_READY},
          "server answers 404 for the model: client classifies `http_status`; both benchmarks fail",
          "failed", _no_success("http_status"), ("http_status",)),
    Fault("slow_first_token", {"FAKE_VLLM_MODE": "slow_first_token", "FAKE_VLLM_TTFT_MS": "1000"},
          "TTFT measured honestly (~1000 ms); the `ttft.ttft_ms max 500` threshold fails both benchmarks by value",
          "failed", r"^AssertionError: faulty: ttft\[(short|long)\]\.ttft_ms p50 = 1\d{3} ms .*<= 500 ms required: "
          r"FAILED$", args=QUICK, thresholds=TTFT_MAX_500),
    Fault("crash_after_n", {"FAKE_VLLM_MODE": "crash_after_n"},
          "server exits (code 3) inside ttft[short]: it fails with `server died during the benchmark (exit code 3)`, "
          "no traceback; ttft[long] errors `server is gone (exit code 3)` with the log; config marked failed with "
          "the death and log tail",
          "failed", "", per_test={
              "ttft[short]": ("failed", r"^server died during the benchmark \(exit code 3\); log: .*server\.log$"),
              "ttft[long]": ("error", r"^Failed: server for faulty is gone \(exit code 3\); log: .*server\.log$")}),
]


@dataclass
class GridRun:
    """One pytester run of the three-config grid."""

    result: pytest.RunResult
    out: Path
    events: list[str]
    configs: dict[str, dict]


def run_grid(pytester: pytest.Pytester, write_grid, fault: Fault) -> GridRun:
    """base (ok, baseline), faulty (the fault), after (ok): the real benchmarks/test_ttft.py against each."""
    shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")
    top: dict = {"startup_timeout_s": fault.startup_timeout_s}
    if fault.thresholds:
        (pytester.path / "th.yaml").write_text(fault.thresholds)
        top["thresholds"] = "th.yaml"
    configs = [{"name": "base", "env": {"FAKE_NAME": "base"}},
               {"name": "faulty", "priority": 1, "env": {"FAKE_NAME": "faulty", **fault.env}},
               {"name": "after", "priority": 2, "env": {"FAKE_NAME": "after"}}]
    grid = write_grid(fake_grid(configs, baseline="base", **top))
    result = pytester.runpytest_subprocess("test_ttft.py", "--grid", str(grid), "--results-dir", "out", "-rA",
                                           "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *fault.args,
                                           timeout=150)
    out = pytester.path / "out"
    loaded = {}
    for name in ("base", "faulty", "after"):
        try:
            loaded[name] = json.loads((out / f"{name}.json").read_text())
        except (OSError, ValueError):
            loaded[name] = {}
    return GridRun(result, out, read_events(pytester.path / "events.txt"), loaded)


def observe_outcomes(case: Case, data: dict) -> None:
    """The faulty config's test outcomes, tests with the same status and message on one line."""
    groups: dict[tuple, list[str]] = {}
    for test in TESTS:
        entry = data.get("tests", {}).get(test, {})
        groups.setdefault((entry.get("status"), entry.get("message") or ""), []).append(
            f"{test} ({entry.get('duration_s')} s)")
    for (status, message), tests in groups.items():
        case.observe(f"{', '.join(tests)}: {status}: {message[:160]}")


def check_survival(case: Case, run: GridRun, events_file: Path, crashed: str | None = None) -> None:
    """Neighbours pass, every started server is stopped (or crashed) and gone, every JSON parses."""
    for name in ("base", "after"):
        tests = run.configs[name].get("tests", {})
        assert [tests.get(t, {}).get("status") for t in TESTS] == ["passed", "passed"], (name, tests)
        assert run.configs[name]["status"] == "complete"
    case.observe("base and after: 2/2 passed each")
    starts = [e.split()[1] for e in run.events if e.startswith("start")]
    stops = [e.split()[1] for e in run.events if e.startswith("stop")]
    assert starts == ["base", "faulty", "after"], run.events
    assert stops == [s for s in starts if s != crashed], run.events
    left = case.check_processes(servers_using(events_file))
    case.observe(f"servers stopped {len(stops)}/{len(starts)}" + (f" ({crashed} had crashed)" if crashed else "")
                 + f", left {len(left)}")
    lost = case.check_results(run.out, ["base", "faulty", "after"])
    case.observe(f"{case.results_checked} JSON files valid, lost {len(lost)}")
    assert lost == [] and left == []
    assert json.loads((run.out / "manifest.json").read_text())["status"] == "complete"
    assert (run.out / "report.md").is_file()


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id.replace(" ", "_") for f in FAULTS])
def test_a_fault_fails_its_config_with_a_one_line_reason_and_the_grid_goes_on(pytester, write_grid, events_file,
                                                                           monkeypatch, tmp_path, fault: Fault):
    monkeypatch.setenv("VLLMGRID_CACHE_DIR", str(tmp_path / "cache"))
    with reliability_case("fault server", fault.id, fault.expected + "; next config passes; all servers stopped; "
                          "results valid") as case:
        run = run_grid(pytester, write_grid, fault)
        faulty = run.configs["faulty"]
        observe_outcomes(case, faulty)
        for test in TESTS:
            outcome, reason = fault.per_test.get(test, (fault.outcome, fault.reason))
            entry = faulty.get("tests", {}).get(test, {})
            message = entry.get("message") or ""
            assert entry.get("status") == outcome, (test, entry, run.result.stdout.str()[-3000:])
            assert "\n" not in message and re.search(reason, message), (test, message)
            kinds = (entry.get("measurement") or {}).get("info", {}).get("error_kinds")
            if fault.kinds:
                assert set(kinds or ()) == set(fault.kinds), (test, kinds)
        if fault.kinds:
            case.observe(f"client error kinds: {', '.join(fault.kinds)}")
        outcomes = run.result.parseoutcomes()
        want_failed = sum(1 for t in TESTS if fault.per_test.get(t, (fault.outcome,))[0] == "failed")
        assert (outcomes.get("passed"), outcomes.get("failed", 0), outcomes.get("errors", 0)) == (
            4, want_failed, 2 - want_failed), outcomes
        if fault.outcome == "error":
            assert faulty["status"] == "failed" and faulty["deployment"]["status"] == "failed"
            assert faulty["deployment"]["error"]["log_tail"], "the deployment error carries the server log"
        crashed = None
        if fault.id == "crash_after_n":
            crashed = "faulty"
            died = faulty["deployment"].get("died") or {}
            case.observe(f"config status {faulty['status']}, died: {died.get('reason')}, "
                         f"{len(died.get('log_tail') or [])} log lines kept")
            assert faulty["status"] == "failed" and died.get("reason") == "exit code 3" and died.get("log_tail")
            terminal = run.result.stdout.str()
            said = re.search(r"^server died during the benchmark \(exit code 3\); log: \S+$", terminal, re.M)
            assert said and "Traceback" not in terminal, terminal[-3000:]
            case.observe(f"terminal: {said.group(0)}")
        check_survival(case, run, events_file, crashed)


def test_every_fault_mode_of_the_fault_server_is_exercised():
    used = {f.env["FAKE_VLLM_MODE"] for f in FAULTS}
    assert set(MODES) - {"ok", "tool_calls"} <= used


HUNG_BENCHMARK = """
import httpx


def test_unbounded(vllm_endpoint, vllm_config):
    \"\"\"A benchmark with no bound of its own, blocked on a server that stalls mid-stream.\"\"\"
    with httpx.stream("POST", f"{vllm_endpoint.base_url}/v1/completions", timeout=None,
                      json={"model": vllm_endpoint.model, "prompt": "x", "max_tokens": 8, "stream": True}) as resp:
        for _ in resp.iter_raw():
            pass
"""


def test_a_hung_benchmark_is_stopped_by_pytest_timeout_and_the_grid_goes_on(pytester, write_grid, events_file,
                                                                            monkeypatch, tmp_path):
    monkeypatch.setenv("VLLMGRID_CACHE_DIR", str(tmp_path / "cache"))
    with reliability_case("timeouts", "benchmark with no bound on a stalled server", "pytest-timeout (--timeout 5, "
                          "signal method) fails it with `Timeout`; the server is stopped; the next config "
                          "passes; results valid") as case:
        pytester.makepyfile(test_hung=HUNG_BENCHMARK)
        configs = [{"name": "base", "env": {"FAKE_NAME": "base"}},
                   {"name": "faulty", "priority": 1,
                    "env": {"FAKE_NAME": "faulty", "FAKE_VLLM_MODE": "stall", **AFTER_READY}},
                   {"name": "after", "priority": 2, "env": {"FAKE_NAME": "after"}}]
        grid = write_grid(fake_grid(configs, baseline="base"))
        start = time.monotonic()
        result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "--timeout", "5",
                                               "-p", "no:cacheprovider", "-p", "no:hypothesispytest", timeout=120)
        took = time.monotonic() - start
        out = pytester.path / "out"
        entry = json.loads((out / "faulty.json").read_text())["tests"]["unbounded"]
        case.observe(f"run {took:.0f} s: {result.parseoutcomes()}; faulty: {entry['status']} in "
                     f"{entry['duration_s']} s: {entry['message'][:100]}")
        result.assert_outcomes(passed=2, failed=1)
        assert entry["status"] == "failed" and entry["message"].startswith("Failed: Timeout")
        assert [e for e in read_events(events_file) if e.startswith("stop")] == ["stop base", "stop faulty",
                                                                               "stop after"]
        assert case.check_processes(servers_using(events_file)) == []
        assert case.check_results(out, ["base", "faulty", "after"]) == []


# Where a call without a timeout is still bounded.
BOUNDED_ELSEWHERE = {("deploy/compose.py", "run_shielded"): "communicate() after proc.kill()"}
NETWORK_CALLS = {"get", "post", "put", "delete", "head", "request", "stream", "Client", "AsyncClient"}


def unbounded_calls(package: Path) -> list[str]:
    """httpx calls and clients, subprocess runs and argument-less waits/joins without a timeout."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            if (str(path.relative_to(package)), func.name) in BOUNDED_ELSEWHERE:
                continue
            for node in ast.walk(func):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                keywords = {k.arg for k in node.keywords}
                bounded = "timeout" in keywords or None in keywords  # None: **options may carry it
                name = node.func.attr
                risky = (owner == "httpx" and name in NETWORK_CALLS) or \
                    (owner == "subprocess" and name in ("run", "call", "check_call", "check_output")) or \
                    (name in ("wait", "join", "communicate") and not node.args and not node.keywords
                     and not isinstance(node.func.value, ast.Constant))
                if risky and not bounded:
                    found.append(f"{path.relative_to(package)}:{node.lineno} {owner or '…'}.{name}()")
    return sorted(set(found))


def test_every_network_call_and_wait_in_the_plugin_has_a_timeout():
    with reliability_case("timeouts", "static check of every network call and wait", "every httpx call/client, "
                          "subprocess run and process/thread wait in pytest_vllmgrid/ passes a timeout") as case:
        found = unbounded_calls(REPO / "pytest_vllmgrid")
        case.observe(f"{len(found)} unbounded: {', '.join(found) or 'none'}")
        assert found == []
