"""Sustained-throughput windows: span stop rules, window splitting, the per-window rate CI (no server)."""

from __future__ import annotations

import asyncio
import statistics
from time import perf_counter

import pytest

from pytest_vllmgrid.bench import BenchSettings, build_settings
from pytest_vllmgrid.client import RequestError, RequestRecord
from pytest_vllmgrid.load import (Window, batch_median_ci, by_window, run_event_loop, run_sustained,
                                  span_floor_requests, split_windows, window_mean)
from pytest_vllmgrid.stats import t_quantile


def _streamed(send: float, first: float, end: float, tokens: int) -> RequestRecord:
    """A successful streamed request whose `tokens` chunks arrive evenly from `first` to `end`."""
    step = (end - first) / (tokens - 1) if tokens > 1 else 0.0
    return RequestRecord(str(send), send_time=send, first_token_time=first, end_time=end, completion_tokens=tokens,
                         chunk_times=[first + i * step for i in range(tokens)])


# --- split_windows ---------------------------------------------------------------------------------


def test_windows_are_equal_consecutive_slices_of_the_span() -> None:
    windows = split_windows([], 10.0, 13.0, 3)
    assert [(w.start, w.end) for w in windows] == [(10.0, 11.0), (11.0, 12.0), (12.0, 13.0)]
    assert all(w.seconds == pytest.approx(1.0) and w.tokens == 0 for w in windows)


def test_a_request_in_flight_at_a_boundary_counts_in_each_window_it_streamed_in() -> None:
    # 10 chunks at 0.55, 0.65, ... 1.45: 5 in window [0, 1), 5 in [1, 2)
    record = _streamed(0.5, 0.55, 1.45, 10)
    first, second = split_windows([record], 0.0, 2.0, 2)
    assert (first.tokens, second.tokens) == pytest.approx((5, 5))
    assert (first.requests, second.requests) == pytest.approx((0.5, 0.5))
    assert (first.finished, second.finished) == (0, 1)  # it finished in the second


def test_usage_tokens_are_spread_over_the_chunks() -> None:
    record = _streamed(0.0, 0.1, 0.9, 4)
    record.completion_tokens = 8  # two tokens per network read
    (window,) = split_windows([record], 0.0, 1.0, 1)
    assert window.tokens == pytest.approx(8) and window.requests == pytest.approx(1)


def test_nothing_after_the_span_counts() -> None:
    drained = _streamed(0.8, 0.85, 1.8, 10)  # chunks 0.85, 0.96, 1.06 ...: 2 of 10 inside [0, 1)
    (window,) = split_windows([drained], 0.0, 1.0, 1)
    assert window.tokens == pytest.approx(2) and window.finished == 0


def test_failed_requests_do_not_count_and_unstreamed_ones_count_at_their_end() -> None:
    failed = _streamed(0.0, 0.1, 0.4, 4)
    failed.error = RequestError("timeout", "x")
    whole = RequestRecord("w", send_time=0.0, end_time=1.5, completion_tokens=6, streamed=False)
    windows = split_windows([failed, whole], 0.0, 2.0, 2)
    assert [w.tokens for w in windows] == [0, 6]
    assert [w.requests for w in windows] == [0, 1]


def test_goodput_counts_only_the_requests_picked() -> None:
    good, bad = _streamed(0.0, 0.1, 0.9, 4), _streamed(0.0, 0.2, 0.9, 4)
    (window,) = split_windows([good, bad], 0.0, 1.0, 1, good=lambda r: r is good)
    assert (window.requests, window.good_requests) == pytest.approx((2, 1))


def test_the_span_total_equals_the_sum_of_its_windows() -> None:
    records = [_streamed(i * 0.1, i * 0.1 + 0.05, i * 0.1 + 0.6, 16) for i in range(40)]
    windows = split_windows(records, 0.0, 3.0, 5)
    inside = sum(1 for r in records for t in r.chunk_times if t < 3.0)
    assert sum(w.tokens for w in windows) == pytest.approx(inside)
    # equal windows: the mean of the window rates is the span's total rate
    assert window_mean([w.output_tok_s for w in windows])[0] == pytest.approx(inside / 3.0)


def test_lock_step_waves_give_steady_token_rates_but_jumpy_completion_counts() -> None:
    """16 requests in lock-step, a wave every 0.29 s: whole requests counted where they finish jump by a
    wave between windows, tokens counted where they streamed stay within a few percent."""
    records, t = [], 0.0
    while t < 5.0:
        records += [_streamed(t, t + 0.02, t + 0.29, 32) for _ in range(16)]
        t += 0.29
    windows = split_windows(records, 0.0, 4.0, 5)
    finished = [w.finished for w in windows]
    assert max(finished) - min(finished) >= 16
    rates = [w.output_tok_s for w in windows]
    assert (max(rates) - min(rates)) / statistics.mean(rates) < 0.1


def test_split_windows_rejects_an_empty_span_or_no_window() -> None:
    with pytest.raises(ValueError):
        split_windows([], 1.0, 1.0, 3)
    with pytest.raises(ValueError):
        split_windows([], 0.0, 1.0, 0)


def test_window_rates_and_dump() -> None:
    window = Window(start=2.0, end=4.0, tokens=100.0, requests=5.0, good_requests=4.0, finished=5)
    assert (window.output_tok_s, window.request_rate, window.goodput_req_s) == (50, 2.5, 2)
    assert window.to_dict(origin=2.0)["start_s"] == 0 and window.to_dict(origin=2.0)["end_s"] == 2


# --- window_mean ------------------------------------------------------------------------------------


def test_window_mean_is_a_t_interval_over_windows() -> None:
    rates = [100.0, 104.0, 96.0, 102.0, 98.0]
    mean, ci = window_mean(rates)
    half = t_quantile(0.975, 4) * statistics.stdev(rates) / 5 ** 0.5
    assert mean == 100.0
    assert ci == pytest.approx((100 - half, 100 + half))


def test_window_mean_of_identical_windows_has_a_zero_width_interval() -> None:
    assert window_mean([7.0, 7.0, 7.0]) == (7.0, (7.0, 7.0))


def test_window_mean_clips_the_interval_at_zero_and_needs_two_windows() -> None:
    assert window_mean([0.0, 0.0, 30.0])[1][0] == 0.0
    assert window_mean([5.0]) == (5.0, None)
    with pytest.raises(ValueError):
        window_mean([])


def test_the_interval_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    import random

    rng = random.Random(1)
    covered = 0
    for _ in range(2000):
        _, (lo, hi) = window_mean([rng.gauss(100, 5) for _ in range(3)])
        covered += lo <= 100 <= hi
    assert 0.93 <= covered / 2000 <= 0.97


# --- the span's stop rules ------------------------------------------------------------------------------


def test_the_floor_is_four_turnovers_of_the_in_flight_set_per_window() -> None:
    assert span_floor_requests(16, 5) == 320
    assert span_floor_requests(1, 3) == 12


class _Fake:
    def __init__(self, service_s: float, tokens: int = 4) -> None:
        self.service_s, self.tokens = service_s, tokens
        self.in_flight = self.max_in_flight = 0

    async def send(self, index: int) -> RequestRecord:
        record = RequestRecord(str(index), send_time=perf_counter())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.service_s)
        self.in_flight -= 1
        record.end_time = perf_counter()
        record.chunk_times = [record.end_time]
        record.completion_tokens = self.tokens
        return record


def _sustained(fake: _Fake, **kwargs: float) -> object:
    return run_event_loop(asyncio.wait_for(run_sustained(fake.send, **kwargs), 15))


def test_a_span_ends_at_its_duration_when_the_count_is_not_reached() -> None:
    fake = _Fake(0.02)
    result = _sustained(fake, concurrency=3, min_duration_s=0.3, min_requests=10_000, max_duration_s=5)
    assert result.stopped_by == "duration" and fake.max_in_flight == 3
    assert result.span_end - result.start == pytest.approx(0.3)
    assert all(r.send_time < result.span_end for r in result.records)
    assert result.wall_s >= 0.3  # the last requests drained after the span


def test_a_span_ends_at_the_finished_request_count_when_that_comes_first() -> None:
    fake = _Fake(0.01)
    result = _sustained(fake, concurrency=2, min_duration_s=10, min_requests=20, max_duration_s=20)
    assert result.stopped_by == "requests"
    finished_in_span = [r for r in result.records if r.end_time <= result.span_end]
    assert len(finished_in_span) == 20
    assert len(result.records) <= 21  # the other slot's request drained, nothing started after
    assert all(r.send_time <= result.span_end for r in result.records)


def test_the_floor_holds_a_span_past_its_duration_and_its_count() -> None:
    fake = _Fake(0.02)
    result = _sustained(fake, concurrency=2, min_duration_s=0.05, min_requests=1, max_duration_s=5,
                        floor_requests=30)
    assert result.stopped_by == "floor"
    finished_in_span = [r for r in result.records if r.end_time <= result.span_end]
    assert len(finished_in_span) == 30 and result.span_end - result.start > 0.25


def test_a_span_past_its_floor_ends_at_its_duration_not_at_the_floor() -> None:
    fake = _Fake(0.01)
    result = _sustained(fake, concurrency=2, min_duration_s=0.3, min_requests=10_000, max_duration_s=5,
                        floor_requests=4)
    assert result.stopped_by == "duration"
    assert result.span_end - result.start == pytest.approx(0.3)


@pytest.mark.parametrize("delay_s, concurrency, min_duration_s, min_requests, floor", [
    (0.02, 2, 30, 10_000, None),  # the span's duration is never reached
    (0.05, 1, 0.05, 1, 1000),  # the span is short of its floor
], ids=["duration", "floor"])
def test_max_duration_caps_the_span(delay_s, concurrency, min_duration_s, min_requests, floor) -> None:
    fake = _Fake(delay_s)
    extra = {"floor_requests": floor} if floor is not None else {}
    result = _sustained(fake, concurrency=concurrency, min_duration_s=min_duration_s, min_requests=min_requests,
                        max_duration_s=0.2, **extra)
    assert result.stopped_by == "max_duration"
    assert result.span_end - result.start == pytest.approx(0.2)
    assert all(r.send_time < result.span_end for r in result.records)


def test_a_sustained_run_measured_in_windows_gets_a_tight_ci() -> None:
    fake = _Fake(0.01, tokens=8)
    result = _sustained(fake, concurrency=4, min_duration_s=0.6, min_requests=10_000, max_duration_s=5)
    windows = split_windows(result.records, result.start, result.span_end, 3)
    rate, (lo, hi) = window_mean([w.output_tok_s for w in windows])
    assert lo <= rate <= hi
    assert rate == pytest.approx(4 * 8 / 0.01, rel=0.5)  # about concurrency x tokens / service time


@pytest.mark.parametrize("kwargs", [{"concurrency": 0}, {"min_duration_s": 0}, {"min_requests": 0},
                                    {"max_duration_s": 0}])
def test_run_sustained_rejects_unbounded_or_empty_runs(kwargs: dict[str, float]) -> None:
    args = {"concurrency": 1, "min_duration_s": 1.0, "min_requests": 1, "max_duration_s": 1.0, **kwargs}
    with pytest.raises(ValueError):
        _sustained(_Fake(0.0), **args)


# --- settings ------------------------------------------------------------------------------------------


def test_settings_default_to_the_issue_sizes_and_keep_throughput_requests() -> None:
    s = BenchSettings()
    assert (s.throughput_min_duration_s, s.throughput_requests, s.throughput_windows) == (10.0, 200, 5)
    assert build_settings({"throughput_requests": 32}, {}, "grid").throughput_requests == 32


def test_fewer_than_three_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="throughput_windows"):
        build_settings({"throughput_windows": 2}, {}, "grid")


# --- the warm-up inside the loop ----------------------------------------------------------------------


def test_the_warm_up_is_the_loops_first_completions_and_the_loop_does_not_drain_after_it() -> None:
    fake = _Fake(0.02)
    result = _sustained(fake, concurrency=4, min_duration_s=0.2, min_requests=10_000, max_duration_s=5,
                        warmup_requests=4)
    assert len(result.warmup_records) == 4
    assert all(r.end_time <= result.span_start for r in result.warmup_records)
    assert all(r.end_time > result.span_start - 0.001 for r in result.records)
    # the slots freed by the warm-up were refilled at once: requests were in flight when the span began
    assert any(r.send_time < result.span_start for r in result.records)
    assert result.span_end - result.span_start == pytest.approx(0.2)
    assert fake.max_in_flight == 4


def test_the_span_rules_count_only_requests_after_the_warm_up() -> None:
    fake = _Fake(0.01)
    result = _sustained(fake, concurrency=2, min_duration_s=10, min_requests=10, max_duration_s=20,
                        warmup_requests=6)
    assert result.stopped_by == "requests"
    assert len([r for r in result.records if r.end_time <= result.span_end]) == 10


# --- TTFT under load: the median's CI over windows -----------------------------------------------------


def test_by_window_groups_requests_by_a_moment_clamped_into_the_span() -> None:
    early, mid, late = _streamed(0.0, -0.5, 1.0, 4), _streamed(0.0, 1.5, 2.0, 4), _streamed(0.0, 5.0, 6.0, 4)
    failed = _streamed(0.0, 1.5, 2.0, 4)
    failed.error = RequestError("timeout", "x")
    groups = by_window([early, mid, late, failed], 0.0, 3.0, 3, lambda r: r.first_token_time)
    assert groups == [[early], [mid], [late]]


def test_batch_median_ci_is_a_t_interval_of_window_medians_around_the_pooled_median() -> None:
    groups = [[20.0, 21.0, 22.0], [21.0, 22.0, 23.0], [22.0, 23.0, 24.0]]  # window medians 21, 22, 23
    half = t_quantile(0.975, 2) * 1.0 / 3 ** 0.5
    assert batch_median_ci(22.0, groups, (21.8, 22.2)) == pytest.approx((22 - half, 22 + half))


def test_batch_median_ci_keeps_a_wider_bootstrap_and_falls_back_to_it() -> None:
    groups = [[10.0], [10.2], [9.8]]
    assert batch_median_ci(10.0, groups, (5.0, 15.0)) == (5.0, 15.0)
    assert batch_median_ci(10.0, [[10.0, 11.0], []], (9.0, 11.0)) == (9.0, 11.0)
    assert batch_median_ci(10.0, [[], []], None) is None
    assert batch_median_ci(1.0, [[1.0], [50.0], [1.0]], None)[0] == 0.0  # clipped at zero


# --- the server cross-check of the benchmark ------------------------------------------------------------


def _throughput_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "test_throughput.py"
    spec = importlib.util.spec_from_file_location("_throughput_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("server_tokens", "validity", "warned"),
                         [(640.0, "valid", False), (660.0, "valid", True), (700.0, "invalid", True)])
def test_output_tok_s_is_invalid_when_the_servers_token_count_disagrees_by_over_5_percent(
        server_tokens: float, validity: str, warned: bool) -> None:
    from types import SimpleNamespace

    from pytest_vllmgrid.bench import MetricsWindow
    from pytest_vllmgrid.measurement import HIGHER, Measurement

    bench = _throughput_benchmark()
    m = Measurement(method="t")
    out = m.add_value("output_tok_s", 100.0, "tok/s", HIGHER, ci=(90.0, 110.0), n=5)
    records = [_streamed(0.0, 0.1, 1.0, 32) for _ in range(20)]  # 640 tokens
    bench._server_cross_check(m, out, MetricsWindow(SimpleNamespace(generation_tokens=server_tokens)), records, 2.0)
    assert out.validity == validity
    assert bool(m.warnings) == warned
    server = m.metrics["server_output_tok_s"]
    assert server.value == server_tokens / 2.0 and server.exact
    assert m.info["server_check"]["client_completion_tokens"] == 640


def test_without_a_server_counter_output_tok_s_stands_unchecked_with_a_warning() -> None:
    from pytest_vllmgrid.bench import MetricsWindow
    from pytest_vllmgrid.measurement import HIGHER, Measurement

    bench = _throughput_benchmark()
    m = Measurement(method="t")
    out = m.add_value("output_tok_s", 100.0, "tok/s", HIGHER, ci=(90.0, 110.0), n=5)
    bench._server_cross_check(m, out, MetricsWindow(None, "connection refused"), [], 2.0)
    assert out.validity == "valid" and "server_output_tok_s" not in m.metrics
    assert "not cross-checked" in m.warnings[0]
