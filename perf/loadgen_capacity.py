"""Load-generator capacity: our open-loop runner vs `vllm bench serve` vs GuideLLM, one mock server.

    .venv/bin/python perf/loadgen_capacity.py --out /tmp/loadgen          # all tools, 50..500 req/s
    .venv/bin/python perf/loadgen_capacity.py --rates 100 --seconds 10 --tools ours vllm --rounds 3

One fast mock OpenAI server (tests/fault_server.py, mode ok: 16 tokens, first token after 20 ms,
1 ms between tokens, /v1/completions so no tool counts an empty role chunk as the first token)
runs for the whole script. Each tool then drives it at each target rate with a constant-interval
schedule and the same number of requests (rate x seconds), one tool at a time, each in a fresh
process. By default the mock is pinned to CPU 1 and every load generator to CPU 0 (taskset), so
each tool has exactly one core and never competes with the server it measures. Tools:
  ours        run_rate + ChatClient.completion (our HTTP/1.1 transport, pytest_vllmgrid/http1.py)
  ours-httpx  the same with the client's previous transport (httpx's own): the "before" figure
  vllm        `vllm bench serve --backend openai --request-rate R --burstiness inf`
  guidellm    GuideLLM 0.8.1, constant profile at R, max_requests constraint

Per run, from each tool's own per-request timestamps (all converted to CLOCK_MONOTONIC):
  achieved req/s   completed requests / (last response end - first request start)
  lag p50/p99      send time - planned send time: ours records both; GuideLLM records
                   targeted_start and request_start; `vllm bench serve` keeps only start times, so
                   its lag is relative to its least-late request (a lower bound; its schedule is
                   start + (i+1)/rate on a clock it does not save). "rel." columns measure every
                   tool that way, for a like-for-like comparison.
  TTFT error       median client TTFT - the mock's configured 20 ms (and the mock's own measured
                   TTFT mean from its /metrics, for reference)
  CPU              CPU seconds of the tool's process tree over that window (sampled from /proc)
                   / window length, i.e. cores used; and CPU ms per request
GuideLLM must be installed in its own venv (default /work/perf-venvs/guidellm, or $GUIDELLM_BIN;
see docs/performance.md). Compare tools only within one run of this script: the VM's speed drifts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import Requests, TreeCpu, load_average, run_guidellm, run_tool, run_vllm_bench, start_mock  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "fault-model"
TOKENS = 16
TTFT_MS = 20.0
ITL_MS = 1.0
PROMPT = "the quick brown fox jumps over the lazy dog and keeps on running far away"
TOOLS = ("ours", "ours-httpx", "vllm", "guidellm")
WARMUP_REQUESTS = 5


# ---- our runner ---------------------------------------------------------------------------------


def ours_worker(url: str, rate: float, count: int, out: Path, transport: str) -> None:
    """Drive `url` with run_rate + ChatClient.completion; dump the records' timestamps as JSON.

    transport "httpx" puts back the client's previous per-connection transport (httpx's own,
    before http1.py), for the before/after comparison.
    """
    from pytest_vllmgrid import client as client_module
    from pytest_vllmgrid.client import ChatClient
    from pytest_vllmgrid.load import run_event_loop, run_rate

    if transport == "httpx":
        import httpx

        client_module.Http1Connection = lambda ssl_context: httpx.AsyncHTTPTransport(  # type: ignore[assignment]
            verify=ssl_context, trust_env=False, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    async def main() -> dict[str, Any]:
        async with ChatClient(url, MODEL, timeout=60.0) as client:
            for _ in range(WARMUP_REQUESTS):
                await client.completion(PROMPT, max_tokens=TOKENS)
            result = await run_rate(lambda i: client.completion(PROMPT, max_tokens=TOKENS),
                                    rate=rate, num_requests=count, max_duration_s=10 * count / rate + 60)
        ok = [r for r in result.records if r.ok]
        return {"start": [r.send_time for r in ok], "end": [r.end_time for r in ok],
                "ttft": [r.ttft for r in ok], "planned": [r.planned_send_time for r in ok],
                "errors": result.error_count, "request_rate": result.request_rate}

    out.write_text(json.dumps(run_event_loop(main())))


def run_ours(url: str, rate: float, count: int, workdir: Path, cpu: str | None,
             transport: str = "http1") -> tuple[Requests, TreeCpu]:
    """Our runner in a fresh process."""
    out = workdir / "ours.json"
    argv = [sys.executable, __file__, "--worker", url, str(rate), str(count), str(out), transport]
    meter = run_tool(argv, cpu, workdir / "ours.log", 120 + 20 * count / rate)
    data = json.loads(out.read_text())
    return Requests(data["start"], data["end"], data["ttft"], data["planned"], data["errors"],
                    "send_time - planned_send_time (both recorded)", data["request_rate"]), meter


# ---- one script run -----------------------------------------------------------------------------


def mock_ttft(url: str) -> tuple[float, float]:
    """(sum, count) of the mock's own TTFT histogram."""
    from pytest_vllmgrid.server_metrics import TTFT, fetch_metrics

    histogram = fetch_metrics(f"{url}/metrics").histogram(TTFT[0])
    return (histogram.sum, histogram.count) if histogram else (0.0, 0.0)


def summarise(req: Requests, meter: TreeCpu, mock_meter: TreeCpu, rate: float, count: int,
              mock_delta: tuple[float, float]) -> dict[str, Any]:
    """The figures of one tool at one rate."""
    t0, t1 = min(req.start), max(req.end)
    window = t1 - t0
    cpu_s = meter.cpu_between(t0, t1)
    mock_cpu = mock_meter.cpu_between(t0, t1)
    lags = np.array([s - p for s, p in zip(req.start, req.planned)]) if req.planned else None
    starts = sorted(req.start)
    return {
        "target_rate": rate, "requests": count, "ok": len(req.start), "errors": req.errors,
        "achieved_rate": len(req.start) / window,
        "send_rate": (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else None,
        "tool_reported_rate": req.tool_rate,
        "lag_p50_ms": float(np.percentile(lags, 50) * 1000) if lags is not None else None,
        "lag_p99_ms": float(np.percentile(lags, 99) * 1000) if lags is not None else None,
        "lag_max_ms": float(lags.max() * 1000) if lags is not None else None,
        "lag_method": req.lag_method,
        # every tool measured the way vllm's must be: relative to its least-late request
        "rel_lag_p50_ms": float(np.percentile(lags - lags.min(), 50) * 1000) if lags is not None else None,
        "rel_lag_p99_ms": float(np.percentile(lags - lags.min(), 99) * 1000) if lags is not None else None,
        "ttft_median_ms": statistics.median(req.ttft) * 1000,
        "ttft_error_ms": statistics.median(req.ttft) * 1000 - TTFT_MS,
        "ttft_mean_ms": statistics.fmean(req.ttft) * 1000,
        "mock_ttft_mean_ms": mock_delta[0] / mock_delta[1] * 1000 if mock_delta[1] else None,
        "window_s": window,
        "cpu_cores": cpu_s / window if cpu_s is not None else None,
        "cpu_ms_per_request": cpu_s / len(req.start) * 1000 if cpu_s is not None else None,
        "mock_cpu_cores": mock_cpu / window if mock_cpu is not None else None,
        "processes": meter.max_processes,
        **({"tool_extra": req.tool_extra} if req.tool_extra else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--seconds", type=float, default=10.0, help="requests per run = rate x seconds")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole sweep (tool order rotates)")
    parser.add_argument("--client-cpu", default="0", help="taskset CPU list for the load generators ('' = none)")
    parser.add_argument("--server-cpu", default="1", help="taskset CPU list for the mock ('' = none)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/loadgen-capacity"))
    args = parser.parse_args()
    from pytest_vllmgrid.tinymodel import ensure_tiny_model

    tokenizer = str(ensure_tiny_model())
    client_cpu, server_cpu = args.client_cpu or None, args.server_cpu or None
    args.out.mkdir(parents=True, exist_ok=True)
    mock, url = start_mock(server_cpu, tokens=TOKENS, ttft_ms=TTFT_MS, itl_ms=ITL_MS)
    mock_meter = TreeCpu(mock.pid).start()
    runners = {"ours": lambda r, n, d: run_ours(url, r, n, d, client_cpu),
               "ours-httpx": lambda r, n, d: run_ours(url, r, n, d, client_cpu, "httpx"),
               "vllm": lambda r, n, d: run_vllm_bench(url, MODEL, tokenizer, n, d, rate=r, cpu=client_cpu,
                                                      output_len=TOKENS),
               "guidellm": lambda r, n, d: run_guidellm(url, MODEL, tokenizer, n, d, rate=r, cpu=client_cpu,
                                                        output_len=TOKENS)}
    rows: list[dict[str, Any]] = []
    print(f"mock {url}: {TOKENS} tokens, TTFT {TTFT_MS} ms, ITL {ITL_MS} ms; mock CPU {server_cpu}, "
          f"load generators CPU {client_cpu}; {args.seconds} s per run; load {load_average()}", flush=True)
    try:
        for round_index in range(args.rounds):
            shift = round_index % len(args.tools)
            tools = args.tools[shift:] + args.tools[:shift]  # each tool goes first in turn
            for rate in args.rates:
                count = int(rate * args.seconds)
                for tool in tools:
                    workdir = args.out / f"r{round_index + 1}" / f"{tool}-{rate:g}"
                    workdir.mkdir(parents=True, exist_ok=True)
                    load_before = load_average()
                    before = mock_ttft(url)
                    req, meter = runners[tool](rate, count, workdir)
                    after = mock_ttft(url)
                    row = {"round": round_index + 1, "tool": tool, "load_before": load_before,
                           "load_after": load_average(),
                           **summarise(req, meter, mock_meter, rate, count,
                                       (after[0] - before[0], after[1] - before[1]))}
                    rows.append(row)
                    print(format_row(row), flush=True)
                    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    finally:
        mock_meter.stop()
        mock.terminate()
        mock.wait(10)
    print()
    print(ratio_table(rows))


def format_row(row: dict[str, Any]) -> str:
    """One printed line per run."""
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    return (f"r{row['round']} {row['target_rate']:>5g} req/s {row['tool']:<10} achieved {row['achieved_rate']:7.1f} "
            f"(sent {fmt(row['send_rate'], '7.1f')}) lag p50 {fmt(row['lag_p50_ms'], '6.2f')} "
            f"p99 {fmt(row['lag_p99_ms'], '7.2f')} ms (rel. p50 {fmt(row['rel_lag_p50_ms'], '5.2f')} "
            f"p99 {fmt(row['rel_lag_p99_ms'], '6.2f')})  TTFT med {row['ttft_median_ms']:6.2f} ms "
            f"(err {row['ttft_error_ms']:+6.2f}; mock's own {fmt(row['mock_ttft_mean_ms'], '5.2f')})  "
            f"CPU {fmt(row['cpu_cores'], '4.2f')} cores, {fmt(row['cpu_ms_per_request'], '5.2f')} ms/req "
            f"(mock {fmt(row['mock_cpu_cores'], '4.2f')})  errors {row['errors']}  load {row['load_before']}")


def ratio_table(rows: list[dict[str, Any]]) -> str:
    """Our achieved rate and lag p99 against each peer at each target rate (medians over rounds)."""
    lines = ["target | ours req/s | vllm req/s | ours/vllm | guidellm req/s | ours/guidellm | "
             "ours before (httpx transport) req/s | lag p99 ms: ours / ours before / vllm (lower bound) / guidellm"]
    for rate in sorted({r["target_rate"] for r in rows}):
        def get(tool: str, key: str, rate: float = rate) -> float | None:
            values = [r[key] for r in rows if r["target_rate"] == rate and r["tool"] == tool and r[key] is not None]
            return statistics.median(values) if values else None

        ours = get("ours", "achieved_rate")
        cells = [f"{rate:g}", _f(ours)]
        for peer in ("vllm", "guidellm"):
            theirs = get(peer, "achieved_rate")
            cells += [_f(theirs), _f(ours / theirs, ".3f") if ours and theirs else "n/a"]
        before = get("ours-httpx", "achieved_rate")
        cells.append(_f(before))
        cells.append(" / ".join(_f(get(t, "lag_p99_ms"), ".2f") for t in TOOLS))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _f(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(REPO))
        ours_worker(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]), sys.argv[6])
    else:
        main()
