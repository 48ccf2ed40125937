"""Throughput under a concurrency sweep: output tok/s, req/s, latency percentiles and goodput per level.

Each level of `concurrency` is its own test (`throughput[4]`; the plugin parametrizes the `concurrency`
argument by the run's settings). Every prompt is fresh (no prefix-cache help) and, by default, every
request decodes exactly `throughput_max_tokens` tokens (ignore_eos), so configs are compared on the same
work.

A level is one sustained closed loop (pytest_vllmgrid.load.run_sustained) keeping `concurrency` requests in
flight: its first max(`warmup`, `concurrency`) completions are a discarded warm-up (the loop does not drain
after it: a loop started from empty runs its first wave in lock-step), then a measured span ends as soon as
it has lasted `throughput_min_duration_s` (10 s by default) or `throughput_requests` (200 by default) more
requests have finished, whichever comes first, but not before every window has seen the in-flight set turn
over 4 times on average (load.span_floor_requests: 4 x windows x concurrency requests, so one wave at a
high concurrency cannot make a span), and no later than `throughput_max_duration_s`.
`throughput_requests` keeps its old name and now means that minimum count (before, the run's whole size).

The span is cut into `throughput_windows` (>= 3) equal windows by time; output_tok_s, request_rate and
goodput_req_s are the mean of the per-window rates with a t 95 % CI over the windows (n = windows). Tokens
count in the window they were streamed in, so a request in flight at a boundary counts in each window it
streamed in, in proportion (load.split_windows says why not all where it finished); what arrives after
the span (the drain of the last requests) is not counted.

TTFT under load: ttft_ms, tpot_ms and e2e_ms are the samples of every request that finished after the
warm-up (all were sent while `concurrency` were in flight); their median's CI takes the window as the unit
too (load.batch_median_ci: the requests of one wave share their prefill, so a bootstrap over requests is
too narrow), each request in the window of its first token. goodput_pct covers the same requests.

Cross-check: the server's generated-token counter (vllm:generation_tokens_total) over the whole loop,
warm-up and drain included, against the client's usage count of the same requests; more than 5 % apart
and output_tok_s is invalid. server_output_tok_s is that counter over the loop's wall time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import numpy as np

from pytest_vllmgrid.bench import (WILSON_METHOD, BenchContext, MetricsWindow, add_request_samples,
                                   assert_all_succeeded, percent_with_ci, saturates_gpu)
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.load import (BATCH_MEDIAN_METHOD, WINDOW_METHOD, LoadResult, batch_median_ci, by_window,
                                  run_sustained, span_floor_requests, split_windows, window_mean)
from pytest_vllmgrid.measurement import HIGHER, Measurement, Metric
from pytest_vllmgrid.workloads import fresh_nonce, text_of_tokens

SERVER_TOKEN_TOLERANCE = 0.05  # server vs client completion tokens: further apart and output_tok_s is invalid


def meets_slo(record: RequestRecord, slo_ttft_ms: float, slo_tpot_ms: float) -> bool:
    """A successful request whose TTFT and TPOT (when it has one) are within the SLOs."""
    if not record.ok or record.ttft is None:
        return False
    return record.ttft * 1000 <= slo_ttft_ms and (record.tpot is None or record.tpot * 1000 <= slo_tpot_ms)


def test_throughput(vllm_bench: BenchContext, concurrency: int) -> None:
    """A warm-up, then a sustained span of a closed loop at this concurrency, measured in equal windows."""
    s = vllm_bench.settings
    nonce = fresh_nonce()
    n_warm = max(s.warmup, concurrency) if s.warmup else 0
    extra = {"ignore_eos": True} if s.throughput_ignore_eos else None
    floor = span_floor_requests(concurrency, s.throughput_windows)

    def sender(client: ChatClient) -> Callable[[int], Awaitable[RequestRecord]]:
        async def send(index: int) -> RequestRecord:
            text = text_of_tokens(s.throughput_prompt_tokens, seed=f"{s.seed}:{nonce}:{index}")
            return await client.chat([{"role": "user", "content": text}], max_tokens=s.throughput_max_tokens,
                                     extra_body=extra)
        return send

    async def main(client: ChatClient) -> tuple[LoadResult, MetricsWindow]:
        with vllm_bench.server_window(client) as window:
            result = await run_sustained(sender(client), concurrency=concurrency, warmup_requests=n_warm,
                                         min_duration_s=s.throughput_min_duration_s,
                                         min_requests=s.throughput_requests, floor_requests=floor,
                                         max_duration_s=s.throughput_max_duration_s)
        return result, window

    result, window = vllm_bench.run(main)
    assert result.start is not None and result.span_start is not None and result.span_end is not None
    records = result.records  # every request that finished after the warm-up
    everything = result.warmup_records + records
    span_s = result.span_end - result.span_start
    n_win = s.throughput_windows
    windows = split_windows(records, result.span_start, result.span_end, n_win,
                            good=lambda r: meets_slo(r, s.slo_ttft_ms, s.slo_tpot_ms))
    m = Measurement(method=(
        f"closed loop at concurrency {concurrency}: a discarded warm-up of its first {n_warm} completions, then "
        f"without a drain a span ending once it lasted {s.throughput_min_duration_s:g} s or "
        f"{s.throughput_requests} requests finished (whichever first, but not before {floor} finished; at most "
        f"{s.throughput_max_duration_s:g} s), cut into {n_win} equal windows; fresh "
        f"~{s.throughput_prompt_tokens}-token prompts, max_tokens {s.throughput_max_tokens}"
        f"{' with ignore_eos' if extra else ''}, temperature 0; a window's tokens = completion tokens (usage) "
        "streamed in it (a request in flight at a boundary counts, by its chunks, in each window it streamed "
        "in; nothing after the span counts); rates = " + WINDOW_METHOD + "; latency samples and goodput_pct: "
        f"every request after the warm-up; goodput = requests with TTFT <= {s.slo_ttft_ms:g} ms and TPOT <= "
        f"{s.slo_tpot_ms:g} ms"))

    # The server window covers the warm-up too: its token count is compared below with every request's, so
    # the per-sample check of add_request_samples (which sees the post-warm-up requests only) leaves it out.
    sample_window = window
    if window.delta is not None:
        sample_window = MetricsWindow(dataclasses.replace(window.delta, generation_tokens=None), window.error)
    ok = add_request_samples(m, records, sample_window)
    by_first_token = by_window(ok, result.span_start, result.span_end, n_win, lambda r: r.first_token_time)
    _window_median_cis(m, by_first_token)

    rate_method = f"{WINDOW_METHOD}; {n_win} windows of {span_s / n_win:.2f} s"
    tok_s, tok_ci = window_mean([w.output_tok_s for w in windows])
    out = m.add_value("output_tok_s", tok_s, "tok/s", HIGHER, headline=True, ci=tok_ci, n=n_win,
                      method="completion tokens (usage) streamed per second: " + rate_method)
    req_s, req_ci = window_mean([w.request_rate for w in windows])
    m.add_value("request_rate", req_s, "req/s", HIGHER, ci=req_ci, n=n_win,
                method="request-equivalents (a request split by its tokens streamed in each window) per "
                       "second: " + rate_method)
    met = sum(meets_slo(r, s.slo_ttft_ms, s.slo_tpot_ms) for r in records)
    goodput, ci = percent_with_ci(met, len(records))
    m.add_value("goodput_pct", goodput, "%", HIGHER, ci=ci, n=len(records), method=WILSON_METHOD)
    good_s, good_ci = window_mean([w.goodput_req_s for w in windows])
    m.add_value("goodput_req_s", good_s, "req/s", HIGHER, ci=good_ci, n=n_win,
                method="request-equivalents meeting both SLOs per second: " + rate_method)
    _server_cross_check(m, out, window, everything, result.wall_s)

    in_span = [w.finished for w in windows]
    m.info.update(concurrency=concurrency, requests=len(records), requests_in_span=sum(in_span),
                  warmup_requests=len(result.warmup_records), span_s=span_s, wall_s=result.wall_s,
                  warmup_s=result.span_start - result.start, stopped_by=result.stopped_by, floor_requests=floor,
                  completion_tokens=sum(r.completion_tokens or 0 for r in ok),
                  windows=[{**w.to_dict(result.span_start), "ttft_p50_ms": _median_ms(g, lambda r: r.ttft)}
                           for w, g in zip(windows, by_first_token)],
                  slo_ttft_ms=s.slo_ttft_ms, slo_tpot_ms=s.slo_tpot_ms,
                  lag_p50_ms=None if result.lag_p50_s is None else result.lag_p50_s * 1000,
                  lag_p99_ms=None if result.lag_p99_s is None else result.lag_p99_s * 1000)
    if result.stopped_by == "max_duration":
        m.warnings.append(f"span cut by throughput_max_duration_s ({s.throughput_max_duration_s:g} s) after "
                          f"{sum(in_span)} finished requests: before throughput_min_duration_s "
                          f"({s.throughput_min_duration_s:g} s), throughput_requests ({s.throughput_requests}) or "
                          f"the floor of {floor} ({n_win} windows x 4 turnovers of {concurrency})")
    empty = [i for i, w in enumerate(windows) if w.tokens <= 0]
    if empty:
        m.warnings.append(f"window(s) {', '.join(map(str, empty))} of {n_win} delivered no token: the windows "
                          f"({span_s / n_win:.2f} s) are shorter than a request's time to first token")
    vllm_bench.finish(m, window, saturating=saturates_gpu(concurrency, s.concurrency))
    assert_all_succeeded(everything)
    vllm_bench.check_thresholds()


def _window_median_cis(m: Measurement, groups: list[list[RequestRecord]]) -> None:
    """Give ttft_ms, tpot_ms and e2e_ms a median CI over windows (`groups`: the requests of each window)."""
    for name, value in (("ttft_ms", lambda r: r.ttft), ("tpot_ms", lambda r: r.tpot), ("e2e_ms", lambda r: r.e2e)):
        metric = m.metrics.get(name)
        if metric is None or metric.p50 is None:
            continue
        values = [[v * 1000 for r in group if (v := value(r)) is not None] for group in groups]
        ci = batch_median_ci(metric.p50, values, metric.ci)
        if ci is not None:
            metric.ci_low, metric.ci_high = ci
            metric.method = BATCH_MEDIAN_METHOD


def _median_ms(group: list[RequestRecord], value: Callable[[RequestRecord], float | None]) -> float | None:
    """The median of `value` over a window's requests, in ms (None without any)."""
    values = [v * 1000 for r in group if (v := value(r)) is not None]
    return float(np.median(values)) if values else None


def _server_cross_check(m: Measurement, out: Metric, window: MetricsWindow, everything: list[RequestRecord],
                        wall_s: float) -> None:
    """server_output_tok_s from vllm:generation_tokens_total over the loop; output_tok_s invalid when the
    server's and the client's token counts of the same requests are more than SERVER_TOKEN_TOLERANCE apart."""
    client_tokens = sum(r.completion_tokens or 0 for r in everything if r.ok)
    server_tokens = window.delta.generation_tokens if window.delta is not None else None
    check = m.info.setdefault("server_check", {})
    assert isinstance(check, dict)
    check.update(client_completion_tokens=client_tokens, server_generation_tokens=server_tokens,
                 tokens_compared_over="the whole loop (warm-up, span and drain)")
    if server_tokens is None or wall_s <= 0:
        m.warnings.append("no server generation-token counter over the loop: output_tok_s not cross-checked")
        return
    m.add_value("server_output_tok_s", server_tokens / wall_s, "tok/s", HIGHER, exact=True,
                method="server counter vllm:generation_tokens_total over the whole loop (warm-up, span and drain) "
                       "/ its wall time from the first send to the last response")
    check["client_loop_tok_s"] = client_tokens / wall_s
    if abs(server_tokens - client_tokens) > SERVER_TOKEN_TOLERANCE * max(client_tokens, 1):
        reason = (f"the server generated {server_tokens:.0f} tokens over the loop, the client's usage counts "
                  f"{client_tokens} for the same requests (over {SERVER_TOKEN_TOLERANCE:.0%} apart)")
        out.validity, out.validity_reason = "invalid", reason
        m.warnings.append(f"output_tok_s invalid: {reason}")
    elif abs(server_tokens - client_tokens) > max(1.0, 0.02 * client_tokens):
        m.warnings.append(f"the server generated {server_tokens:.0f} tokens over the loop, the client's usage counts "
                          f"{client_tokens}: token-based rates may be off")
