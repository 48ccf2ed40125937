"""Tests of pytest_vllmgrid.stats: percentiles, bootstrap and ratio CIs, the regression judge."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vllmgrid.stats import (
    MIN_SAMPLES_FOR_SIGNIFICANCE,
    Summary,
    bootstrap_ci,
    compare,
    linear_slope,
    ratio_ci,
    statistic_named,
    summarize,
    trend_pct,
)

# The A/A and detection tests draw lognormal latencies with this log-sd (a coefficient of
# variation of about 20%, typical of one config's TTFT on a quiet server).
LATENCY_SIGMA = 0.2
# The mean's bootstrap runs close to its limit (about 3.5% one-sided where 2.5% is nominal), so
# it gets more trials: with 200 its estimate would wander past 5% about one seed in ten.
TRIALS = {"p50": 300, "mean": 1000}


def test_summary_percentiles_match_hand_computed_linear_interpolation() -> None:
    summary = summarize([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    # numpy "linear": position (n - 1) * q = 9q, interpolated between neighbours.
    assert summary.n == 10
    assert summary.p50 == pytest.approx(5.5)
    assert summary.p90 == pytest.approx(9.1)
    assert summary.p95 == pytest.approx(9.55)
    assert summary.p99 == pytest.approx(9.91)
    assert summary.mean == pytest.approx(5.5)
    assert summary.stdev == pytest.approx(math.sqrt(55 / 6))  # ddof=1
    assert (summary.min, summary.max) == (1, 10)


def test_summary_method_names_the_bootstrap_and_percentile_method() -> None:
    method = summarize([1.0, 2.0, 3.0], n_resamples=500, seed=7).method
    assert "bootstrap percentile" in method
    assert "500 resamples" in method
    assert "seed 7" in method
    assert "'linear'" in method


def test_summary_of_empty_sample_is_all_none_but_n() -> None:
    summary = summarize([])
    assert summary.n == 0
    values = [v for k, v in summary.to_dict().items() if k not in ("n", "method")]
    assert values and all(v is None for v in values)


def test_summary_of_one_value_has_degenerate_ci() -> None:
    summary = summarize([0.25])
    assert (summary.ci_low, summary.p50, summary.ci_high) == (0.25, 0.25, 0.25)
    assert summary.stdev is None


def test_summary_round_trips_through_dict() -> None:
    summary = summarize([3.0, 1.0, 2.0, 8.0])
    assert Summary.from_dict(summary.to_dict()) == summary
    assert Summary.from_dict({**summary.to_dict(), "unknown_key": 1}) == summary


def test_summary_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])


def test_median_ci_contains_true_median_of_large_normal_sample() -> None:
    sample = np.random.default_rng(42).normal(loc=10.0, scale=2.0, size=2000)
    low, high = bootstrap_ci(sample)
    assert low < 10.0 < high
    assert high - low < 0.5  # the CI is informative, not merely wide


def test_median_ci_coverage_is_near_nominal() -> None:
    rng = np.random.default_rng(1)
    trials = 200
    covered = sum(
        low <= 0.0 <= high
        for low, high in (
            bootstrap_ci(rng.normal(size=60), n_resamples=1000, seed=i) for i in range(trials)
        )
    )
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_is_deterministic_with_seed_and_varies_without_it() -> None:
    sample = np.random.default_rng(3).lognormal(size=50)
    assert bootstrap_ci(sample, seed=5) == bootstrap_ci(sample, seed=5)
    assert bootstrap_ci(sample, seed=5) != bootstrap_ci(sample, seed=6)
    assert summarize(sample, seed=5) == summarize(sample, seed=5)


def test_bootstrap_of_one_value_is_that_value() -> None:
    assert bootstrap_ci([4.2]) == (4.2, 4.2)


def test_bootstrap_handles_samples_larger_than_one_chunk() -> None:
    sample = np.random.default_rng(4).normal(size=50_000)
    low, high = bootstrap_ci(sample, np.mean, n_resamples=200)
    assert low < 0.0 < high or abs(low) < 0.02


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=40))
def test_median_ci_lies_within_sample_range(values: list[float]) -> None:
    low, high = bootstrap_ci(values, n_resamples=200)
    assert min(values) <= low <= high <= max(values)


def test_ratio_ci_recovers_a_known_speedup() -> None:
    rng = np.random.default_rng(11)
    miss = rng.lognormal(mean=math.log(0.66), sigma=0.1, size=40)
    hit = rng.lognormal(mean=math.log(0.066), sigma=0.1, size=40)
    estimate = ratio_ci(miss, hit)
    assert estimate.value == pytest.approx(np.median(miss) / np.median(hit))
    assert estimate.ci_low < estimate.value < estimate.ci_high
    assert estimate.ci_low < 10.0 < estimate.ci_high
    assert estimate.ci_low > 8.0 and estimate.ci_high < 12.5
    assert (estimate.n_numerator, estimate.n_denominator) == (40, 40)


def test_ratio_ci_of_identical_distributions_contains_one() -> None:
    rng = np.random.default_rng(12)
    estimate = ratio_ci(rng.lognormal(size=30), rng.lognormal(size=30))
    assert estimate.ci_low < 1.0 < estimate.ci_high


def test_ratio_ci_rejects_zero_denominator() -> None:
    with pytest.raises(ValueError, match="denominator"):
        ratio_ci([1.0, 2.0], [0.0, 0.0, 0.0])


def test_compare_flags_a_clear_slowdown_with_its_numbers() -> None:
    old = np.full(20, 1.0) + np.linspace(0, 0.01, 20)
    new = old * 1.3
    result = compare(old, new, statistic="p50", higher_is_better=False, allowed_pct=10)
    assert result.regression and result.significant
    assert result.change_pct == pytest.approx(30.0)
    assert result.ci_low_pct > 10
    assert "REGRESSION" in result.message and "+30.0%" in result.message


def test_compare_does_not_flag_a_speedup_of_a_latency() -> None:
    old = np.linspace(1.0, 1.1, 20)
    result = compare(old, old * 0.7, higher_is_better=False, allowed_pct=0)
    assert not result.regression and result.significant
    assert "improvement" in result.message


def test_compare_flags_a_throughput_drop_when_higher_is_better() -> None:
    old = np.linspace(100.0, 110.0, 20)
    assert compare(
        old, old * 0.7, statistic="mean", higher_is_better=True, allowed_pct=5
    ).regression
    assert not compare(
        old, old * 1.3, statistic="mean", higher_is_better=True, allowed_pct=5
    ).regression


def test_compare_tolerates_significant_change_within_allowance() -> None:
    old = np.linspace(1.0, 1.01, 30)
    result = compare(old, old * 1.04, higher_is_better=False, allowed_pct=5)
    assert result.significant and not result.regression


def test_compare_refuses_to_judge_tiny_samples() -> None:
    few = MIN_SAMPLES_FOR_SIGNIFICANCE - 1
    result = compare([1.0] * few, [2.0] * few, higher_is_better=False, allowed_pct=0)
    assert not result.regression and not result.significant
    assert "not judged" in result.message


def test_compare_rejects_unknown_statistic() -> None:
    with pytest.raises(ValueError, match="p50"):
        compare([1.0], [1.0], statistic="median", higher_is_better=False, allowed_pct=5)


def test_compare_is_deterministic_with_seed() -> None:
    rng = np.random.default_rng(5)
    old, new = rng.lognormal(size=30), rng.lognormal(size=30)
    first = compare(old, new, higher_is_better=False, allowed_pct=5, seed=3)
    assert first == compare(old, new, higher_is_better=False, allowed_pct=5, seed=3)


def _regression_rate(slowdown: float, n: int, allowed_pct: float, statistic: str) -> float:
    """Fraction of trials where compare() flags new = slowdown * old-distribution draws."""
    rng = np.random.default_rng(2026)
    flagged = 0
    for trial in range(TRIALS[statistic]):
        old = rng.lognormal(0.0, LATENCY_SIGMA, n)
        new = slowdown * rng.lognormal(0.0, LATENCY_SIGMA, n)
        flagged += compare(
            old,
            new,
            statistic=statistic,
            higher_is_better=False,
            allowed_pct=allowed_pct,
            seed=trial,
        ).regression
    return flagged / TRIALS[statistic]


@pytest.mark.parametrize("statistic", ["p50", "mean"])
def test_compare_false_alarm_rate_on_a_a_trials_is_at_most_five_percent(statistic: str) -> None:
    # allowed_pct=0 is the strictest gate: only the significance criterion protects it.
    assert _regression_rate(1.0, n=30, allowed_pct=0, statistic=statistic) <= 0.05


def test_compare_detects_a_thirty_percent_slowdown_with_thirty_samples() -> None:
    assert _regression_rate(1.3, n=30, allowed_pct=10, statistic="p50") >= 0.95


def test_statistic_named_percentiles_use_linear_method() -> None:
    assert statistic_named("p90")(np.arange(11.0)) == pytest.approx(9.0)
    assert statistic_named("p99")(np.array([0.0, 1.0])) == pytest.approx(0.99)


def test_trend_pct_compares_tail_median_to_head_median() -> None:
    assert trend_pct([1, 1, 1, 5, 5, 2, 2, 2]) == pytest.approx(100.0)
    assert trend_pct([2, 2, 2, 1, 1, 1], head=3, tail=3) == pytest.approx(-50.0)


def test_trend_pct_shrinks_windows_for_short_series() -> None:
    assert trend_pct([1.0, 3.0]) == pytest.approx(200.0)
    assert trend_pct([1.0]) is None


def test_linear_slope_of_a_line() -> None:
    assert linear_slope([3.0, 5.0, 7.0, 9.0]) == pytest.approx(2.0)
    assert linear_slope([1.0]) is None
