"""Streaming probe: does the tiny CPU vLLM stream its tokens, or deliver each response in one burst?

    .venv/bin/python perf/streaming_probe.py --out /tmp/streaming-probe                  # every variant
    .venv/bin/python perf/streaming_probe.py --variants default newsession nobind+omp1 --requests 30

Per server variant (the embedded grid's `baseline` config, started by our ProcessDeployer exactly
as the default job starts it, plus the variant's environment / command prefix / Popen arguments),
four client modes each send N sequential streamed chat requests (fresh ~32-token prompts,
max_tokens 32, ignore_eos):

  chat-keepalive  one ChatClient (pytest_vllmgrid/client.py), one kept-alive connection, as
                  benchmarks/test_ttft.py does
  chat-fresh      a new ChatClient per request: a fresh connection each time
  raw-keepalive   a blocking socket, HTTP/1.1 keep-alive, every recv() timestamped
  raw-fresh       a new blocking socket per request

Each mode is bracketed by /metrics scrapes (server_metrics.fetch_metrics / diff), so the engine's
own TTFT and inter-token latency cover exactly its N requests. Printed per mode: client TTFT mean
vs the engine's mean (exact: sum/count), the client's E2E, the mean number of distinct arrivals of
token events per response (a gap of > 0.2 ms between token events starts a new arrival; raw modes:
socket reads carrying a token), and the fraction of burst responses (client decode span, last token
- first token, under 25 % of (tokens - 1) x the engine's mean ITL: bench.burst_responses' rule).
The raw modes also read the kernel's receive timestamp of every segment (SO_TIMESTAMPNS, small
reads): "kernel rx" is when the bytes reached the client's socket, so a late read with an early
kernel rx means the client process was not running, a late kernel rx means the server sent late.

Per variant the server's processes are described (autogroup, nice, CPU affinity, thread counts,
per-thread affinities, CPU burnt in the second after start-up: vLLM's shared-memory queue readers
busy-poll with sched_yield for 1 s after every read).

Finding (issue 16 item 6, 2 cores, other jobs running): with the server in a session of its own
(`newsession`, what the process deployer did), the client read each response in one burst after
the last token (client TTFT ~65-75 ms vs the engine's ~6 ms, 50-100 % bursts) although the bytes had
reached its socket at ~11 ms (kernel rx): the client was starved. A session is a scheduler
autogroup; sched_yield from the engine's spinning processes yields only inside theirs. With the
server in the caller's session (`samesession`, now the deployer's default): +1.6-2.0 ms, no bursts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.deploy.base import Deployment
from pytest_vllmgrid.deploy.options import DeployOptions
from pytest_vllmgrid.deploy.process import DEFAULT_VLLM_COMMAND, ProcessDeployer
from pytest_vllmgrid.grid import load_grid
from pytest_vllmgrid.load import run_event_loop
from pytest_vllmgrid.server_metrics import diff, fetch_metrics
from pytest_vllmgrid.workloads import text_of_tokens

GRID_FILE = Path(__file__).resolve().parent.parent / "pytest_vllmgrid" / "data" / "cpu-tiny.yaml"
BURST_FRACTION = 0.25  # as bench.BURST_FRACTION
ARRIVAL_GAP_S = 0.0002
MODES = ("chat-keepalive", "chat-fresh", "raw-keepalive", "raw-fresh")
# name -> environment added to the grid's, variables removed from the deployer's, command prefix
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "omp1": {"env": {"OMP_NUM_THREADS": "1"}},
    "nobind": {"env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}},
    "bind0": {"env": {"VLLM_CPU_OMP_THREADS_BIND": "0"}},
    "bind1": {"env": {"VLLM_CPU_OMP_THREADS_BIND": "1"}},
    "reserved1": {"env": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}},
    "passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "nice5": {"prefix": ["nice", "-n", "5"]},
    "nodev": {"drop": ["VLLM_SERVER_DEV_MODE"]},
    # the server in a new process group but the deployer's own session, hence its scheduler autogroup
    # (what the process deployer does since issue 16 item 6)
    "samesession": {"popen": {"start_new_session": False, "process_group": 0, "preexec_fn": None}},
    # the process deployer before that fix: start_new_session=True, a session and so an autogroup of its own
    "newsession": {"popen": {"start_new_session": True, "process_group": -1, "preexec_fn": None}},
    # after start-up: EngineCore and Worker (the spinning engine processes) at nice 10, API server unchanged
    "reniceengine": {"post": "renice_engine"},
}


class ProbeDeployer(ProcessDeployer):
    """The process deployer, minus some of its base environment when a variant asks."""

    def __init__(self, options: DeployOptions, drop: list[str]) -> None:
        super().__init__(options)
        self.drop = drop

    def environment(self, config):  # type: ignore[no-untyped-def]
        env = super().environment(config)
        for name in self.drop:
            env.pop(name, None)
        return env


def cache_root() -> Path:
    """As session.cache_root (not imported: the probe needs no more of the plugin than the deployer)."""
    return Path(os.environ.get("VLLMGRID_CACHE_DIR") or Path.home() / ".cache" / "pytest-vllmgrid")


def variant_spec(name: str) -> dict[str, Any]:
    """Merge `a+b+c` variants."""
    spec: dict[str, Any] = {"env": {}, "drop": [], "prefix": []}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"unknown variant {part!r}; known: {', '.join(VARIANTS)}")
        one = VARIANTS[part]
        spec["env"].update(one.get("env", {}))
        spec["drop"] += one.get("drop", [])
        spec["prefix"] += one.get("prefix", [])
        spec.setdefault("popen", {}).update(one.get("popen", {}))
        if one.get("post"):
            spec.setdefault("post", []).append(one["post"])
    return spec


def deploy(variant: str, workdir: Path, config_name: str) -> Deployment:
    spec = variant_spec(variant)
    grid = load_grid(GRID_FILE)
    config = next(c for c in grid.configs if c.name == config_name)
    command = tuple(spec["prefix"]) + tuple(config.vllm_command or DEFAULT_VLLM_COMMAND)
    config = dataclasses.replace(config, env={**config.env, **spec["env"]}, vllm_command=command)
    deployer = ProbeDeployer(DeployOptions(state_dir=cache_root(), cache_root=cache_root()), spec["drop"])
    popen_overrides = spec.get("popen") or {}
    if not popen_overrides:
        deployment = deployer.deploy(config, workdir)
    else:
        import pytest_vllmgrid.deploy.process as process_module

        real_popen = subprocess.Popen

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen:
            return real_popen(*args, **{**kwargs, **popen_overrides})

        process_module.subprocess.Popen = popen  # type: ignore[misc]
        try:
            deployment = deployer.deploy(config, workdir)
        finally:
            process_module.subprocess.Popen = real_popen  # type: ignore[misc]
    for action in spec.get("post", []):
        if action == "renice_engine":
            for pid in group_pids(deployment.describe["pid"]):
                if _read(f"/proc/{pid}/comm").startswith("VLLM::"):
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        try:
                            os.setpriority(os.PRIO_PROCESS, int(tid), 10)
                        except OSError:
                            pass
    return deployment


# ---------------------------------------------------------------- server processes

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_ticks(pid: int) -> int:
    fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return int(fields[11]) + int(fields[12]) if len(fields) > 12 else 0


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _read(f"/proc/{entry}/stat").rsplit(")", 1)[-1].split()
            if len(fields) > 2 and int(fields[2]) == pgid:
                pids.append(int(entry))
    return sorted(pids)


def describe_processes(pgid: int, idle_s: float = 1.0) -> list[dict[str, Any]]:
    """Per process of the server's group: name, nice, affinity, threads (and their affinities), idle CPU use."""
    pids = group_pids(pgid)
    before = {pid: _cpu_ticks(pid) for pid in pids}
    time.sleep(idle_s)
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    print(f"   probe (client) pid {os.getpid()} {_read('/proc/self/autogroup').strip()} "
          f"affinity {sorted(os.sched_getaffinity(0))} nice {os.getpriority(os.PRIO_PROCESS, 0)}")
    for pid in pids:
        cmdline = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
        comm = _read(f"/proc/{pid}/comm").strip()
        try:
            nice = os.getpriority(os.PRIO_PROCESS, pid)
            affinity = sorted(os.sched_getaffinity(pid))
        except OSError:
            continue
        threads: dict[str, int] = {}
        tids = os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []
        for tid in tids:
            try:
                key = ",".join(map(str, sorted(os.sched_getaffinity(int(tid)))))
            except OSError:
                continue
            threads[key] = threads.get(key, 0) + 1
        autogroup = _read(f"/proc/{pid}/autogroup").split()
        out.append({"pid": pid, "autogroup": autogroup[0] if autogroup else None, "comm": comm, "cmd": cmdline[:80], "nice": nice, "affinity": affinity,
                    "threads": len(tids), "thread_affinities": threads,
                    "idle_cpu_pct": 100.0 * (_cpu_ticks(pid) - before.get(pid, 0)) / tick / idle_s})
    return out


# ---------------------------------------------------------------- one request, four ways

@dataclasses.dataclass
class Sample:
    ttft: float | None
    e2e: float
    decode_span: float | None  # last token event - first token event
    tokens: int
    arrivals: int  # distinct arrivals (or socket reads) that carried token events
    token_events: int
    # raw modes only: the same from the kernel's receive timestamps (SO_TIMESTAMPNS), i.e. when the bytes
    # reached the client's socket, whether or not the client process was running to read them
    kernel_ttft: float | None = None
    kernel_decode_span: float | None = None
    kernel_arrivals: int | None = None


def _arrivals(times: list[float]) -> int:
    count, last = 0, None
    for t in times:
        if last is None or t - last > ARRIVAL_GAP_S:
            count += 1
        last = t
    return count


def from_record(record: RequestRecord) -> Sample:
    if not record.ok:
        raise RuntimeError(f"request failed: {record.error}")
    times = record.chunk_times
    return Sample(ttft=record.ttft, e2e=record.e2e or 0.0,
                  decode_span=(times[-1] - times[0]) if times else None, tokens=record.completion_tokens or 0,
                  arrivals=_arrivals(times), token_events=len(times))


def chat_body(model: str, text: str, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}


SO_TIMESTAMPNS = 35  # linux, = SCM_TIMESTAMPNS
RAW_READ_BYTES = 512  # small reads: each carries about one segment, so its timestamp is that segment's


class RawConnection:
    """A blocking HTTP/1.1 socket: sends one request, timestamps every recv() of its chunked SSE response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, body: bytes) -> Sample:
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Content-Type: application/json\r\nAccept: text/event-stream\r\nAccept-Encoding: identity\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sent = time.perf_counter()
        self.sock.sendall(head + body)
        raw = bytearray()
        body_buf = bytearray()  # de-chunked
        headers_done = False
        finished = False
        first_token = None
        token_times: list[float] = []
        token_reads = 0
        done_at = None
        tokens = 0
        sse_pos = 0
        kernel_times: list[float] = []
        wall_offset = time.time() - time.perf_counter()
        while not finished:
            data, ancillary, _, _ = self.sock.recvmsg(RAW_READ_BYTES, 64)
            now = time.perf_counter()
            kernel_now = now
            for level, kind, cdata in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    kernel_now = sec + nsec / 1e9 - wall_offset
            if not data:
                raise RuntimeError("server closed the connection")
            raw += data
            if not headers_done:
                end = raw.find(b"\r\n\r\n")
                if end < 0:
                    continue
                status = raw[:raw.find(b"\r\n")]
                if b" 200 " not in status:
                    raise RuntimeError(f"bad status {bytes(status)!r}")
                del raw[:end + 4]
                headers_done = True
            while True:  # de-chunk what is complete
                line_end = raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(raw[:line_end].split(b";")[0], 16)
                if size == 0:
                    if raw.find(b"\r\n\r\n", line_end) >= 0 or raw[line_end:line_end + 4] == b"\r\n\r\n":
                        finished = True
                        del raw[:]
                    break
                if len(raw) < line_end + 2 + size + 2:
                    break
                body_buf += raw[line_end + 2:line_end + 2 + size]
                del raw[:line_end + 2 + size + 2]
            got_token = False
            while True:  # SSE events that are complete
                end = body_buf.find(b"\n\n", sse_pos)
                if end < 0:
                    break
                event = bytes(body_buf[sse_pos:end]).strip()
                sse_pos = end + 2
                if not event.startswith(b"data:"):
                    continue
                payload = event[5:].strip()
                if payload == b"[DONE]":
                    done_at = now
                    continue
                obj = json.loads(payload)
                if obj.get("usage"):
                    tokens = obj["usage"].get("completion_tokens") or 0
                choices = obj.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    token_times.append(now)
                    kernel_times.append(kernel_now)
                    got_token = True
                    if first_token is None:
                        first_token = now
            if got_token:
                token_reads += 1
        end_time = done_at if done_at is not None else time.perf_counter()
        return Sample(ttft=None if first_token is None else first_token - sent, e2e=end_time - sent,
                      decode_span=(token_times[-1] - token_times[0]) if token_times else None, tokens=tokens,
                      arrivals=token_reads, token_events=len(token_times),
                      kernel_ttft=kernel_times[0] - sent if kernel_times else None,
                      kernel_decode_span=(kernel_times[-1] - kernel_times[0]) if kernel_times else None,
                      kernel_arrivals=_arrivals(kernel_times))


def run_mode(mode: str, base_url: str, model: str, texts: list[str], max_tokens: int) -> list[Sample]:
    if mode.startswith("chat"):
        async def main() -> list[Sample]:
            samples = []
            if mode == "chat-keepalive":
                async with ChatClient(base_url, model, timeout=120.0) as client:
                    for text in texts:
                        samples.append(from_record(await client.chat(
                            [{"role": "user", "content": text}], max_tokens=max_tokens,
                            extra_body={"ignore_eos": True})))
            else:
                for text in texts:
                    async with ChatClient(base_url, model, timeout=120.0) as client:
                        samples.append(from_record(await client.chat(
                            [{"role": "user", "content": text}], max_tokens=max_tokens,
                            extra_body={"ignore_eos": True})))
            return samples
        return run_event_loop(main())
    parts = urlsplit(base_url)
    conn = RawConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    samples = []
    try:
        for text in texts:
            samples.append(conn.request(json.dumps(chat_body(model, text, max_tokens)).encode()))
            if mode == "raw-fresh":
                conn.close()
    finally:
        conn.close()
    return samples


def measure(mode: str, deployment: Deployment, count: int, max_tokens: int, prompt_tokens: int,
            seed: str) -> dict[str, Any]:
    url, model = deployment.endpoint.base_url, deployment.endpoint.model
    http = deployment.http()
    warm = [text_of_tokens(prompt_tokens, seed=f"{seed}:warm:{i}") for i in range(2)]
    run_mode(mode, url, model, warm, max_tokens)
    texts = [text_of_tokens(prompt_tokens, seed=f"{seed}:{i}") for i in range(count)]
    load_before = os.getloadavg()[0]
    before = fetch_metrics(deployment.endpoint.metrics_url, client=http)
    samples = run_mode(mode, url, model, texts, max_tokens)
    deadline = time.monotonic() + 1.0
    while True:
        delta = diff(before, fetch_metrics(deployment.endpoint.metrics_url, client=http))
        if (delta.requests_finished or 0) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    ttft_s = delta.ttft.mean_s if delta.ttft else None
    itl_s = delta.inter_token_latency.mean_s if delta.inter_token_latency else None
    timed = [s.ttft for s in samples if s.ttft is not None]
    bursts = [s for s in samples if itl_s and s.decode_span is not None and s.tokens >= 8
              and s.decode_span < BURST_FRACTION * (s.tokens - 1) * itl_s]
    client_ttft = statistics.fmean(timed) * 1000 if timed else None
    kernel = [s for s in samples if s.kernel_ttft is not None]
    kernel_bursts = [s for s in kernel if itl_s and s.kernel_decode_span is not None and s.tokens >= 8
                     and s.kernel_decode_span < BURST_FRACTION * (s.tokens - 1) * itl_s]
    return {
        "mode": mode, "requests": len(samples), "server_count": delta.ttft.count if delta.ttft else None,
        "client_ttft_mean_ms": client_ttft,
        "client_ttft_p50_ms": statistics.median(timed) * 1000 if timed else None,
        "server_ttft_mean_ms": ttft_s * 1000 if ttft_s else None,
        "diff_ms": (client_ttft - ttft_s * 1000) if client_ttft is not None and ttft_s else None,
        "server_itl_mean_ms": itl_s * 1000 if itl_s else None,
        "client_e2e_mean_ms": statistics.fmean(s.e2e for s in samples) * 1000,
        "server_e2e_mean_ms": delta.e2e_latency.mean_s * 1000 if delta.e2e_latency and delta.e2e_latency.mean_s else None,
        "client_decode_span_mean_ms": statistics.fmean(s.decode_span or 0 for s in samples) * 1000,
        "arrivals_mean": statistics.fmean(s.arrivals for s in samples),
        "token_events_mean": statistics.fmean(s.token_events for s in samples),
        "burst_fraction": len(bursts) / len(samples), "bursts": len(bursts),
        "kernel_ttft_mean_ms": statistics.fmean(s.kernel_ttft for s in kernel) * 1000 if kernel else None,
        "kernel_arrivals_mean": statistics.fmean(s.kernel_arrivals for s in kernel) if kernel else None,
        "kernel_bursts": len(kernel_bursts) if kernel else None,
        "load_before": load_before,
        "samples": [dataclasses.asdict(s) for s in samples],
    }


def format_row(variant: str, row: dict[str, Any]) -> str:
    def f(value: float | None, fmt: str = "7.2f") -> str:
        return "   n/a" if value is None else format(value, fmt)
    return (f"{variant:<22} {row['mode']:<15} ttft client {f(row['client_ttft_mean_ms'])} engine "
            f"{f(row['server_ttft_mean_ms'])} diff {f(row['diff_ms'], '+7.2f')} ms | e2e client "
            f"{f(row['client_e2e_mean_ms'], '6.1f')} engine {f(row['server_e2e_mean_ms'], '6.1f')} | itl engine "
            f"{f(row['server_itl_mean_ms'], '5.2f')} | arrivals {row['arrivals_mean']:4.1f}/"
            f"{row['token_events_mean']:4.1f} | bursts {row['bursts']:2d}/{row['requests']} "
            f"({row['burst_fraction']:4.0%}) load {row['load_before']:.2f}"
            + (f" | kernel rx: ttft {row['kernel_ttft_mean_ms']:6.2f} arrivals {row['kernel_arrivals_mean']:4.1f} "
               f"bursts {row['kernel_bursts']}" if row.get("kernel_ttft_mean_ms") is not None else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        help=f"server variants, `a+b` combines ({', '.join(VARIANTS)})")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--config", default="baseline", help="config of the embedded grid")
    parser.add_argument("--client-cpus", help="pin the probe (the client) to these CPUs, e.g. 1 or 0,1")
    parser.add_argument("--client-nice", type=int, help="renice the probe (the client) by this much")
    parser.add_argument("--out", type=Path, default=Path("/tmp/streaming-probe"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    client_setup = {}
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
        client_setup["cpus"] = args.client_cpus
    if args.client_nice:
        os.nice(args.client_nice)
        client_setup["nice"] = args.client_nice
    results_path = args.out / "results.json"
    results: list[dict[str, Any]] = json.loads(results_path.read_text()) if results_path.exists() else []
    for variant in args.variants:
        spec = variant_spec(variant)
        started = time.monotonic()
        deployment = deploy(variant, args.out / "server" / variant.replace("+", "_"), args.config)
        try:
            pgid = deployment.describe["pid"]
            print(f"== {variant} {spec} client {client_setup or 'as is'} up in {deployment.startup_seconds:.1f} s (pid {pgid})", flush=True)
            procs = describe_processes(pgid)
            for proc in procs:
                print(f"   pid {proc['pid']} {proc['autogroup']} {proc['comm']:<16} nice {proc['nice']:3d} affinity {proc['affinity']} "
                      f"threads {proc['threads']} by affinity {proc['thread_affinities']} idle cpu "
                      f"{proc['idle_cpu_pct']:.0f} %", flush=True)
            rows = []
            for mode in args.modes:
                row = measure(mode, deployment, args.requests, args.max_tokens, args.prompt_tokens,
                              f"{variant}:{mode}:{time.time_ns()}")
                rows.append(row)
                print(format_row(variant, row), flush=True)
        finally:
            deployment.teardown()
        results.append({"variant": variant, "spec": spec, "client": client_setup, "config": args.config, "processes": procs,
                        "startup_s": deployment.startup_seconds, "rows": rows,
                        "wall_s": time.monotonic() - started})
        results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
