"""Capacity in the report (pytest_vllmgrid/report/capacity.py): operating points, the Pareto front and plot, and the
recommendation's load sentence, from stored results built here."""

from __future__ import annotations

from pytest_vllmgrid.report.capacity import capacity_sentence, operating_points, pareto_front, pareto_png
from pytest_vllmgrid.results import ConfigResult, Measurement, Metric, TestResult
from pytest_vllmgrid.results.models import DeploymentRecord


def capacity_result(name: str, probes: list[tuple[float, str, float, float]], lo: float | None,
                    gpus: int | None = None) -> ConfigResult:
    """A config whose capacity[poisson] search probed (load, outcome, output tok/s, p95 TTFT ms) and ended at lo."""
    m = Measurement(method="capacity")
    m.add_value("capacity_rate", lo, "req/s", "higher", headline=True, ci=(lo, lo * 1.4) if lo else None)
    m.info.update(bracket={"lo": lo, "hi": None},
                  probes=[{"load": load, "outcome": outcome, "output_tok_s": tok_s, "ttft_ms_p95": ttft,
                           "reasons": []} for load, outcome, tok_s, ttft in probes])
    deployment = DeploymentRecord(status="success", gpu_uuids=[f"GPU-{i}" for i in range(gpus)] if gpus else None)
    return ConfigResult(config_name=name, timestamp="t", status="complete", deployment=deployment,
                        tests={"capacity[poisson]": TestResult(status="passed", measurement=m)})


def value(point: float, low: float, high: float, validity: str = "valid") -> Metric:
    return Metric(kind="value", value=point, ci_low=low, ci_high=high, unit="req/s", validity=validity)


RESULTS = {
    "baseline": capacity_result("baseline", [(4, "meets", 100, 50), (8, "meets", 200, 90), (16, "misses", 240, 900)], 8),
    "wide": capacity_result("wide", [(8, "meets", 200, 40), (16, "meets", 400, 80), (32, "misses", 420, 700)], 16),
}


def test_operating_points_mark_where_each_search_ended() -> None:
    points = operating_points(RESULTS)
    assert len(points) == 6
    assert [(p.config, p.load) for p in points if p.at_capacity] == [("baseline", 8), ("wide", 16)]
    assert all(p.gpus is None and p.tok_s_per_gpu is None for p in points)


def test_the_pareto_front_keeps_only_points_no_other_beats_on_both_axes() -> None:
    capacity = [p for p in operating_points(RESULTS) if p.at_capacity]
    assert [p.config for p in pareto_front(capacity)] == ["wide"]  # more tokens/s at a lower p95 TTFT
    meeting = [p for p in operating_points(RESULTS) if p.outcome == "meets"]
    assert [(p.config, p.load) for p in pareto_front(meeting)] == [("wide", 8), ("wide", 16)]


def test_the_pareto_plot_is_drawn_with_a_per_gpu_panel_only_where_gpus_are_known() -> None:
    without = pareto_png(RESULTS)
    with_gpus = pareto_png({name: capacity_result(name, [(8, "meets", 200, 40)], 8, gpus=2) for name in ("a", "b")})
    assert without is not None and without.startswith(b"\x89PNG")
    assert with_gpus is not None and len(with_gpus) > len(without) * 1.3  # two panels
    assert pareto_png({"x": capacity_result("x", [(8, "misses", 10, 900)], None)}) is None


def test_the_load_sentence_names_the_config_serving_more_within_the_slo() -> None:
    metrics = {"baseline": {"capacity[poisson].capacity_rate": value(10, 10, 12)},
               "wide": {"capacity[poisson].capacity_rate": value(18, 18, 22)}}
    sentence = capacity_sentence(metrics, "baseline")
    assert sentence.startswith(" wide serves 1.8x the load of baseline within the SLO (18.0 vs 10.0 req/s, Poisson")
    assert "x1.50–2.20" in sentence


def test_the_load_sentence_claims_nothing_when_the_capacity_intervals_overlap() -> None:
    metrics = {"base": {"capacity[poisson].capacity_rate": value(10, 10, 16)},
               "wide": {"capacity[poisson].capacity_rate": value(12, 12, 16)}}
    assert capacity_sentence(metrics, "base").startswith(
        " Within the SLO no config serves significantly more load than baseline base (best: wide")


def test_the_load_sentence_falls_back_to_a_search_the_baseline_decided() -> None:
    metrics = {"baseline": {"capacity[poisson].capacity_rate": value(10, 10, 12, "inconclusive"),
                            "capacity[concurrency].capacity_concurrency": value(4, 4, 5)},
               "wide": {"capacity[concurrency].capacity_concurrency": value(16, 16, 24)}}
    assert "wide serves 4.0x the load of baseline within the SLO (16.0 vs 4.00 concurrent requests, closed loop" \
        in capacity_sentence(metrics, "baseline")
    assert capacity_sentence(metrics, "missing") == ""
