"""The capacity search (pytest_vllmgrid/capacity_search.py): bracketing and bisection against a synthetic latency
model, the SLO's validation, and probes judged on real streamed requests to a fault server with queueing slots."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from fault_server import FaultServerProcess

from pytest_vllmgrid.bench import MetricsWindow
from pytest_vllmgrid.capacity_search import (Probe, Search, capacity_interval, capacity_measurement, judge_probe,
                                             rate_probe, search_capacity, concurrency_probe)
from pytest_vllmgrid.client import ChatClient
from pytest_vllmgrid.judge import assess, slo_outcome
from pytest_vllmgrid.load import run_event_loop
from pytest_vllmgrid.results.models import TestResult, Verdict
from pytest_vllmgrid.thresholds import Slo, ThresholdError, load_thresholds

SLO = Slo(ttft_p95_ms=200, itl_p95_ms=50)


class LatencyModel:
    """A server whose SLO verdict depends on the load alone: meets below `capacity` x (1 - band), misses above
    `capacity` x (1 + band), inconclusive in between (the CI straddles the bound there)."""

    def __init__(self, capacity: float, band: float = 0.0) -> None:
        self.capacity, self.band = capacity, band
        self.loads: list[float] = []

    async def probe(self, load: float) -> Probe:
        self.loads.append(load)
        if load <= self.capacity * (1 - self.band):
            return Probe(load, "meets", ["ok"])
        if load >= self.capacity * (1 + self.band):
            return Probe(load, "misses", ["p95 TTFT FAILED"])
        return Probe(load, "inconclusive", ["straddles"])


def search(model: LatencyModel, **overrides) -> Search:
    options = dict(start=2.0, lower=0.25, upper=512.0, growth=2.0, tolerance_pct=10.0, max_probes=20, budget_s=60.0)
    options.update(overrides)
    return asyncio.run(search_capacity(model.probe, **options))


@pytest.mark.parametrize("capacity", [0.7, 3.1, 23.0, 300.0])
def test_the_search_brackets_the_capacity_within_the_tolerance(capacity: float) -> None:
    model = LatencyModel(capacity)
    result = search(model)
    assert result.stopped_by == "tolerance"
    assert result.lo is not None and result.hi is not None
    assert result.lo.load <= capacity < result.hi.load <= result.lo.load * 1.1


def test_bracketing_doubles_from_the_start_then_bisects_geometrically() -> None:
    model = LatencyModel(23.0)
    search(model, start=4.0)
    assert model.loads[:4] == [4.0, 8.0, 16.0, 32.0]
    assert model.loads[4] == pytest.approx((16 * 32) ** 0.5)


def test_a_start_above_capacity_halves_until_a_load_meets() -> None:
    model = LatencyModel(3.0)
    result = search(model, start=64.0)
    assert model.loads[:6] == [64.0, 32.0, 16.0, 8.0, 4.0, 2.0]
    assert result.lo is not None and result.lo.load <= 3.0 < result.hi.load


def test_inconclusive_probes_narrow_the_search_but_never_end_the_interval() -> None:
    model = LatencyModel(20.0, band=0.15)  # 17..23 req/s undecided
    result = search(model, start=4.0, tolerance_pct=5.0)
    assert any(p.outcome == "inconclusive" for p in result.probes)
    assert result.lo.load <= 17.0 and result.hi.load >= 23.0
    assert result.lo.outcome == "meets" and result.hi.outcome == "misses"


def test_a_search_that_never_misses_is_censored_at_the_upper_limit() -> None:
    result = search(LatencyModel(10_000.0), upper=64.0)
    assert result.stopped_by == "upper_limit" and result.hi is None and result.lo.load == 64.0
    m = capacity_measurement(result, SLO, name="capacity_rate", unit="req/s", what="Poisson rate", method="x")
    metric = m.metric("capacity_rate")
    assert metric.value == 64.0 and metric.ci is None
    assert metric.validity == "inconclusive" and "at least 64" in metric.validity_reason


def test_a_search_that_never_meets_stops_at_the_lower_limit_without_a_capacity() -> None:
    result = search(LatencyModel(0.1), lower=0.5)
    assert result.stopped_by == "lower_limit" and result.lo is None
    metric = capacity_measurement(result, SLO, name="capacity_rate", unit="req/s", what="rate",
                                  method="x").metric("capacity_rate")
    assert metric.value is None and metric.validity == "inconclusive" and "below it" in metric.validity_reason


def test_the_probe_count_and_the_time_budget_bound_a_search() -> None:
    assert len(search(LatencyModel(23.0), max_probes=3).probes) == 3
    ticks = itertools.count(0.0, 10.0)  # each clock read is 10 s later
    result = search(LatencyModel(23.0), budget_s=35.0, clock=lambda: next(ticks))
    assert result.stopped_by == "budget_s" and len(result.probes) < 6


def test_a_concurrency_search_finds_the_exact_integer_capacity() -> None:
    model = LatencyModel(13.0)
    result = search(model, start=1, lower=1, upper=256, integer=True)
    assert result.stopped_by == "tolerance"
    assert (result.lo.load, result.hi.load) == (13, 14)
    assert all(float(load).is_integer() for load in model.loads)


def test_the_capacity_interval_runs_from_the_highest_meet_to_the_lowest_miss() -> None:
    result = search(LatencyModel(23.0))
    assert capacity_interval(result) == (result.lo.load, result.hi.load)
    m = capacity_measurement(result, SLO, name="capacity_rate", unit="req/s", what="rate", method="x")
    assert m.metric("capacity_rate").ci == (result.lo.load, result.hi.load)
    assert [p["load"] for p in m.info["probes"]] == [p.load for p in result.probes]


def test_slo_outcome_misses_on_any_fail_and_meets_only_when_all_pass_on_time() -> None:
    def verdict(status: str) -> Verdict:
        return Verdict(metric="capacity.ttft_ms", config="c", passed=None, status=status, message=status)
    assert slo_outcome([verdict("pass"), verdict("fail")])[0] == "misses"
    assert slo_outcome([verdict("pass"), verdict("inconclusive")])[0] == "inconclusive"
    assert slo_outcome([verdict("pass"), verdict("invalid")])[0] == "inconclusive"
    assert slo_outcome([verdict("pass"), verdict("pass")])[0] == "meets"
    assert slo_outcome([verdict("pass")], "the load generator sent late") == (
        "inconclusive", ["the load generator sent late"])


@pytest.mark.parametrize(("text", "expected"), [
    ("slo:\n  ttft_p95_msx: 300\n", "field 'slo.ttft_p95_msx': unknown SLO field (did you mean ttft_p95_ms"),
    ("slo:\n  ttft_p95_ms: -5\n", "field 'slo.ttft_p95_ms' = -5: Input should be greater than 0"),
    ("slo:\n  max_error_rate_pct: 1\n", "field 'slo': give ttft_p95_ms, itl_p95_ms or both"),
    ("slo: fast\n", "field 'slo' = 'fast': expected a mapping"),
])
def test_a_wrong_slo_section_is_one_line_naming_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_text(text)
    with pytest.raises(ThresholdError) as info:
        load_thresholds(path)
    message = str(info.value)
    assert message.startswith(f"thresholds file {path}: ") and expected in message and "\n" not in message


def test_an_slo_section_loads_as_bounds_on_p95_ttft_itl_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_text("slo:\n  ttft_p95_ms: 300\n  itl_p95_ms: 40\n  max_error_rate_pct: 0.5\n")
    slo = load_thresholds(path).spec.slo
    bounds = slo.bounds()
    assert (bounds["ttft_ms"].stat, bounds["ttft_ms"].max) == ("p95", 300)
    assert (bounds["itl_ms"].stat, bounds["itl_ms"].max, bounds["error_rate_pct"].max) == ("p95", 40, 0.5)
    assert slo.text() == "p95 TTFT <= 300 ms, p95 ITL <= 40 ms, errors <= 0.5%"


# --- probes on real streamed requests: a fault server generating one completion at a time --------------------

async def _probe(base_url: str, rate: float, slo: Slo) -> Probe:
    async with ChatClient(base_url, "fault-model", timeout=10.0) as client:
        def send(index: int):
            return client.chat([{"role": "user", "content": f"hello {index}"}], max_tokens=8)
        run = await rate_probe(send, rate, arrival="poisson", burstiness=1.0, warmup_s=0.3, window_s=1.5, seed=1)
        return judge_probe(rate, run, MetricsWindow(), slo, 3, "c", "probe")


# 1 slot x (100 ms TTFT + 7 x 1 ms) = 9.3 req/s at most. The margins are wide and the SLO is TTFT only: on a busy
# 2-core machine a sleeping server wakes late and its 1 ms token gaps read tens of ms.
SLOW = {"tokens": 8, "ttft_ms": 100, "itl_ms": 1, "slots": 1}
SLOW_SLO = Slo(ttft_p95_ms=1000)


def test_a_probe_below_a_queueing_servers_capacity_meets_and_one_above_misses() -> None:
    with FaultServerProcess("ok", **SLOW) as server:
        low = run_event_loop(_probe(server.base_url, 4.0, SLOW_SLO), use_uvloop=False)
        high = run_event_loop(_probe(server.base_url, 40.0, SLOW_SLO), use_uvloop=False)
    assert low.outcome == "meets", low.reasons
    assert high.outcome == "misses", high.reasons  # 4x its capacity: the queue grows through the window
    assert any("ttft_ms p95" in reason and "FAILED" in reason for reason in high.reasons)
    assert low.measurement.metric("error_rate_pct").value == 0
    assert 2.0 < low.measurement.metric("request_rate").value < 6.0


def test_a_rate_search_on_the_queueing_server_lands_under_its_service_limit() -> None:
    with FaultServerProcess("ok", **SLOW) as server:
        async def main() -> Search:
            return await search_capacity(lambda rate: _probe(server.base_url, rate, SLOW_SLO), start=4.0, lower=1.0,
                                         upper=256.0, growth=2.0, tolerance_pct=30.0, max_probes=6, budget_s=60)
        result = run_event_loop(main(), use_uvloop=False)
    assert result.lo is not None and result.hi is not None, [p.summary() for p in result.probes]
    # A 1.8 s probe over the service limit mu only builds a backlog of (rate - mu) x 1.8 s requests, so a load up to
    # about mu x (1 + TTFT bound / probe length) = 9.3 x (1 + 1 / 1.8) ~ 14.5 req/s can still pass (seen: 11.3)
    assert 1.0 <= result.lo.load < 14.5 and result.hi.load > result.lo.load
    m = capacity_measurement(result, SLOW_SLO, name="capacity_rate", unit="req/s", what="Poisson rate", method="m")
    test = TestResult(measurement=m)
    assess(test)
    assert m.metric("capacity_rate").validity == "valid"
    assert m.metric("goodput_req_s").value > 0 and m.samples["ttft_ms"]


def test_a_concurrency_probe_waits_in_the_queue_beyond_the_servers_slots() -> None:
    slo = Slo(ttft_p95_ms=300)
    with FaultServerProcess("ok", **{**SLOW, "slots": 2}) as server:
        async def main(concurrency: int) -> Probe:
            async with ChatClient(server.base_url, "fault-model", timeout=10.0) as client:
                def send(index: int):
                    return client.chat([{"role": "user", "content": "hi"}], max_tokens=8)
                run = await concurrency_probe(send, concurrency, window_s=1.0)
                return judge_probe(concurrency, run, MetricsWindow(), slo, 3, "c", "probe")
        two = run_event_loop(main(2), use_uvloop=False)
        twelve = run_event_loop(main(12), use_uvloop=False)
    assert two.outcome == "meets", two.reasons
    assert twelve.outcome == "misses", twelve.reasons  # 12 in flight on 2 slots: ~5 services queued before each
