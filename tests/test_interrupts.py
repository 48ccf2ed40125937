"""Interruptions of a real pytest process (a subprocess in its own session) running a fake-vLLM grid:
SIGINT/SIGTERM during a deploy or a benchmark tear everything down and mark the run interrupted, and --resume
finishes it; SIGKILL leaves valid results and an orphaned server that the next run finds and stops."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import REPO, fake_grid, read_events, servers_using
from reliability import Case, reliability_case

pytestmark = pytest.mark.timeout(240)

NAMES = ("base", "b", "c")
HOLD_TEST = '''
import os
import time
from pathlib import Path


def test_hold(vllm_bench, vllm_config):
    """In the config named by $HOLD_IN: stream real requests for up to 60 s, so an interrupt lands mid-benchmark."""
    if os.environ.get("HOLD_IN") != vllm_config.name:
        return

    async def main(client):
        Path("holding").write_text(vllm_config.name)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            await client.chat([{"role": "user", "content": "hold"}], max_tokens=8)
    vllm_bench.run(main)
'''


@pytest.fixture
def grid_dir(pytester: pytest.Pytester, write_grid, events_file: Path, monkeypatch, tmp_path: Path) -> Path:
    """A pytester dir with a base/b/c fake grid, the real TTFT benchmark and the holding benchmark."""
    monkeypatch.setenv("VLLMGRID_CACHE_DIR", str(tmp_path / "cache"))  # owned-process records of these runs only
    shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")
    (pytester.path / "test_hold.py").write_text(HOLD_TEST)
    write_grid(fake_grid([{"name": n, "env": {"FAKE_NAME": n}} for n in NAMES], baseline="base"))
    return pytester.path


def take_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt even when
    this suite was launched with SIGINT ignored (a background job of a script, `cmd &`, as many CI runners do)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_pytest(where: Path, *args: str, **env: str) -> subprocess.Popen:
    """pytest on the grid in its own session (a terminal's Ctrl+C would reach only it), output to a log file."""
    log = open(where / f"pytest-{time.monotonic_ns()}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "pytest", "--grid", "grid.json", "-p", "no:cacheprovider",
                             "-p", "no:hypothesispytest", *args], cwd=where, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env={**os.environ, **env}, start_new_session=True,
                            preexec_fn=take_sigint)


@contextlib.contextmanager
def launched_with(sigint_ignored: bool) -> Iterator[None]:
    """This test process as a background job of a script starts: with SIGINT ignored, which children inherit."""
    if not sigint_ignored:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_pytest(where: Path, *args: str, timeout_s: float = 120, **env: str) -> tuple[int, str]:
    """Run pytest to the end; (exit code, output)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--grid", "grid.json", "-p", "no:cacheprovider",
                           "-p", "no:hypothesispytest", *args], cwd=where, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout_s, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout + proc.stderr


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll until `condition()` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def statuses(out: Path) -> dict[str, str | None]:
    """Each config's stored status (None when it has no result file)."""
    found = {}
    for name in NAMES:
        try:
            found[name] = json.loads((out / f"{name}.json").read_text())["status"]
        except (OSError, ValueError, KeyError):
            found[name] = None
    return found


def manifest_status(out: Path) -> str | None:
    try:
        return json.loads((out / "manifest.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def interrupt(where: Path, sig: int, ready: Callable[[], bool], what: str, **env: str) -> tuple[int, float]:
    """Start a run, send `sig` to pytest once `ready()`, wait for it to exit; (exit code, seconds to exit)."""
    proc = start_pytest(where, "--results-dir", "out", **env)
    try:
        wait_for(ready, 60, what)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        return code, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_resume_finishes(case: Case, where: Path, events_file: Path, skipped: list[str]) -> None:
    """--resume out completes the run: complete configs skipped, the rest redone, nothing left running."""
    before = len(read_events(events_file))
    code, output = run_pytest(where, "--resume", "out")
    assert code == 0, output[-3000:]
    out = where / "out"
    assert statuses(out) == {n: "complete" for n in NAMES} and manifest_status(out) == "complete", output[-2000:]
    started = [e.split()[1] for e in read_events(events_file)[before:] if e.startswith("start")]
    assert started == [n for n in NAMES if n not in skipped], started
    if skipped:
        assert f"already complete: {', '.join(skipped)}" in output
    assert case.check_processes(servers_using(events_file)) == []
    assert case.check_results(out, NAMES) == []
    case.observe(f"--resume: skipped {', '.join(skipped) or 'nothing'}, ran {', '.join(started)}: run complete")


@pytest.mark.parametrize("sig,ignored", [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["SIGINT", "SIGINT-launched-with-SIGINT-ignored", "SIGTERM"])
def test_a_signal_during_a_deploy_stops_the_starting_server_and_resume_finishes(grid_dir, events_file, sig, ignored):
    name = signal.Signals(sig).name + (" (launched with SIGINT ignored)" if ignored else "")
    with launched_with(sigint_ignored=ignored), reliability_case(
            "interruption", f"{name} during a deploy", "pytest exits 2 at once; the starting server is stopped; run "
            "and config marked interrupted; --resume redoes everything") as case:
        code, took = interrupt(grid_dir, sig, lambda: "start base" in read_events(events_file), "the deploy",
                               FAKE_VLLM_STARTUP_S="30")
        out = grid_dir / "out"
        case.observe(f"exit {code} {took:.1f} s after {name}; events {read_events(events_file)}; "
                     f"manifest {manifest_status(out)}; base {statuses(out)['base']}")
        assert code == pytest.ExitCode.INTERRUPTED and took < 20
        assert read_events(events_file) == ["start base", "stop base"]
        assert case.check_processes(servers_using(events_file)) == []
        assert case.check_results(out, ["base"]) == []
        assert manifest_status(out) == "interrupted" and statuses(out)["base"] == "interrupted"
        check_resume_finishes(case, grid_dir, events_file, skipped=[])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_benchmark_tears_down_and_resume_skips_complete_configs(grid_dir, events_file, sig):
    name = signal.Signals(sig).name
    with reliability_case("interruption", f"{name} during a benchmark", "pytest exits 2; the server is stopped; "
                          "the config and the run are marked interrupted; complete configs kept; --resume skips "
                          "them and finishes") as case:
        code, took = interrupt(grid_dir, sig, lambda: (grid_dir / "holding").exists(), "the benchmark", HOLD_IN="b")
        out = grid_dir / "out"
        case.observe(f"exit {code} {took:.1f} s after {name}; statuses {statuses(out)}; "
                     f"manifest {manifest_status(out)}")
        assert code == pytest.ExitCode.INTERRUPTED and took < 20
        assert read_events(events_file) == ["start base", "stop base", "start b", "stop b"]
        assert case.check_processes(servers_using(events_file)) == []
        assert case.check_results(out, ["base", "b"]) == []
        assert statuses(out) == {"base": "complete", "b": "interrupted", "c": None}
        assert manifest_status(out) == "interrupted"
        check_resume_finishes(case, grid_dir, events_file, skipped=["base"])


def test_sigkill_leaves_valid_results_and_the_next_run_stops_the_orphaned_server(grid_dir, events_file, tmp_path):
    with reliability_case("interruption", "SIGKILL during a benchmark", "results files stay valid; the server "
                          "survives as an orphan; the next run finds it by its owned-process record, stops it, "
                          "and --resume finishes the run") as case:
        proc = start_pytest(grid_dir, "--results-dir", "out", HOLD_IN="b")
        try:
            wait_for(lambda: (grid_dir / "holding").exists(), 60, "the benchmark")
            time.sleep(0.3)
            proc.kill()
        finally:
            proc.wait(timeout=30)
        out = grid_dir / "out"
        orphans = servers_using(events_file)
        records = list((tmp_path / "cache" / "owned").glob("*.json"))
        case.observe(f"after SIGKILL: manifest {manifest_status(out)}, statuses {statuses(out)}, "
                     f"{len(orphans)} orphaned server(s), {len(records)} owned record(s)")
        try:
            assert case.check_results(out, ["base", "b"]) == []
            assert manifest_status(out) == "running" and statuses(out)["b"] == "running"
            assert len(orphans) == 1 and [json.loads(r.read_text())["pid"] for r in records] == orphans
            code, output = run_pytest(grid_dir, "--resume", "out")
            assert f"stopped an orphaned server left by a killed run (pid {orphans[0]}, config b)" in output, \
                output[-3000:]
            case.observe(f"next run: 'stopped an orphaned server ... (pid {orphans[0]}, config b)'")
            assert read_events(events_file)[:5] == ["start base", "stop base", "start b", "stop b", "start b"]
            assert code == 0 and statuses(out) == {n: "complete" for n in NAMES}
            assert manifest_status(out) == "complete"
            assert case.check_processes(servers_using(events_file)) == []
            assert case.check_results(out, NAMES) == []
            case.observe("--resume: run complete, no server left")
        finally:
            for pid in servers_using(events_file):  # never leave an orphan behind, even when the test fails
                os.killpg(pid, signal.SIGKILL)


def test_sigkill_at_random_moments_never_corrupts_results_and_resume_completes(grid_dir, events_file):
    rng = random.Random(20261125)
    with reliability_case("interruption", "SIGKILL at 4 random moments, then --resume", "every JSON file parses "
                          "after every kill; each next run stops the orphans; the last --resume completes the "
                          "run") as case:
        moments, reaped = [], 0
        try:
            for attempt in range(4):
                args = ("--results-dir", "out") if attempt == 0 else ("--resume", "out")
                proc = start_pytest(grid_dir, *args)
                moment = rng.uniform(1.0, 6.0)
                try:
                    time.sleep(moment)
                    proc.kill()
                finally:
                    proc.wait(timeout=30)
                moments.append(f"{moment:.1f}" + ("" if proc.returncode == -signal.SIGKILL else " (run had ended)"))
                lost = case.check_results(grid_dir / "out")
                assert lost == [], f"after the kill at {moment:.1f} s: {lost}"
            code, output = run_pytest(grid_dir, "--resume", "out")
            reaped = output.count("stopped an orphaned server")
            case.observe(f"kills at {', '.join(moments)} s: {case.results_checked} JSON reads, "
                         f"{case.results_lost} unreadable; last run stopped {reaped} orphan(s)")
            assert code in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), output[-3000:]  # 5: all done
            assert statuses(grid_dir / "out") == {n: "complete" for n in NAMES}
            assert case.check_processes(servers_using(events_file)) == []
            assert case.check_results(grid_dir / "out", NAMES) == []
            case.observe("last --resume: run complete, no server left")
        finally:
            for pid in servers_using(events_file):
                os.killpg(pid, signal.SIGKILL)
