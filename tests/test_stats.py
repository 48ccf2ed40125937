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
    compare_runs_level,
    linear_slope,
    ratio_ci,
    statistic_named,
    summarize,
    t_cdf,
    t_quantile,
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


# ---- runs as the unit ------------------------------------------------------------------------

@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706),
                                          (10, 2.2281), (30, 2.0423), (1e7, 1.9600)])
def test_t_quantile_matches_the_printed_table(df: float, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_other_levels_symmetry_and_fractional_df() -> None:
    assert t_quantile(0.95, 5) == pytest.approx(2.0150, abs=1e-4)
    assert t_quantile(0.995, 3) == pytest.approx(5.8409, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    # df = 2 has a closed form: t = (2p - 1) / sqrt(2 p (1 - p)); df = 1 is the Cauchy: tan(pi (p - 1/2))
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    # Welch gives fractional df: between its neighbours, and t_cdf inverts it
    assert t_quantile(0.975, 3) < t_quantile(0.975, 2.5) < t_quantile(0.975, 2)
    assert t_cdf(t_quantile(0.975, 2.5), 2.5) == pytest.approx(0.975, abs=1e-12)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_run_level_welch_interval_by_hand() -> None:
    # constant runs: each run's median is exact, so the interval can be computed by hand
    old = [[100.0] * 10, [110.0] * 10, [90.0] * 10]
    new = [[130.0] * 10, [150.0] * 10, [140.0] * 10]
    result = compare_runs_level(old, new, higher_is_better=False, allowed_pct=10)
    lo, ln = np.log([100, 110, 90]), np.log([130, 150, 140])
    v_o, v_n = lo.var(ddof=1) / 3, ln.var(ddof=1) / 3
    df = (v_o + v_n) ** 2 / (v_o**2 / 2 + v_n**2 / 2)
    half = t_quantile(0.975, df) * math.sqrt(v_o + v_n)
    diff = ln.mean() - lo.mean()
    assert result.change_pct == pytest.approx(math.expm1(diff) * 100)
    assert result.ci_low_pct == pytest.approx(math.expm1(diff - half) * 100)
    assert result.ci_high_pct == pytest.approx(math.expm1(diff + half) * 100)
    assert result.old == pytest.approx(math.exp(lo.mean())) and result.new == pytest.approx(math.exp(ln.mean()))
    assert (result.n_old, result.n_new) == (30, 30)
    assert result.regression and "REGRESSION" in result.message and "3 vs 3 runs" in result.message
    assert "runs as the unit" in result.method and "Welch" in result.method


def test_run_level_with_one_new_run_borrows_the_old_runs_variance() -> None:
    old = [[100.0] * 10, [110.0] * 10, [90.0] * 10]
    result = compare_runs_level(old, [[150.0] * 10], higher_is_better=False, allowed_pct=10)
    lo = np.log([100, 110, 90])
    half = t_quantile(0.975, 2) * lo.std(ddof=1) * math.sqrt(1 / 3 + 1)
    diff = math.log(150) - lo.mean()
    assert result.ci_low_pct == pytest.approx(math.expm1(diff - half) * 100)
    assert "one run on the NEW side" in result.method and "OLD side's 3 runs" in result.method


def test_run_level_single_run_each_side_falls_back_to_the_request_bootstrap_and_says_so() -> None:
    rng = np.random.default_rng(3)
    old, new = 80 * np.exp(rng.normal(0, 0.2, 30)), 104 * np.exp(rng.normal(0, 0.2, 30))
    result = compare_runs_level([old], [new], higher_is_better=False, allowed_pct=10)
    plain = compare(old, new, higher_is_better=False, allowed_pct=10)
    assert (result.change_pct, result.ci_low_pct, result.regression) == (
        plain.change_pct, plain.ci_low_pct, plain.regression)
    assert "between-run variance not accounted for" in result.method
    assert "between-run variance not accounted for" in result.message


def test_run_level_throughput_drop_when_higher_is_better() -> None:
    old = [[1000.0] * 10, [1050.0] * 10, [980.0] * 10]
    new = [[700.0] * 10, [720.0] * 10, [690.0] * 10]
    result = compare_runs_level(old, new, higher_is_better=True, allowed_pct=5)
    assert result.regression and result.ci_high_pct < -5
    assert not compare_runs_level(new, old, higher_is_better=True, allowed_pct=5).regression


def test_run_level_refuses_small_runs_empty_runs_and_non_positive_statistics() -> None:
    small = compare_runs_level([[100.0] * 8] * 2, [[300.0] * 8, [310.0] * 8], higher_is_better=False, allowed_pct=0)
    assert not small.regression and "not judged" in small.message
    with pytest.raises(ValueError, match="non-empty"):
        compare_runs_level([[1.0] * 10, []], [[1.0] * 10], higher_is_better=False, allowed_pct=0)
    with pytest.raises(ValueError, match="log scale"):
        compare_runs_level([[0.0] * 10, [1.0] * 10], [[1.0] * 10], higher_is_better=False, allowed_pct=0)


def _runs(rng: np.random.Generator, k: int, scale: float, run_sigma: float, n: int = 30) -> list[np.ndarray]:
    """k runs of n lognormal latencies: one shift per run (lognormal run effect) plus request noise."""
    return [80 * scale * np.exp(rng.normal(0, run_sigma) + rng.normal(0, LATENCY_SIGMA, n)) for _ in range(k)]


@pytest.mark.parametrize("new_runs", [3, 1])
def test_run_level_a_a_false_alarms_stay_near_nominal_despite_run_shifts(new_runs: int) -> None:
    # a shared machine: whole runs shift by a lognormal factor (sd 0.3 on the log scale, larger than the
    # requests' own 0.2); allowed 0% leaves the test itself: one-sided nominal 2.5%
    rng = np.random.default_rng(11)
    trials = [(_runs(rng, 3, 1.0, 0.3), _runs(rng, new_runs, 1.0, 0.3)) for _ in range(300)]
    flagged = sum(compare_runs_level(old, new, higher_is_better=False, allowed_pct=0).regression
                  for old, new in trials)
    assert flagged / len(trials) <= 0.05
    # the request-level bootstrap of one run against one run, on the same runs, is fooled by the shifts
    fooled = sum(compare(old[0], new[0], higher_is_better=False, allowed_pct=0, n_resamples=500).regression
                 for old, new in trials[:100])
    assert fooled >= 20


def test_run_level_detects_a_thirty_percent_slowdown_with_three_runs_per_side() -> None:
    # a steadier server (run-to-run sd 4%): +30% against an allowed 10% is caught nearly always
    rng = np.random.default_rng(12)
    trials = 200
    detected = sum(compare_runs_level(_runs(rng, 3, 1.0, 0.04), _runs(rng, 3, 1.3, 0.04), higher_is_better=False,
                                      allowed_pct=10).regression for _ in range(trials))
    assert detected / trials >= 0.85
