"""Does vLLM's /metrics already count a request when its stream ends? (Decides whether a /metrics window
needs a settle delay before its closing scrape.)

    .venv/bin/python perf/metrics_lag.py --requests 60

Deploys the embedded grid's baseline config, then for each request: stream it to the end with our client,
scrape /metrics at once (kept-alive client), and compare vllm:request_success and the e2e histogram's count
with the number of requests finished so far. Prints how many closing scrapes lagged, by how many requests,
and how long a poll took to see them. Also prints the cost of a /metrics scrape and a /tokenize call with a
new httpx client per call and with one kept-alive client.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ttft_accuracy import deploy_baseline  # noqa: E402

from pytest_vllmgrid.client import ChatClient  # noqa: E402
from pytest_vllmgrid.load import run_event_loop  # noqa: E402
from pytest_vllmgrid.server_metrics import fetch_metrics  # noqa: E402


def finished(snapshot) -> tuple[float, float]:
    """(request_success total, e2e histogram count)."""
    e2e = snapshot.histogram("vllm:e2e_request_latency_seconds")
    return snapshot.counter("vllm:request_success") or 0.0, e2e.count if e2e else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        deployment = deploy_baseline(Path(tmp))
        try:
            run(deployment, args.requests, args.concurrency)
        finally:
            deployment.teardown()


def run(deployment, count: int, concurrency: int) -> None:
    endpoint = deployment.endpoint
    http = deployment.http()
    lags: list[int] = []
    waits: list[float] = []

    async def burst(client: ChatClient) -> None:
        import asyncio
        await asyncio.gather(*(client.chat([{"role": "user", "content": f"count to {i}"}], max_tokens=16)
                               for i in range(concurrency)))

    start_success, start_e2e = finished(fetch_metrics(endpoint.metrics_url, client=http))
    done = 0
    for _ in range(count):
        async def one() -> None:
            async with ChatClient(endpoint.base_url, endpoint.model) as client:
                await burst(client)
        run_event_loop(one())
        done += concurrency
        t0 = time.perf_counter()
        success, e2e = finished(fetch_metrics(endpoint.metrics_url, client=http))
        lag = int(done - min(success - start_success, e2e - start_e2e))
        lags.append(lag)
        while lag > 0 and time.perf_counter() - t0 < 2:
            time.sleep(0.005)
            success, e2e = finished(fetch_metrics(endpoint.metrics_url, client=http))
            lag = int(done - min(success - start_success, e2e - start_e2e))
        waits.append(time.perf_counter() - t0)
    lagged = [x for x in lags if x > 0]
    print(f"{count} bursts of {concurrency}: closing scrape lagged in {len(lagged)} "
          f"(by {sorted(set(lagged)) or 0} requests); scrape-until-counted median "
          f"{statistics.median(waits) * 1000:.1f} ms, max {max(waits) * 1000:.1f} ms")
    for label, call in (("/metrics", lambda c: c.get(endpoint.metrics_url)),
                        ("/tokenize", lambda c: c.post(f"{endpoint.base_url}/tokenize",
                                                       json={"model": endpoint.model, "prompt": "hello " * 200}))):
        t0 = time.perf_counter()
        for _ in range(20):
            with httpx.Client() as fresh:
                call(fresh)
        per_new = (time.perf_counter() - t0) / 20
        t0 = time.perf_counter()
        for _ in range(20):
            call(http)
        per_kept = (time.perf_counter() - t0) / 20
        print(f"{label}: new client per call {per_new * 1000:.1f} ms, kept-alive {per_kept * 1000:.1f} ms")


if __name__ == "__main__":
    main()
