"""TTFT accuracy: each client's TTFT against the server's own histogram (real tiny CPU vLLM or mock).

    .venv/bin/python perf/ttft_accuracy.py --out /tmp/ttft-accuracy            # 2 rounds x 50 requests
    .venv/bin/python perf/ttft_accuracy.py --server mock --out /tmp/ttft-accuracy-mock

--server vllm (default) deploys the embedded CPU grid's `baseline` config (prefix caching and
chunked prefill off, eager) with our process deployer. --server mock runs tests/fault_server.py
(first token 20 ms after the request is read, 1 ms apart), whose own histogram is stamped when it
writes the first token: there the difference is the client's own overhead plus loopback. Per round,
each tool sends N sequential streamed requests (~32-token prompts, 32 output tokens, ignore_eos)
while nothing else talks to that server:
  ours-chat         ChatClient.chat, as benchmarks/test_ttft.py does
  ours-completions  ChatClient.completion
  vllm              `vllm bench serve --backend openai --max-concurrency 1` (/v1/completions)
  vllm-chat         `vllm bench serve --backend openai-chat` (/v1/chat/completions): it times the first
                    chunk with choices, the role-only chunk vLLM sends on the engine's first output, so
                    it compares with ours-chat's first output (`first output` in the printed line)
  guidellm          GuideLLM, synchronous profile (/v1/completions)
Around each tool's requests the server's /metrics is scraped; the delta of
vllm:time_to_first_token_seconds covers exactly those N requests (the count is checked).

Two differences are printed per tool:
  median diff  client TTFT median - the histogram's median. The median is interpolated inside a
               bucket (vLLM's bounds near here: 20, 40, 60, 80, 100 ms), so it can be off by
               several ms whatever the client does: shown as asked, not meaningful at ms scale.
  mean diff    client TTFT mean - histogram sum/count. Exact: this is the meaningful figure. It is
               the time outside vLLM's own TTFT window (HTTP parsing, prompt rendering and
               tokenisation before vLLM's arrival stamp; detokenisation, SSE framing, loopback
               and the client's own reading after the first token), so no client can reach 0;
               peers measured in the same run show how much of it is the client's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import MOCK_MODEL, load_average, run_guidellm, run_vllm_bench, start_mock  # noqa: E402

from pytest_vllmgrid.client import ChatClient  # noqa: E402
from pytest_vllmgrid.deploy.base import Deployment  # noqa: E402
from pytest_vllmgrid.deploy.options import DeployOptions  # noqa: E402
from pytest_vllmgrid.deploy.process import ProcessDeployer, resolve_model  # noqa: E402
from pytest_vllmgrid.grid import load_grid  # noqa: E402
from pytest_vllmgrid.load import run_event_loop  # noqa: E402
from pytest_vllmgrid.server_metrics import HistogramDelta, diff, fetch_metrics  # noqa: E402
from pytest_vllmgrid.placement import cache_root, packaged_default_grid  # noqa: E402
from pytest_vllmgrid.tinymodel import ensure_tiny_model  # noqa: E402
from pytest_vllmgrid.workloads import text_of_tokens  # noqa: E402

TOOLS = ("ours-chat", "ours-completions", "vllm", "vllm-chat", "guidellm")
PROMPT_TOKENS = 32
OUTPUT_TOKENS = 32
SERVER_WARMUP = 3
SETTLE_S = 0.1  # let the last request's stats land before the closing scrape


def deploy_baseline(workdir: Path, grid_file: Path | None = None, name: str = "baseline") -> Deployment:
    """A grid's config (default: the embedded grid's baseline), started by our process deployer."""
    grid = load_grid(grid_file or packaged_default_grid())
    config = next(c for c in grid.configs if c.name == name)
    deployer = ProcessDeployer(DeployOptions(state_dir=cache_root(), cache_root=cache_root()))
    return deployer.deploy(config, workdir)


def ours(url: str, model: str, count: int, chat: bool, seed: int
         ) -> tuple[list[float | None], list[float], list[float | None]]:
    """N sequential streamed requests from our client; their TTFTs, end-to-end times and times to the first
    data event of any kind (chat: vLLM's role chunk), in seconds."""
    texts = [text_of_tokens(PROMPT_TOKENS, seed=f"acc-{seed}-{i}") for i in range(count)]

    async def main() -> tuple[list[float | None], list[float], list[float | None]]:
        async with ChatClient(url, model, timeout=120.0) as client:
            records = []
            for text in texts:
                if chat:
                    record = await client.chat([{"role": "user", "content": text}], max_tokens=OUTPUT_TOKENS,
                                               extra_body={"ignore_eos": True})
                else:
                    record = await client.completion(text, max_tokens=OUTPUT_TOKENS, extra_body={"ignore_eos": True})
                records.append(record)
        failed = [r.error for r in records if not r.ok]
        if failed:
            raise RuntimeError(f"{len(failed)} requests failed: {failed[:3]}")
        return [r.ttft for r in records], [r.e2e for r in records], [r.first_output for r in records]

    return run_event_loop(main())


def warm(url: str, model: str) -> None:
    """A few requests the measurement does not see, so every tool meets an equally warm server."""
    for i in range(SERVER_WARMUP):
        httpx.post(f"{url}/v1/completions", timeout=60,
                   json={"model": model, "prompt": f"warm {i}", "max_tokens": 4}).raise_for_status()


def measure(tool: str, url: str, model: str, tokenizer: str, count: int, workdir: Path, seed: int) -> dict[str, Any]:
    """One tool's N requests bracketed by /metrics scrapes; the client and server TTFT figures."""
    workdir.mkdir(parents=True, exist_ok=True)
    warm(url, model)
    load_before = load_average()
    before = fetch_metrics(f"{url}/metrics")
    firsts: list[float | None] = []
    if tool.startswith("ours"):
        ttfts, e2es, firsts = ours(url, model, count, tool == "ours-chat", seed)
    elif tool.startswith("vllm"):
        req, _ = run_vllm_bench(url, model, tokenizer, count, workdir, rate=None, max_concurrency=1,
                                input_len=PROMPT_TOKENS, output_len=OUTPUT_TOKENS, chat=tool == "vllm-chat")
        ttfts, e2es = req.ttft, [end - start for start, end in zip(req.start, req.end)]
    else:
        req, _ = run_guidellm(url, model, tokenizer, count, workdir, rate=None,
                              input_len=PROMPT_TOKENS, output_len=OUTPUT_TOKENS)
        ttfts, e2es = req.ttft, [end - start for start, end in zip(req.start, req.end)]
    time.sleep(SETTLE_S)
    delta = diff(before, fetch_metrics(f"{url}/metrics"))
    server: HistogramDelta | None = delta.ttft
    if server is None or server.mean_s is None:
        raise RuntimeError("the server's TTFT histogram did not move")
    # a random model can stream only empty text (held-back partial UTF-8): such a request has no TTFT
    timed = [t for t in ttfts if t is not None]
    client_median, client_mean = statistics.median(timed) * 1000, statistics.fmean(timed) * 1000
    server_e2e = delta.e2e_latency.mean_s * 1000 if delta.e2e_latency and delta.e2e_latency.mean_s else None
    client_e2e = statistics.fmean(e2es) * 1000
    return {
        "tool": tool, "requests": len(ttfts), "with_ttft": len(timed), "server_count": server.count,
        "counts_match": int(server.count) == len(ttfts),
        "client_median_ms": client_median, "server_p50_ms": server.p50_s * 1000,
        "server_p50_bucket_ms": [b * 1000 for b in server.p50_bucket_s] if server.p50_bucket_s else None,
        "median_diff_ms": client_median - server.p50_s * 1000,
        "client_mean_ms": client_mean, "server_mean_ms": server.mean_s * 1000,
        "mean_diff_ms": client_mean - server.mean_s * 1000,
        "first_output_mean_diff_ms": (statistics.fmean(t for t in firsts if t is not None) * 1000
                                      - server.mean_s * 1000) if any(t is not None for t in firsts) else None,
        "client_e2e_mean_ms": client_e2e, "server_e2e_mean_ms": server_e2e,
        "first_token_at_fraction_of_e2e": client_mean / client_e2e,
        "load_before": load_before, "load_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/ttft-accuracy"))
    parser.add_argument("--server", choices=("vllm", "mock"), default="vllm")
    parser.add_argument("--grid", type=Path, help="deploy this grid's config instead of the embedded baseline "
                        "(e.g. a GPU grid: docs/gpu.md)")
    parser.add_argument("--config", default="baseline", help="the config of --grid to deploy")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = None
    if args.server == "vllm":
        deployment = deploy_baseline(args.out / "server", args.grid, args.config)
        if args.grid:
            tokenizer = resolve_model(load_grid(args.grid).configs[0].model)  # the served directory's tokenizer
        url, model, stop = deployment.endpoint.base_url, deployment.endpoint.model, deployment.teardown
        started = f"vLLM baseline config up in {deployment.startup_seconds:.1f} s"
    else:
        mock, url = start_mock(None, tokens=OUTPUT_TOKENS, ttft_ms=20.0, itl_ms=1.0)
        model, started = MOCK_MODEL, "mock server (first token after 20 ms)"
        stop = lambda: (mock.terminate(), mock.wait(10))  # noqa: E731
    tokenizer = tokenizer or str(ensure_tiny_model())
    print(f"{started} at {url}; {args.requests} sequential requests per tool and round; load {load_average()}",
          flush=True)
    rows = []
    try:
        for round_index in range(1, args.rounds + 1):
            for tool in args.tools:
                row = {"round": round_index, **measure(tool, url, model, tokenizer, args.requests,
                                                       args.out / f"{tool}-{round_index}", round_index)}
                rows.append(row)
                print(format_row(row), flush=True)
                (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    finally:
        stop()
    print()
    print(summary(rows))


def format_row(row: dict[str, Any]) -> str:
    """One printed line per tool and round."""
    bucket = row["server_p50_bucket_ms"]
    return (f"round {row['round']} {row['tool']:<16} n={row['with_ttft']}/{row['requests']} "
            f"(server {row['server_count']:.0f})  "
            f"median: client {row['client_median_ms']:6.2f} server {row['server_p50_ms']:6.2f} "
            f"[bucket {bucket[0]:.0f}-{bucket[1]:.0f}] diff {row['median_diff_ms']:+6.2f} ms  "
            f"mean: client {row['client_mean_ms']:6.2f} server {row['server_mean_ms']:6.2f} "
            f"diff {row['mean_diff_ms']:+6.2f} ms  first output diff {_f(row.get('first_output_mean_diff_ms'))} ms"
            f"  e2e mean: client {row['client_e2e_mean_ms']:6.1f} "
            f"server {_f(row['server_e2e_mean_ms'])}  load {row['load_before']}")


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:6.1f}"


def summary(rows: list[dict[str, Any]]) -> str:
    """Per tool: the median over rounds of both differences, and the mean diff against vllm's."""
    by_tool: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_tool.setdefault(row["tool"], []).append(row)
    peer = statistics.median(r["mean_diff_ms"] for r in by_tool["vllm"]) if "vllm" in by_tool else None
    lines = ["tool | median diff ms (rounds) | mean diff ms (rounds) | mean diff / vllm's"]
    for tool, tool_rows in by_tool.items():
        mean_diff = statistics.median(r["mean_diff_ms"] for r in tool_rows)
        ratio = f"{mean_diff / peer:.2f}" if peer else "n/a"
        medians = ", ".join(f"{r['median_diff_ms']:+.2f}" for r in tool_rows)
        means = ", ".join(f"{r['mean_diff_ms']:+.2f}" for r in tool_rows)
        lines.append(f"{tool} | {medians} | {means} | {ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
