"""Real-process faults on the real vLLM CPU build and the tiny model, one real server start in all: the server
SIGKILLed during a benchmark (detected, logs attached, next config goes on), a bad vLLM flag (vLLM's own error
line quoted), a port already in use and a missing model path (clear errors before anything starts)."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO
from reliability import Case, reliability_case

NO_VLLM = importlib.util.find_spec("vllm") is None
KEY_ENV = "VLLMGRID_TEST_API_KEY"
KILLER_CONFTEST = '''
import os
import signal
import threading

import pytest


@pytest.fixture(autouse=True)
def kill_the_server_during_the_benchmark(request):
    """SIGKILL the vLLM API server (its process only; teardown must clean its engine up) 1 s into a benchmark."""
    if request.node.name != "test_ttft[killed-short]":
        yield
        return
    pid = request.getfixturevalue("vllm_deployment").describe["pid"]
    timer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
    timer.start()
    yield
    timer.cancel()
'''


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (a server and the engine processes it spawned)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def launcher_processes(marker: str) -> list[int]:
    """Live vLLM launcher processes whose argv mentions `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "vllm_launcher" in cmdline and marker in cmdline:
            found.append(proc.pid)
    return found


def run_real_grid(pytester: pytest.Pytester, grid: dict, *args: str, timeout_s: float = 900) -> pytest.RunResult:
    """A grid on the real launcher (no vllm_command: the plugin's default) through a pytest subprocess."""
    (pytester.path / "grid.json").write_text(json.dumps(grid))
    return pytester.runpytest_subprocess("--grid", "grid.json", "--results-dir", "out", "-p", "no:cacheprovider",
                                         "-p", "no:hypothesispytest", "-rA", *args, timeout=timeout_s)


def check_refused_before_start(case: Case, pytester: pytest.Pytester, result: pytest.RunResult, marker: str,
                               cache: Path, expected: str) -> None:
    """A usage error naming the problem, and no server process started (no launcher, no owned record)."""
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    case.observe(f"exit {int(result.ret)}: {(errors or ['(no ERROR line)'])[0][:200]}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and errors and expected in errors[0], result.stderr.str()
    owned = list((cache / "owned").glob("*.json")) if (cache / "owned").is_dir() else []
    left = case.check_processes(launcher_processes(marker))
    case.observe(f"servers started: {len(owned)} owned record(s), {len(left)} launcher process(es)")
    assert owned == [] and left == [] and "deploying" not in result.stdout.str()
    assert case.check_results(pytester.path / "out") == []


@pytest.mark.timeout(120)
def test_a_port_already_in_use_is_a_clear_error_and_no_vllm_starts(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("VLLMGRID_CACHE_DIR", str(tmp_path / "cache"))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    with reliability_case("real process", "port already in use", "usage error naming the port, before anything "
                          "starts; no vLLM process") as case, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_real_grid(pytester, {"port": port, "configs": [{"name": "a"}, {"name": "b"}]})
        check_refused_before_start(case, pytester, result, f"--port {port}", tmp_path / "cache",
                                   f"port {port} on 127.0.0.1 is already in use")


@pytest.mark.timeout(120)
def test_a_missing_model_path_is_a_clear_error_and_no_vllm_starts(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("VLLMGRID_CACHE_DIR", str(tmp_path / "cache"))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    missing = f"/nonexistent/model-{secrets.token_hex(4)}"
    with reliability_case("real process", "model path missing", "usage error naming the path before anything "
                          "starts; no vLLM process") as case:
        result = run_real_grid(pytester, {"model": missing, "configs": [{"name": "a"}]})
        check_refused_before_start(case, pytester, result, missing, tmp_path / "cache",
                                   f"model path {missing!r} does not exist")


@pytest.mark.vllm
@pytest.mark.timeout(900)
@pytest.mark.skipif(NO_VLLM, reason="vLLM's CPU build is not installed (run ./scripts/install.sh)")
def test_a_server_killed_mid_benchmark_and_a_bad_flag_on_the_real_vllm(pytester, monkeypatch, tmp_path):
    """One real server start: `killed` (baseline) is SIGKILLed in its first benchmark; `bad_flag` then fails at
    vLLM's argument parsing. An API key is set throughout, and no artefact may contain it."""
    from pytest_vllmgrid.tinymodel import ensure_tiny_model

    model = str(ensure_tiny_model())  # the shared cache's model: no rebuild under the private cache below
    key = "sk-vllmgrid-" + secrets.token_hex(20)
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv("VLLMGRID_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")
    (pytester.path / "conftest.py").write_text(KILLER_CONFTEST)
    grid = {"model": model, "served_model_name": "tiny", "deployer": "process", "startup_timeout_s": 400,
            "api_key_env": KEY_ENV, "baseline": "killed", "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            "defaults": {"enforce_eager": True, "max_model_len": 2048},
            "benchmarks": {"repetitions": 40, "warmup": 1, "max_tokens": 8, "long_prompt_tokens": 256},
            "configs": [{"name": "killed"}, {"name": "bad_flag", "extra_args": ["--no-such-flag"]}]}
    with reliability_case("real process", "vLLM server SIGKILLed during a benchmark", "the benchmark fails with "
                          "one line, server died (signal, log); the next test errors `server ... is gone (killed by "
                          "signal 9)` with the log; config marked failed with the death and log tail; the engine "
                          "processes are stopped; the next config goes on") as case:
        start = time.monotonic()
        result = run_real_grid(pytester, grid)  # the whole real run; the cases below read its artefacts
        took = time.monotonic() - start
        out = pytester.path / "out"
        killed = json.loads((out / "killed.json").read_text())
        bad = json.loads((out / "bad_flag.json").read_text())
        stdout = result.stdout.str()
        short, long_ = killed["tests"].get("ttft[short]", {}), killed["tests"].get("ttft[long]", {})
        died = killed["deployment"].get("died") or {}
        case.observe(f"real startup {killed['deployment'].get('startup_time_seconds')} s; ttft[short]: "
                     f"{short.get('status')}: {(short.get('message') or '')[:120]}")
        case.observe(f"ttft[long]: {long_.get('status')}: {(long_.get('message') or '')[:120]}")
        case.observe(f"config {killed['status']}, died: {died.get('reason')}, {len(died.get('log_tail') or [])} "
                     "log lines kept")
        assert short.get("status") == "failed", short
        assert short.get("message", "").startswith("server died during the benchmark (killed by signal 9); log: ")
        assert set((short.get("measurement") or {}).get("info", {}).get("error_kinds", {})) <= {"connect",
                                                                                               "disconnect"}
        assert long_.get("status") == "error" and "is gone (killed by signal 9)" in long_.get("message", ""), long_
        assert "--- last log lines ---" not in long_["message"] and "server.log" in long_["message"]
        assert killed["status"] == "failed" and died.get("reason") == "killed by signal 9" and died.get("log_tail")
        pid = killed["deployment"]["pid"]
        left = case.check_processes(group_members(pid))
        case.observe(f"process group {pid} after the run: {len(left)} process(es) left")
        assert left == []
        assert case.check_results(out, ["killed", "bad_flag"]) == []
        assert bad["status"] == "failed", "the next config was attempted"

    with reliability_case("real process", "bad vLLM flag", "deployment fails at once (no timeout) quoting vLLM's "
                          "own `unrecognized arguments` line and its exit code; tests error") as case:
        error = bad["deployment"].get("error") or {}
        messages = [t.get("message") or "" for t in bad["tests"].values()]
        case.observe(f"exit code {error.get('exit_code')}; test message: {messages[0][:200] if messages else '-'}")
        assert error.get("exit_code") == 2 and error.get("kind") == "exited", error
        assert messages and all("unrecognized arguments: --no-such-flag" in m for m in messages), messages
        assert all(t.get("status") == "error" for t in bad["tests"].values())
        assert case.check_processes(launcher_processes("--no-such-flag")) == []
        assert case.check_results(out) == []

    with reliability_case("secrets", "API key with the real vLLM", "the key reaches vLLM through VLLM_API_KEY (its "
                          "auth is on) and appears in no artefact: server logs, results, reports, terminal") as case:
        needles = [key.encode(), key[-16:].encode()]
        files = [p for p in [*pytester.path.rglob("*"), *(tmp_path / "cache").rglob("*")] if p.is_file()]
        found = [str(p) for p in files if any(n in p.read_bytes() for n in needles)]
        found += [name for name, text in (("stdout", stdout), ("stderr", result.stderr.str())) if key in text]
        case.observe(f"run took {took:.0f} s; scanned {len(files)} files + terminal: {len(found)} hit(s)")
        assert killed["deployment"]["status"] == "success", "readiness (authenticated) passed"
        assert found == []
