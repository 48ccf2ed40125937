"""The judge: a figure is valid, inconclusive or invalid, and a bound passes only on its whole 95 % CI."""

from __future__ import annotations

import numpy as np

from pytest_vllmgrid.judge import assess, failures, goal_met, judge_bound, unsure
from pytest_vllmgrid.results import ConfigResult, Measurement, TestResult
from pytest_vllmgrid.thresholds import Bound


def sample(median: float, n: int = 30, cv: float = 0.1, seed: int = 0) -> list[float]:
    return list(median * np.exp(np.random.default_rng(seed).normal(0.0, cv, n)))


def measured(values: list[float], name: str = "ttft_ms", **info) -> TestResult:
    m = Measurement(method="synthetic", info=info)
    m.add_sample(name, values, "ms", "lower", headline=True)
    m.add_sample("e2e_ms", [v * 2 for v in values], "ms", "lower")
    m.add_value("errors", 0, "requests", "lower", n=len(values))
    return TestResult(measurement=m)


def judge(test: TestResult, bound: Bound, name: str = "ttft_ms", base: TestResult | None = None):
    assess(test)
    m = test.measurement
    bm = base.measurement if base else None
    return judge_bound(f"ttft.{name}", bound, m.metric(name), bm.metric(name) if bm else None, "cfg", False,
                       m.samples.get(name), bm.samples.get(name) if bm else None)


def test_a_bound_the_whole_interval_clears_passes() -> None:
    [v] = judge(measured(sample(50)), Bound(max=80))
    assert v.status == "pass" and v.passed is True and v.ci_high <= 80


def test_a_bound_the_whole_interval_breaks_fails() -> None:
    [v] = judge(measured(sample(100)), Bound(max=80))
    assert v.status == "fail" and v.passed is False and "FAILED" in v.message


def test_a_point_under_the_bound_with_an_interval_across_it_is_inconclusive() -> None:
    values = sample(78, n=8, cv=0.3, seed=3)
    [v] = judge(measured(values), Bound(max=80))
    assert v.ci_low < 80 < v.ci_high
    assert v.status == "inconclusive" and v.passed is None and "straddles" in v.message


def test_a_p95_bound_is_judged_on_a_bootstrap_of_the_raw_samples() -> None:
    [v] = judge(measured(sample(50)), Bound(stat="p95", max=500))
    assert v.status == "pass" and v.ci_low is not None and v.ci_low < v.value <= v.ci_high


def test_burst_delivered_streams_make_client_timings_invalid_and_never_pass() -> None:
    test = measured(sample(50), server_check={"burst_responses": 20})
    [v] = judge(test, Bound(max=80))
    metric = test.measurement.metric("ttft_ms")
    assert metric.validity == "invalid" and "burst" in metric.validity_reason
    assert v.status == "invalid" and v.passed is None
    assert test.measurement.metric("errors").validity == "valid"  # a count is not a client timing
    assert any("INVALID" in r for r in unsure(test))


def test_too_many_failed_requests_make_latencies_invalid() -> None:
    test = measured(sample(50))
    test.measurement.add_value("errors", 5, "requests", "lower", n=30)
    assess(test)
    assert test.measurement.metric("ttft_ms").validity == "invalid"
    assert "5 of 30 requests failed" in test.measurement.metric("ttft_ms").validity_reason


def test_too_few_samples_are_invalid() -> None:
    test = measured([10.0, 11.0])
    assess(test)
    assert test.measurement.metric("ttft_ms").validity == "invalid"


def test_a_percentage_with_a_degenerate_interval_is_inconclusive_not_printed_as_a_figure() -> None:
    m = Measurement(method="synthetic")
    m.add_value("degradation_pct", 30.6, "%", "lower", headline=True, ci=(6.35, 537.0))
    test = TestResult(measurement=m)
    assess(test)
    assert m.metric("degradation_pct").validity == "inconclusive"
    assert unsure(test) and "INCONCLUSIVE" in unsure(test)[0]


def test_a_tight_interval_around_zero_percent_is_valid() -> None:
    m = Measurement(method="synthetic")
    m.add_value("degradation_pct", 0.5, "%", "lower", ci=(-1.0, 2.0))
    assess(TestResult(measurement=m))
    assert m.metric("degradation_pct").validity == "valid"


def test_an_exact_count_is_decided_on_its_value() -> None:
    test = measured(sample(50))
    assess(test)
    [v] = judge_bound("ttft.errors", Bound(max=0), test.measurement.metric("errors"), None, "cfg", False)
    assert v.status == "pass"


def test_a_rate_without_an_interval_is_inconclusive() -> None:
    m = Measurement(method="synthetic")
    metric = m.add_value("output_tok_s", 400.0, "tok/s", "higher", headline=True)
    [v] = judge_bound("throughput.output_tok_s", Bound(min=50), metric, None, "cfg", False)
    assert v.status == "inconclusive" and "no confidence interval" in v.message


def test_a_relative_bound_is_judged_on_the_ratio_interval() -> None:
    faster, base = measured(sample(20, seed=1)), measured(sample(50, seed=2))
    [v] = judge(faster, Bound(max_vs_baseline_pct=-30), base=base)
    assert v.status == "pass" and "ratio to baseline" in v.message
    same = measured(sample(50, seed=4))
    [v] = judge(same, Bound(max_vs_baseline_pct=-30), base=base)
    assert v.status == "fail"


def test_an_invalid_baseline_makes_a_relative_verdict_invalid() -> None:
    base = measured(sample(50, seed=2), server_check={"burst_responses": 30})
    assess(base)
    [v] = judge(measured(sample(20, seed=1)), Bound(max_vs_baseline_pct=-30), base=base)
    assert v.status == "invalid" and "baseline" in v.message


def test_only_failed_verdicts_fail_a_test_and_the_goal_needs_passes() -> None:
    test = measured(sample(78, n=8, cv=0.3, seed=3))
    test.thresholds = judge(test, Bound(max=80))
    assert failures(test) == [] and unsure(test)
    result = ConfigResult(config_name="cfg", timestamp="t", tests={"ttft": test})
    assert goal_met(["ttft.ttft_ms"], result) is False


NOT_CONCLUSIVE = """
from pytest_vllmgrid.measurement import Measurement

def test_two_samples(vllm_bench):
    m = Measurement(method="two requests only")
    m.add_sample("ttft_ms", [1.0, 2.0], "ms", "lower", headline=True)
    vllm_bench.finish(m)
    vllm_bench.check_thresholds()
"""


def run_not_conclusive(pytester, write_grid, *args: str):
    from conftest import fake_grid

    grid = write_grid(fake_grid([{"name": "base"}]))
    pytester.makepyfile(test_nc=NOT_CONCLUSIVE)
    return pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider",
                                         "-rx", *args)


def test_a_benchmark_that_cannot_decide_is_an_xfail_with_its_reason_never_a_pass(pytester, write_grid):
    import json

    result = run_not_conclusive(pytester, write_grid)
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["*base: done in *: two_samples ?*", "*1.50 ms INVALID*"])
    stored = json.loads((pytester.path / "out" / "base.json").read_text())["tests"]["two_samples"]
    assert stored["status"] == "inconclusive" and "too few samples" in stored["message"]
    assert stored["measurement"]["metrics"]["ttft_ms"]["validity"] == "invalid"
    assert "base / two_samples: inconclusive" in (pytester.path / "out" / "report.md").read_text()


def test_the_ci_policy_turns_a_benchmark_that_cannot_decide_into_a_failure(pytester, write_grid):
    result = run_not_conclusive(pytester, write_grid, "--vllm-inconclusive", "fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*not conclusive: base: ttft_ms: INVALID (too few samples (n=2 < 3))*"])
