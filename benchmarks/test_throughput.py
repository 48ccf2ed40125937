"""Throughput under a concurrency sweep: output tok/s, req/s, latency percentiles and goodput per level.

Each level of `concurrency` is its own test (`throughput[4]`; the plugin parametrizes the
`concurrency` argument by the run's settings), a closed loop that keeps that many
streamed requests in flight, bounded by a request count and a duration. Every prompt is fresh (no
prefix-cache help) and, by default, every request decodes exactly `throughput_max_tokens` tokens
(ignore_eos), so configs are compared on the same work. The server's own generated-token counter
over the run is stored beside the client's count.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pytest_vllmgrid.bench import (WILSON_METHOD, BenchContext, MetricsWindow, add_request_samples,
                                   assert_all_succeeded, percent_with_ci)
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.load import LoadResult, run_concurrency
from pytest_vllmgrid.measurement import HIGHER, Measurement
from pytest_vllmgrid.workloads import fresh_nonce, text_of_tokens


def meets_slo(record: RequestRecord, slo_ttft_ms: float, slo_tpot_ms: float) -> bool:
    """A successful request whose TTFT and TPOT (when it has one) are within the SLOs."""
    if not record.ok or record.ttft is None:
        return False
    return record.ttft * 1000 <= slo_ttft_ms and (record.tpot is None or record.tpot * 1000 <= slo_tpot_ms)


def test_throughput(vllm_bench: BenchContext, concurrency: int) -> None:
    """A warm-up wave, then `throughput_requests` requests at this concurrency; rates over the run's wall time."""
    s = vllm_bench.settings
    nonce = fresh_nonce()
    n_warm = max(s.warmup, concurrency) if s.warmup else 0
    extra = {"ignore_eos": True} if s.throughput_ignore_eos else None

    def sender(client: ChatClient, phase: str) -> Callable[[int], Awaitable[RequestRecord]]:
        async def send(index: int) -> RequestRecord:
            text = text_of_tokens(s.throughput_prompt_tokens, seed=f"{s.seed}:{nonce}:{phase}:{index}")
            return await client.chat([{"role": "user", "content": text}], max_tokens=s.throughput_max_tokens,
                                     extra_body=extra)
        return send

    async def main(client: ChatClient) -> tuple[LoadResult, MetricsWindow]:
        if n_warm:
            await run_concurrency(sender(client, "warmup"), concurrency=concurrency, num_requests=n_warm,
                                  max_duration_s=s.throughput_max_duration_s)
        with vllm_bench.server_window(client) as window:
            result = await run_concurrency(sender(client, "run"), concurrency=concurrency,
                                           num_requests=s.throughput_requests,
                                           max_duration_s=s.throughput_max_duration_s)
        return result, window

    result, window = vllm_bench.run(main)
    records = result.records
    m = Measurement(method=(
        f"closed loop at concurrency {concurrency}: {s.throughput_requests} streamed chat requests (at most "
        f"{s.throughput_max_duration_s:g} s) after a discarded warm-up of {n_warm}; fresh ~{s.throughput_prompt_tokens}"
        f"-token prompts, max_tokens {s.throughput_max_tokens}{' with ignore_eos' if extra else ''}, temperature 0; "
        "rates = successful requests' completion tokens (or count) / wall time from the first send to the last "
        f"response; goodput = requests with TTFT <= {s.slo_ttft_ms:g} ms and TPOT <= {s.slo_tpot_ms:g} ms"))
    ok = add_request_samples(m, records, window)
    wall = result.wall_s
    tokens = sum(r.completion_tokens or 0 for r in ok)
    m.add_value("output_tok_s", tokens / wall if wall > 0 else None, "tok/s", HIGHER, headline=True, n=len(ok),
                method="completion tokens (usage) of successful requests / wall time of the run")
    m.add_value("request_rate", len(ok) / wall if wall > 0 else None, "req/s", HIGHER, n=len(ok))
    met = sum(meets_slo(r, s.slo_ttft_ms, s.slo_tpot_ms) for r in records)
    goodput, ci = percent_with_ci(met, len(records))
    m.add_value("goodput_pct", goodput, "%", HIGHER, ci=ci, n=len(records), method=WILSON_METHOD)
    m.add_value("goodput_req_s", met / wall if wall > 0 else None, "req/s", HIGHER, n=len(records))
    m.info.update(concurrency=concurrency, requests=len(records), wall_s=wall, stopped_by=result.stopped_by,
                  completion_tokens=tokens, slo_ttft_ms=s.slo_ttft_ms, slo_tpot_ms=s.slo_tpot_ms,
                  lag_p50_ms=None if result.lag_p50_s is None else result.lag_p50_s * 1000,
                  lag_p99_ms=None if result.lag_p99_s is None else result.lag_p99_s * 1000)
    if result.stopped_by == "duration":
        m.warnings.append(f"stopped by throughput_max_duration_s ({s.throughput_max_duration_s:g} s) after "
                          f"{len(records)} of {s.throughput_requests} requests")
    vllm_bench.finish(m, window)
    assert_all_succeeded(records)
    vllm_bench.check_thresholds()
