"""Stability over a run of sequential requests alternating short and long prompts: drift, errors, timeouts.

Short and long prompts have very different TTFTs, so the trend is taken on each TTFT divided by the
median TTFT of its own kind: degradation compares the last requests with the first ones on that
normalised series, and the slope is its least-squares drift in % of the median per request.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable

from pytest_vllmgrid.bench import BenchContext, add_request_samples
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.measurement import LOWER, Measurement
from pytest_vllmgrid.stats import linear_slope, ratio_ci, trend_pct
from pytest_vllmgrid.workloads import fresh_nonce, text_of_tokens

TREND_REQUESTS = 4  # requests in each of the first/last windows: two short and two long


def test_stability(vllm_bench: BenchContext) -> None:
    """`warmup` discarded requests, then `stability_requests` sequential ones, short and long in turn."""
    s = vllm_bench.settings
    nonce = fresh_nonce()
    sizes = {"short": s.short_prompt_tokens, "long": s.long_prompt_tokens}
    kinds = ["short" if i % 2 == 0 else "long" for i in range(s.warmup + s.stability_requests)]
    # a fresh text per request: no prefix-cache hit can hide a drift
    texts = [text_of_tokens(sizes[kind], seed=f"{s.seed}:{nonce}:{i}") for i, kind in enumerate(kinds)]

    def ask(client: ChatClient, index: int) -> Awaitable[RequestRecord]:
        return client.chat([{"role": "user", "content": texts[index]}], max_tokens=s.stability_max_tokens)

    records, window = vllm_bench.run_sequential(ask, s.stability_requests)
    kinds = kinds[s.warmup:]
    m = Measurement(method=(
        f"{len(records)} sequential streamed requests after {s.warmup} discarded ones, alternating fresh "
        f"~{s.short_prompt_tokens}- and ~{s.long_prompt_tokens}-token prompts, max_tokens {s.stability_max_tokens}, "
        f"temperature 0; each TTFT is divided by its kind's median; degradation = median of the last "
        f"{TREND_REQUESTS} / median of the first {TREND_REQUESTS} - 1; slope = least squares, % per request"))
    ok = add_request_samples(m, records, window)
    ttft = {kind: [r.ttft * 1000 for r, k in zip(records, kinds, strict=True)
                   if k == kind and r.ok and r.ttft is not None] for kind in sizes}
    m.add_sample("ttft_short_ms", ttft["short"], "ms", LOWER)
    m.add_sample("ttft_long_ms", ttft["long"], "ms", LOWER)
    medians = {kind: statistics.median(values) for kind, values in ttft.items() if values}
    normalised = [r.ttft * 1000 / medians[k] for r, k in zip(records, kinds, strict=True)
                  if r.ok and r.ttft is not None and medians.get(k)]
    degradation = trend_pct(normalised, head=TREND_REQUESTS, tail=TREND_REQUESTS)
    slope = linear_slope(normalised)
    window_n = max(1, min(TREND_REQUESTS, len(normalised) // 2))
    ci = None
    if degradation is not None:
        ratio = ratio_ci(normalised[-window_n:], normalised[:window_n])
        ci = ((ratio.ci_low - 1) * 100, (ratio.ci_high - 1) * 100)
    m.add_value("degradation_pct", degradation, "%", LOWER, headline=True, ci=ci, n=len(normalised),
                method="stats.trend_pct of the normalised series; CI: bootstrap of the same median ratio")
    m.add_value("ttft_slope_pct_per_request", None if slope is None else slope * 100, "%/request", LOWER,
                n=len(normalised))
    m.add_value("timeouts", sum(1 for r in records if r.error and r.error.kind == "timeout"), "requests", LOWER,
                n=len(records))
    m.info.update(kinds=kinds, ttft_series_ms=[None if r.ttft is None else r.ttft * 1000 for r in records],
                  slope_ms_per_request={kind: linear_slope(values) for kind, values in ttft.items()},
                  degradation_by_kind_pct={kind: trend_pct(values, head=TREND_REQUESTS // 2,
                                                           tail=TREND_REQUESTS // 2) for kind, values in ttft.items()},
                  prompt_tokens_by_kind={kind: [r.prompt_tokens for r, k in zip(records, kinds, strict=True)
                                                if k == kind] for kind in sizes})
    vllm_bench.finish(m, window)
    assert ok, f"no request succeeded: {m.info['error_kinds']}"
    assert ttft["short"] and ttft["long"], "one prompt kind has no successful request: no trend can be measured"
    vllm_bench.check_thresholds()
