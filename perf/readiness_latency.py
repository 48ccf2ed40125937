"""Readiness detection: from the server's first successful answer to the endpoint in a test's hands.

    .venv/bin/python perf/readiness_latency.py --runs 3 --out /tmp/readiness

Each run is a real pytest session of the plugin: the embedded CPU grid reduced to its `baseline`
config on a fixed free port, and one test that takes `vllm_endpoint` and writes time.monotonic()
as its first statement (the hand-over). While pytest starts the server, this script watches the
same port from outside:
  * a fast prober POSTs /v1/completions (max_tokens 1) back to back, 20 ms apart after a refused
    connection. Its first 200 is the server's first successful answer: the server answered
    between that request's send and its receipt, so `hand-over - receipt` is a lower bound of our
    readiness latency and `hand-over - send` an upper bound (they differ by one request's time);
  * the peers' readiness loops, run on the same start-up with their own code: `vllm bench sweep`
    (vllm.benchmarks.sweep.server.ServerProcess.wait_until_ready: GET /health, 1 s sleeps) and
    `vllm bench serve --ready-check-timeout-sec` (vllm.benchmarks.lib.ready_checker.wait_for_endpoint:
    a test completion, 5 s sleeps). Each one's latency is its return minus the same first answer.
All moments are CLOCK_MONOTONIC, which every process on the machine shares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import load_average  # noqa: E402

from pytest_vllmgrid.results import ResultsStore  # noqa: E402
from pytest_vllmgrid.placement import packaged_default_grid  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny"
PROBE_GAP_S = 0.02
WATCH_LIMIT_S = 900.0
HANDOFF_TEST = '''
import json, os, time

def test_handoff(vllm_endpoint):
    handed = time.monotonic()
    with open(os.environ["VLLMGRID_HANDOFF_FILE"], "w") as out:
        json.dump({"handed_monotonic": handed, "base_url": vllm_endpoint.base_url}, out)
    # keep the server up until the peers' slower loops have seen it too
    release = os.environ["VLLMGRID_HANDOFF_FILE"] + ".release"
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.1)
'''
PEER_WAIT_S = 60.0


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_grid(out: Path, port: int) -> Path:
    """The embedded grid, baseline config only, thresholds dropped, on a fixed port."""
    grid = yaml.safe_load(packaged_default_grid().read_text())
    grid.pop("thresholds", None)
    grid["port"] = port
    grid["configs"] = [c for c in grid["configs"] if c["name"] == "baseline"]
    path = out / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


class Watch(threading.Thread):
    """Runs one readiness loop in a thread; keeps the monotonic moment it finished (or its error)."""

    def __init__(self, name: str, loop: Any) -> None:
        super().__init__(daemon=True, name=name)
        self.loop = loop
        self.result: dict[str, Any] = {}

    def run(self) -> None:
        try:
            self.result = self.loop() or {}
            self.result.setdefault("done_monotonic", time.monotonic())
        except Exception as exc:  # reported in the figures, never fatal
            self.result = {"error": f"{type(exc).__name__}: {exc}"[:300]}


def fast_probe(url: str) -> dict[str, Any]:
    """POST a 1-token completion back to back until one answers 200; its send and receipt moments."""
    deadline = time.monotonic() + WATCH_LIMIT_S
    attempts = 0
    with httpx.Client(timeout=httpx.Timeout(WATCH_LIMIT_S, connect=1.0)) as http:
        while time.monotonic() < deadline:
            attempts += 1
            sent = time.monotonic()
            try:
                resp = http.post(f"{url}/v1/completions",
                                 json={"model": MODEL, "prompt": "ready", "max_tokens": 1, "temperature": 0})
                received = time.monotonic()
                if resp.status_code == 200 and resp.json().get("choices"):
                    return {"sent_monotonic": sent, "done_monotonic": received, "attempts": attempts}
            except httpx.HTTPError:
                pass
            time.sleep(PROBE_GAP_S)
    raise TimeoutError("no successful answer")


def sweep_ready(url: str, port: int) -> dict[str, Any]:
    """`vllm bench sweep`'s own wait loop, on a stand-in process handle that is always alive."""
    from vllm.benchmarks.sweep.server import ServerProcess

    class Alive:
        def poll(self) -> None:
            return None

    server = ServerProcess(["vllm", "serve", "--host", "127.0.0.1", "--port", str(port)], [], show_stdout=False)
    server._server_process = Alive()
    server.wait_until_ready(int(WATCH_LIMIT_S))
    return {}


def bench_serve_ready(url: str) -> dict[str, Any]:
    """`vllm bench serve --ready-check-timeout-sec`'s wait loop with its default 5 s retry interval."""
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_completions
    from vllm.benchmarks.lib.ready_checker import wait_for_endpoint

    async def main() -> None:
        test_input = RequestFuncInput(prompt="ready", api_url=f"{url}/v1/completions", prompt_len=1, output_len=1,
                                      model=MODEL)
        async with aiohttp.ClientSession() as session:
            output = await wait_for_endpoint(async_request_openai_completions, test_input, session,
                                             timeout_seconds=int(WATCH_LIMIT_S))
        if not output.success:
            raise RuntimeError(f"not ready: {output.error}")

    asyncio.run(main())
    return {}


def one_run(out: Path) -> dict[str, Any]:
    """One pytest session with the watchers on the same start-up."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    grid = write_grid(out, port)
    (out / "test_handoff.py").write_text(HANDOFF_TEST)
    handoff = out / "handoff.json"
    watches = [Watch("fast", lambda: fast_probe(url)), Watch("sweep", lambda: sweep_ready(url, port)),
               Watch("bench_serve", lambda: bench_serve_ready(url))]
    load_before = load_average()
    started = time.monotonic()
    for watch in watches:
        watch.start()
    cmd = [sys.executable, "-m", "pytest", str(out / "test_handoff.py"), "--grid", str(grid), "--results-dir",
           str(out / "results"), "-p", "no:cacheprovider", "-q", "--rootdir", str(out)]
    with open(out / "pytest.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=out, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "VLLMGRID_HANDOFF_FILE": str(handoff)})
        try:
            watches[0].join(WATCH_LIMIT_S)
            for watch in watches[1:]:
                watch.join(PEER_WAIT_S)
        finally:
            Path(f"{handoff}.release").touch()
            code = proc.wait(WATCH_LIMIT_S)
    if code != 0:
        raise RuntimeError(f"pytest exited {code}; see {out / 'pytest.log'}")
    handed = json.loads(handoff.read_text())["handed_monotonic"]
    fast = watches[0].result
    if "error" in fast:
        raise RuntimeError(f"fast prober: {fast['error']}")
    deployment = (ResultsStore(out / "results").load_config("baseline") or {}).get("deployment", {})
    first_answer = fast["done_monotonic"]
    return {
        "load_before": load_before, "load_after": load_average(),
        "first_answer_s_after_launch": first_answer - started,
        "probe_request_s": fast["done_monotonic"] - fast["sent_monotonic"],
        "ours_s": handed - first_answer,
        "ours_upper_s": handed - fast["sent_monotonic"],
        "sweep_s": _after(watches[1].result, first_answer),
        "bench_serve_s": _after(watches[2].result, first_answer),
        "startup_time_seconds": deployment.get("startup_time_seconds"),
        "health_check_attempts": deployment.get("health_check_attempts"),
        "ready_stages_s": deployment.get("ready_stages_s"),
    }


def _after(result: dict[str, Any], first_answer: float) -> float | str:
    """Seconds a watcher finished after the first answer, or its error."""
    return result["done_monotonic"] - first_answer if "done_monotonic" in result else result.get("error", "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/readiness"))
    args = parser.parse_args()
    rows = []
    for index in range(1, args.runs + 1):
        row = {"run": index, **one_run(args.out / f"run{index}")}
        rows.append(row)
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
        print(f"run {index}: first answer {row['first_answer_s_after_launch']:.1f} s after launch "
              f"(probe request {row['probe_request_s'] * 1000:.0f} ms); hand-over after it: ours "
              f"{fmt(row['ours_s'])} s (upper bound {fmt(row['ours_upper_s'])}), vllm bench sweep "
              f"{fmt(row['sweep_s'])} s, vllm bench serve ready check {fmt(row['bench_serve_s'])} s; "
              f"deployer stages {row['ready_stages_s']}; load {row['load_before']}", flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
