"""Stability over a run of sequential requests alternating short and long prompts: drift, errors, timeouts.

Short and long prompts have very different TTFTs, so the slope is taken on each TTFT divided by the
median TTFT of its own kind (least squares, % of the median per request), and degradation pairs each
request of the first half with the same-kind request half a run later: the pair is the unit of its CI.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable

from pytest_vllmgrid.bench import BenchContext, add_request_samples
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.measurement import LOWER, Measurement
from pytest_vllmgrid.designs import LOG_T_METHOD, early_late_pairs, unit_change_pct
from pytest_vllmgrid.stats import linear_slope, trend_pct
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
        f"temperature 0; degradation: the pair (an early request with the same-kind request half a run later) is "
        f"the unit; slope = least squares of each TTFT / its kind's median, % per request"))
    ok = add_request_samples(m, records, window)
    ttft = {kind: [r.ttft * 1000 for r, k in zip(records, kinds, strict=True)
                   if k == kind and r.ok and r.ttft is not None] for kind in sizes}
    m.add_sample("ttft_short_ms", ttft["short"], "ms", LOWER)
    m.add_sample("ttft_long_ms", ttft["long"], "ms", LOWER)
    medians = {kind: statistics.median(values) for kind, values in ttft.items() if values}
    normalised = [r.ttft * 1000 / medians[k] for r, k in zip(records, kinds, strict=True)
                  if r.ok and r.ttft is not None and medians.get(k)]
    slope = linear_slope(normalised)
    good = [(r.ttft * 1000, k) for r, k in zip(records, kinds, strict=True) if r.ok and r.ttft is not None]
    pairs = early_late_pairs([v for v, _ in good], [k for _, k in good])
    degradation, ci = unit_change_pct(pairs) if pairs else (None, None)
    m.add_value("degradation_pct", degradation, "%", LOWER, headline=True, ci=ci, n=len(pairs),
                method=f"late / early TTFT of requests paired by kind and position (i-th of a kind in the first half "
                       f"with the i-th in the second half); {LOG_T_METHOD}")
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
