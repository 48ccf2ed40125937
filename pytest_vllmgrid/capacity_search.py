"""Capacity under an SLO: the highest load (an open-loop request rate, or a closed-loop concurrency) whose
sustained probe meets the thresholds file's `slo:`, found by bracketing then bisection.

A *probe* holds one load for a warm-up (sent, not judged) and then a judged span, and is judged with the
verdict rules (judge.py): its p95 TTFT and p95 ITL bounds on the 95 % CI of the statistic (a bootstrap of the
probe's raw samples), its error rate on the observed fraction; invalid figures (bursts, > 5 % failures) give
invalid verdicts. A probe *meets* the SLO only when every bound passed and (rate probes) the load generator
sent on time, *misses* when a bound's CI is wholly on the wrong side, and is *inconclusive* otherwise
(`judge.slo_outcome`).

The search (`search_capacity`, plain logic, no I/O of its own): from the start load, multiply by `growth`
while probes meet, divide while none has met, until the highest meeting load (lo) has a proven miss (hi) above
it; then bisect (geometric midpoint for rates, integer midpoint for concurrency) between lo and the lowest load
above it that did not meet, until the two are within `tolerance_pct` (concurrency: adjacent) or the probe
count or time budget is spent. An inconclusive probe narrows the search from above but proves nothing, so it
never becomes an end of the interval. Capacity = lo: the highest load shown to meet the SLO; its interval runs
from lo to hi, the lowest load shown to miss it (loads in between were not decided either way). The rate the
server completed at lo (request_rate, a t 95 % CI over the probe's windows) is kept beside it: a short Poisson
window delivers its nominal rate only approximately.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pytest_vllmgrid.bench import WILSON_METHOD, MetricsWindow, add_request_samples, percent_with_ci
from pytest_vllmgrid.client import RequestRecord
from pytest_vllmgrid.judge import assess, judge_bound, slo_outcome
from pytest_vllmgrid.load import (WINDOW_METHOD, Send, run_rate, run_sustained, split_windows, window_mean)
from pytest_vllmgrid.measurement import HIGHER, LOWER, Measurement
from pytest_vllmgrid.results.models import JsonObject, TestResult, json_object
from pytest_vllmgrid.stats import statistic_named
from pytest_vllmgrid.thresholds import Slo

MAX_LAG_MS = 50.0  # a rate probe whose sends started later than planned by more than this (p95) did not offer its rate
SEARCHES = ("poisson", "gamma", "concurrency")  # the capacity benchmark's tests: two arrival processes, a closed loop
UNBOUNDED_REQUESTS = 10**9  # a concurrency probe's span ends by time, never by count
MIN_JUDGED_REQUESTS = 20  # a rate probe's span is lengthened (up to WINDOW_STRETCH x) to send about this many
WINDOW_STRETCH = 4.0


@dataclass
class ProbeRun:
    """What one load probe sent: every record, the judged ones, and its judged span (perf_counter seconds)."""

    records: list[RequestRecord]  # every request of the probe (the rates count what streamed in the span)
    judged: list[RequestRecord]  # the requests sent after the warm-up (their latencies are judged)
    span_start: float
    span_end: float
    wall_s: float
    load_problem: str | None = None  # why the planned load was not delivered (a lagging load generator)


@dataclass
class Probe:
    """One load judged against the SLO."""

    load: float
    outcome: str  # meets | misses | inconclusive
    reasons: list[str]  # the verdicts (and problem) that decided it
    measurement: Measurement | None = None  # its figures (kept for the point the search ends on)
    wall_s: float = 0.0

    def summary(self) -> JsonObject:
        """Its figures for the record: load, outcome, reasons, p95 TTFT / ITL, rates, errors."""
        out: JsonObject = {"load": self.load, "outcome": self.outcome, "reasons": list(self.reasons),
                           "wall_s": round(self.wall_s, 3)}
        m = self.measurement
        if m is None:
            return out
        for name, stat in (("ttft_ms", "p95"), ("itl_ms", "p95"), ("request_rate", "value"),
                           ("output_tok_s", "value"), ("goodput_req_s", "value"), ("error_rate_pct", "value")):
            metric = m.metric(name)
            if metric is not None:
                out[f"{name}_{stat}" if stat != "value" else name] = metric.point(stat)
        out["requests"] = m.info.get("requests")
        out["lag_p95_ms"] = m.info.get("lag_p95_ms")
        return out


@dataclass
class Search:
    """A finished capacity search: its probes in order and what ended it."""

    probes: list[Probe]
    stopped_by: str  # tolerance | max_probes | budget_s | upper_limit | lower_limit
    wall_s: float

    @property
    def lo(self) -> Probe | None:
        """The highest load that met the SLO."""
        return highest_meeting(self.probes)

    @property
    def hi(self) -> Probe | None:
        """The lowest load that missed it (above lo, by construction of the search)."""
        return lowest_missing(self.probes)


def highest_meeting(probes: Sequence[Probe]) -> Probe | None:
    """The probe of the highest load that met the SLO, or None."""
    return max((p for p in probes if p.outcome == "meets"), key=lambda p: p.load, default=None)


def lowest_missing(probes: Sequence[Probe]) -> Probe | None:
    """The probe of the lowest load that missed the SLO, or None."""
    return min((p for p in probes if p.outcome == "misses"), key=lambda p: p.load, default=None)


async def search_capacity(probe: Callable[[float], Awaitable[Probe]], *, start: float, lower: float, upper: float,
                          growth: float, tolerance_pct: float, max_probes: int, budget_s: float,
                          integer: bool = False, clock: Callable[[], float] = time.monotonic) -> Search:
    """Bracket then bisect the highest load in [lower, upper] at which `probe(load)` meets the SLO (module doc);
    no probe starts once `max_probes` ran or `budget_s` has passed."""
    if not 0 < lower <= upper:
        raise ValueError(f"need 0 < lower <= upper, got [{lower}, {upper}]")
    if not growth > 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    probes: list[Probe] = []
    began = clock()

    def done(why: str) -> Search:
        return Search(probes, why, clock() - began)

    def spent() -> str | None:
        if len(probes) >= max_probes:
            return "max_probes"
        return "budget_s" if clock() - began >= budget_s else None

    def up(load: float) -> float:
        return min(upper, max(load + 1, round(load * growth))) if integer else min(upper, load * growth)

    def down(load: float) -> float:
        return max(lower, min(load - 1, math.floor(load / growth))) if integer else max(lower, load / growth)

    load = min(max(start, lower), upper)
    if integer:
        load = round(load)
    while True:  # bracketing
        if (why := spent()) is not None:
            return done(why)
        probes.append(await probe(load))
        lo, hi = highest_meeting(probes), lowest_missing(probes)
        if lo is not None and hi is not None:
            break
        if lo is None:  # nothing has met yet: lower the load
            lowest = min(p.load for p in probes)
            if lowest <= lower:
                return done("lower_limit")
            load = down(lowest)
        else:  # met, no miss yet: raise it
            highest = max(p.load for p in probes)
            if highest >= upper:
                return done("upper_limit")
            load = up(highest)
    while True:  # bisection between lo and the lowest load above it that did not meet
        lo = highest_meeting(probes)
        assert lo is not None
        ceiling = min(p.load for p in probes if p.outcome != "meets" and p.load > lo.load)
        if (ceiling - lo.load <= 1) if integer else (ceiling <= lo.load * (1 + tolerance_pct / 100)):
            return done("tolerance")
        if (why := spent()) is not None:
            return done(why)
        middle = (lo.load + ceiling) // 2 if integer else math.sqrt(lo.load * ceiling)
        probes.append(await probe(middle))


def judge_probe(load: float, run: ProbeRun, window: MetricsWindow, slo: Slo, windows: int, config: str,
                method: str) -> Probe:
    """A probe's measurement (latency samples of the judged requests, error rate, rates over `windows` equal
    windows of the span) judged against the SLO's bounds with the verdict rules."""
    m = Measurement(method=method)
    ok = add_request_samples(m, run.judged, window)
    m.add_sample("itl_ms", [gap * 1000 for r in ok for gap in r.itl], "ms", LOWER)
    failed = len(run.judged) - len(ok)
    m.add_value("error_rate_pct", failed / len(run.judged) * 100 if run.judged else None, "%", LOWER,
                n=len(run.judged), exact=True, method="failed / sent of the probe's judged requests (an observed "
                "fraction, judged as it stands)")

    def good(record: RequestRecord) -> bool:
        return meets_request_slo(record, slo)

    span = run.span_end - run.span_start
    parts = split_windows(run.records, run.span_start, run.span_end, windows, good=good)
    rate_method = f"{WINDOW_METHOD}; {windows} windows of {span / windows:.2f} s"
    for name, unit, rates, what in (
            ("request_rate", "req/s", [w.request_rate for w in parts], "request-equivalents completed"),
            ("output_tok_s", "tok/s", [w.output_tok_s for w in parts], "completion tokens (usage) streamed"),
            ("goodput_req_s", "req/s", [w.goodput_req_s for w in parts],
             "request-equivalents of requests within the SLO's TTFT and ITL bounds (their own TTFT and TPOT)")):
        value, ci = window_mean(rates)
        m.add_value(name, value, unit, HIGHER, ci=ci, n=windows, method=f"{what} per second: {rate_method}")
    goodput, ci = percent_with_ci(sum(good(r) for r in run.judged), len(run.judged))
    m.add_value("goodput_pct", goodput, "%", HIGHER, ci=ci, n=len(run.judged), method=WILSON_METHOD)
    if window.delta is not None:
        m.server = json_object(window.delta.to_dict())
    lags = [lag * 1000 for r in run.judged if (lag := r.scheduling_lag) is not None]
    m.info.update(load=load, requests=len(run.judged), span_s=span, wall_s=run.wall_s,
                  lag_p95_ms=float(statistic_named("p95")(lags)) if lags else None)
    test = TestResult(measurement=m)
    assess(test)
    verdicts = [v for name, bound in slo.bounds().items()
                for v in judge_bound(f"capacity.{name}", bound, m.metric(name), None, config, False,
                                     m.samples.get(name))]
    outcome, reasons = slo_outcome(verdicts, run.load_problem)
    return Probe(load=load, outcome=outcome, reasons=reasons, measurement=m, wall_s=run.wall_s)


def meets_request_slo(record: RequestRecord, slo: Slo) -> bool:
    """One successful request whose own TTFT and mean inter-token gap (TPOT) are within the SLO's bounds."""
    if not record.ok or record.ttft is None:
        return False
    if slo.ttft_p95_ms is not None and record.ttft * 1000 > slo.ttft_p95_ms:
        return False
    return slo.itl_p95_ms is None or record.tpot is None or record.tpot * 1000 <= slo.itl_p95_ms


async def rate_probe(send: Send, rate: float, *, arrival: str, burstiness: float, warmup_s: float,
                     window_s: float, seed: int) -> ProbeRun:
    """Send open-loop arrivals at `rate` req/s for `warmup_s` + a span of `window_s` (lengthened to plan
    MIN_JUDGED_REQUESTS at a low rate, at most WINDOW_STRETCH x); the requests planned after the warm-up are
    judged; in-flight requests then finish (nothing is cancelled, nothing starts later)."""
    window_s = min(max(window_s, MIN_JUDGED_REQUESTS / rate), WINDOW_STRETCH * window_s)
    total = warmup_s + window_s
    result = await run_rate(send, rate=rate, num_requests=math.ceil(rate * total * 3) + 10, max_duration_s=total,
                            arrival=arrival, seed=seed, burstiness=burstiness)
    start = min((r.planned_send_time for r in result.records if r.planned_send_time is not None),
                default=time.perf_counter())
    span_start = start + warmup_s
    judged = [r for r in result.records if r.planned_send_time is not None and r.planned_send_time >= span_start]
    lags = [lag * 1000 for r in judged if (lag := r.scheduling_lag) is not None]
    lag_p95 = float(statistic_named("p95")(lags)) if lags else 0.0
    problem = (f"the load generator sent late (p95 {lag_p95:.0f} ms after plan > {MAX_LAG_MS:g} ms): "
               f"{rate:.3g} req/s was not offered as planned") if lag_p95 > MAX_LAG_MS else None
    return ProbeRun(result.records, judged, span_start, start + total, result.wall_s, problem)


async def concurrency_probe(send: Send, concurrency: int, *, window_s: float) -> ProbeRun:
    """A closed loop at `concurrency`: its first `concurrency` completions a warm-up, then a span of
    `window_s` (load.run_sustained), whose requests are judged."""
    result = await run_sustained(send, concurrency=concurrency, warmup_requests=concurrency,
                                 min_duration_s=window_s, min_requests=UNBOUNDED_REQUESTS, max_duration_s=window_s)
    assert result.span_start is not None and result.span_end is not None
    return ProbeRun(result.records, result.records, result.span_start, result.span_end, result.wall_s)


def capacity_interval(search: Search) -> tuple[float, float] | None:
    """The capacity's interval: from lo, the highest load shown to meet the SLO, to hi, the lowest shown to miss
    it; None without both ends."""
    lo, hi = search.lo, search.hi
    return (lo.load, hi.load) if lo is not None and hi is not None else None


def capacity_measurement(search: Search, slo: Slo, *, name: str, unit: str, what: str, method: str) -> Measurement:
    """The search as one measurement: the capacity (`name`) with its interval (headline), the figures of the
    probe it ended on (goodput, rates, latencies at capacity), every probe's summary in `info`."""
    lo, hi = search.lo, search.hi
    m = Measurement(method=method)
    if lo is not None and lo.measurement is not None:
        m.metrics.update(lo.measurement.metrics)
        m.samples.update(lo.measurement.samples)
        m.server = lo.measurement.server
        m.info["server_check"] = lo.measurement.info.get("server_check")
    ci = capacity_interval(search)
    interval_method = "interval: from it to the lowest load shown to miss the SLO (loads between: undecided)"
    metric = m.add_value(name, lo.load if lo is not None else None, unit, HIGHER, headline=True, ci=ci,
                         n=len(search.probes), exact=False,
                         method=f"highest {what} meeting {slo.text()} over {len(search.probes)} probes "
                                f"(bracketing then bisection, stopped by {search.stopped_by}); {interval_method}")
    if lo is None:
        lowest = min(p.load for p in search.probes)
        metric.validity, metric.validity_reason = "inconclusive", (
            f"no probe met the SLO, down to {lowest:g} (stopped by {search.stopped_by}): capacity below it")
    elif hi is None:
        metric.validity, metric.validity_reason = "inconclusive", (
            f"no probe missed the SLO up to {max(p.load for p in search.probes):g} (stopped by "
            f"{search.stopped_by}): capacity at least {lo.load:g}, no upper end")
    m.info.update(slo=json_object(slo.model_dump()), slo_text=slo.text(), stopped_by=search.stopped_by,
                  search_wall_s=round(search.wall_s, 3), probes=[p.summary() for p in search.probes],
                  bracket={"lo": lo.load if lo else None, "hi": hi.load if hi else None})
    return m


def probe_seed(seed: int, index: int) -> int:
    """The arrival seed of a search's `index`-th probe: reproducible, different for each probe."""
    return seed * 1009 + index


def slo_from_settings(slo: Slo | None, ttft_ms: float, tpot_ms: float) -> tuple[Slo, str]:
    """The thresholds file's SLO, else one from the benchmark settings' slo_ttft_ms / slo_tpot_ms (the
    throughput goodput's) as p95 bounds; with where it came from."""
    if slo is not None:
        return slo, "the thresholds file's slo:"
    return Slo(ttft_p95_ms=ttft_ms, itl_p95_ms=tpot_ms), "benchmark settings slo_ttft_ms / slo_tpot_ms (no slo: in " \
        "the thresholds file)"
