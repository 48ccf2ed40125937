"""Pure statistics of benchmark samples: percentiles, bootstrap CIs, the regression judge."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pydantic import JsonValue

PERCENTILE_METHOD = "linear"
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
# Below this many samples on either side compare() judges nothing: the percentile bootstrap is
# too narrow there. Measured one-sided A/A rates (nominal 2.5%, lognormal sigma 0.2, 600 trials):
# n=2: 15% (p50 and mean); n=5: 1.3% p50 but 7.0% mean; n=8: 2.5% p50, 4.3% mean.
MIN_SAMPLES_FOR_SIGNIFICANCE = 10
# Upper bound on resample-matrix elements held at once (32 MB of float64).
_MAX_MATRIX_ELEMENTS = 4_000_000

Statistic = Callable[..., Any]
"""A numpy reducer accepting ``axis=`` (np.median, np.mean, a percentile from `statistic_named`)."""


class JsonRecord:
    """Base of a dataclass whose fields are all JSON-safe, stored in results: `to_dict` is `asdict`.

    The records here and `server_metrics.ServerDelta` share it.
    """

    def to_dict(self) -> dict[str, JsonValue]:
        """Return a JSON-ready dict with one key per field."""
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses


def _as_sample(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    """Return `values` as a 1-D float array, rejecting NaN and infinities."""
    arr = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or infinite entries; drop failed requests first")
    return arr


def _percentile(q: float) -> Statistic:
    """Return a reducer computing the q-th percentile with the package's percentile method."""

    def reducer(a: np.ndarray, axis: int | None = None) -> Any:
        return np.percentile(a, q, axis=axis, method=PERCENTILE_METHOD)

    reducer.__name__ = f"p{q:g}"
    return reducer


STATISTICS: dict[str, Statistic] = {
    "mean": np.mean,
    "p50": _percentile(50),
    "p90": _percentile(90),
    "p95": _percentile(95),
    "p99": _percentile(99),
}


def statistic_named(name: str) -> Statistic:
    """Return the reducer for a statistic name such as "p50" or "mean"."""
    try:
        return STATISTICS[name]
    except KeyError:
        raise ValueError(f"unknown statistic {name!r}; allowed: {', '.join(STATISTICS)}") from None


def _statistic_label(statistic: Statistic) -> str:
    """Return a short human name for a reducer."""
    return getattr(statistic, "__name__", repr(statistic))


def _resampled_statistic(
    sample: np.ndarray, statistic: Statistic, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Return `statistic` of `n_resamples` bootstrap resamples, vectorised in bounded chunks."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = sample.size
    chunk = max(1, _MAX_MATRIX_ELEMENTS // n)
    parts = []
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        index = rng.integers(0, n, size=(rows, n))
        parts.append(np.asarray(statistic(sample[index], axis=1), dtype=float))
    return np.concatenate(parts)


def _interval(distribution: np.ndarray, confidence: float) -> tuple[float, float]:
    """Return the central `confidence` percentile interval of a bootstrap distribution."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    low, high = np.quantile(distribution, [alpha / 2, 1 - alpha / 2], method=PERCENTILE_METHOD)
    return float(low), float(high)


def _method(statistic_label: str, confidence: float, n_resamples: int, seed: int) -> str:
    """Describe a bootstrap so a reader can reproduce it."""
    return (
        f"bootstrap percentile {confidence:.0%} CI of {statistic_label}, {n_resamples} resamples, "
        f"seed {seed}; percentiles numpy '{PERCENTILE_METHOD}'"
    )


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.median,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Return the percentile-bootstrap confidence interval of `statistic` over `values`."""
    sample = _as_sample(values)
    if sample.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if sample.size == 1:
        only = float(sample[0])
        return only, only
    rng = np.random.default_rng(seed)
    return _interval(_resampled_statistic(sample, statistic, n_resamples, rng), confidence)


@dataclass
class Summary(JsonRecord):
    """Descriptive statistics of one metric's sample, with a bootstrap CI of its median."""

    n: int
    mean: float | None
    stdev: float | None
    min: float | None
    max: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    ci_low: float | None
    ci_high: float | None
    method: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """Rebuild a Summary from `to_dict` output, ignoring unknown keys."""
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


def summarize(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Summary:
    """Summarise a sample: n, mean, sample stdev (ddof=1), min/max, percentiles, median CI."""
    sample = _as_sample(values)
    method = (
        _method("median", confidence, n_resamples, seed)
        + "; stdev is the sample standard deviation (ddof=1)"
    )
    if sample.size == 0:
        return Summary(0, None, None, None, None, None, None, None, None, None, None, method)
    p50, p90, p95, p99 = (
        float(v) for v in np.percentile(sample, [50, 90, 95, 99], method=PERCENTILE_METHOD)
    )
    ci_low, ci_high = bootstrap_ci(
        sample, np.median, confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    return Summary(
        n=int(sample.size),
        mean=float(sample.mean()),
        stdev=float(sample.std(ddof=1)) if sample.size > 1 else None,
        min=float(sample.min()),
        max=float(sample.max()),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        ci_low=ci_low,
        ci_high=ci_high,
        method=method,
    )


@dataclass
class RatioEstimate(JsonRecord):
    """A ratio of two sample statistics with its bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    n_numerator: int
    n_denominator: int
    method: str


def _bootstrap_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray,
    statistic: Statistic,
    n_resamples: int,
    seed: int,
) -> tuple[float, np.ndarray]:
    """Return the point ratio and its bootstrap distribution (both samples resampled)."""
    if numerator.size == 0 or denominator.size == 0:
        raise ValueError("a ratio needs at least one value on each side")
    point_denominator = float(statistic(denominator))
    if point_denominator == 0.0:
        raise ValueError(f"the denominator's {_statistic_label(statistic)} is 0; ratio undefined")
    point = float(statistic(numerator)) / point_denominator
    rng = np.random.default_rng(seed)
    top = _resampled_statistic(numerator, statistic, n_resamples, rng)
    bottom = _resampled_statistic(denominator, statistic, n_resamples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        return point, top / bottom


def ratio_ci(
    numerator_values: Sequence[float] | np.ndarray,
    denominator_values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.median,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> RatioEstimate:
    """Estimate stat(numerator) / stat(denominator) with an independent two-sample bootstrap CI."""
    numerator = _as_sample(numerator_values, "numerator values")
    denominator = _as_sample(denominator_values, "denominator values")
    point, distribution = _bootstrap_ratio(numerator, denominator, statistic, n_resamples, seed)
    low, high = _interval(distribution, confidence)
    label = f"{_statistic_label(statistic)} ratio (independent resampling of both samples)"
    return RatioEstimate(
        value=point,
        ci_low=low,
        ci_high=high,
        n_numerator=int(numerator.size),
        n_denominator=int(denominator.size),
        method=_method(label, confidence, n_resamples, seed),
    )


@dataclass
class Comparison(JsonRecord):
    """Verdict of `compare`: a statistic's relative change from baseline to candidate."""

    statistic: str
    old: float
    new: float
    change_pct: float
    ci_low_pct: float
    ci_high_pct: float
    allowed_pct: float
    higher_is_better: bool
    significant: bool
    regression: bool
    n_old: int
    n_new: int
    message: str
    method: str


def compare(
    old_values: Sequence[float] | np.ndarray,
    new_values: Sequence[float] | np.ndarray,
    *,
    statistic: str = "p50",
    higher_is_better: bool,
    allowed_pct: float,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Judge whether `new_values` regressed against `old_values` on one statistic.

    change = stat(new) / stat(old) - 1, in percent, with a percentile-bootstrap CI from
    resampling both samples independently. `significant` means that CI excludes 0 (either way).
    `regression` is True exactly when both hold, "bad" being an increase for lower-is-better
    metrics and a decrease for higher-is-better ones:
      1. the point change is bad by more than `allowed_pct`, and
      2. the CI bound nearest zero is on the bad side too (lower-is-better: ci_low_pct > 0;
         higher-is-better: ci_high_pct < 0), i.e. a one-sided test at (1 - confidence) / 2.
    With fewer than MIN_SAMPLES_FOR_SIGNIFICANCE values on either side nothing is significant.
    """
    if allowed_pct < 0:
        raise ValueError(f"allowed_pct must be >= 0, got {allowed_pct}")
    reducer = statistic_named(statistic)
    old = _as_sample(old_values, "baseline values")
    new = _as_sample(new_values, "candidate values")
    ratio, distribution = _bootstrap_ratio(new, old, reducer, n_resamples, seed)
    change_pct = (ratio - 1.0) * 100.0
    low, high = _interval((distribution - 1.0) * 100.0, confidence)
    return _judged(
        statistic, float(reducer(old)), float(reducer(new)), change_pct, low, high,
        higher_is_better=higher_is_better, allowed_pct=allowed_pct, confidence=confidence,
        enough=min(old.size, new.size) >= MIN_SAMPLES_FOR_SIGNIFICANCE,
        n_old=int(old.size),
        n_new=int(new.size),
        method=_method(f"{statistic} relative change", confidence, n_resamples, seed),
    )


def _judged(
    statistic: str,
    old: float,
    new: float,
    change_pct: float,
    low: float,
    high: float,
    *,
    higher_is_better: bool,
    allowed_pct: float,
    confidence: float,
    enough: bool,
    n_old: int,
    n_new: int,
    method: str,
    note: str = "",
) -> Comparison:
    """The verdict on an estimated change (`low` .. `high`: its CI in %), as `compare` documents it.

    `compare` and `compare_runs_level` differ only in how they estimate; `enough` says whether there
    were enough samples to judge at all, and `note` is appended to the message.
    """
    significant = enough and (low > 0.0 or high < 0.0)
    if higher_is_better:
        bad_by_more_than_allowed = change_pct < -allowed_pct
        bad_side_excludes_zero = high < 0.0
    else:
        bad_by_more_than_allowed = change_pct > allowed_pct
        bad_side_excludes_zero = low > 0.0
    regression = enough and bad_by_more_than_allowed and bad_side_excludes_zero
    bound = f"-{allowed_pct:g}%" if higher_is_better else f"+{allowed_pct:g}%"
    head = f"{statistic} {change_pct:+.1f}% ({confidence:.0%} CI {low:+.1f}% .. {high:+.1f}%)"
    if regression:
        verdict = f"REGRESSION: worse than the allowed {bound} and significant"
    elif not enough:
        verdict = f"not judged: fewer than {MIN_SAMPLES_FOR_SIGNIFICANCE} samples on one side"
    elif significant:
        improved = (change_pct > 0) == higher_is_better
        verdict = (
            "significant improvement" if improved else f"significant, within the allowed {bound}"
        )
    else:
        verdict = "no significant change"
    return Comparison(
        statistic=statistic, old=old, new=new,
        change_pct=change_pct, ci_low_pct=low, ci_high_pct=high,
        allowed_pct=allowed_pct, higher_is_better=higher_is_better,
        significant=significant, regression=regression,
        n_old=n_old, n_new=n_new,
        message=f"{head}: {verdict}{note}", method=method,
    )


def trend_pct(values: Sequence[float] | np.ndarray, head: int = 3, tail: int = 3) -> float | None:
    """Return the % change of the median of the last `tail` values over the first `head` values.

    Positive means the values grew (slower, for a latency). Windows shrink to half the series
    when it is shorter than head + tail; fewer than 2 values gives None.
    """
    sample = _as_sample(values)
    if sample.size < 2:
        return None
    head = max(1, min(head, sample.size // 2))
    tail = max(1, min(tail, sample.size // 2))
    first = float(np.median(sample[:head]))
    last = float(np.median(sample[-tail:]))
    if first == 0.0:
        return None
    return (last / first - 1.0) * 100.0


def linear_slope(values: Sequence[float] | np.ndarray) -> float | None:
    """Return the least-squares slope of values against their index (units per step)."""
    sample = _as_sample(values)
    if sample.size < 2:
        return None
    slope, _ = np.polyfit(np.arange(sample.size, dtype=float), sample, 1)
    return float(slope)


# ---- runs as the unit: several stored runs per side ------------------------------------------

def _incomplete_beta(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def t_cdf(t: float, df: float) -> float:
    """Student t distribution function with `df` (> 0, not necessarily whole) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * _incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of `t_cdf`: the t with t_cdf(t, df) = p (bisection to float precision; no scipy)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2.0


def compare_runs_level(
    old_runs: Sequence[Sequence[float] | np.ndarray],
    new_runs: Sequence[Sequence[float] | np.ndarray],
    *,
    statistic: str = "p50",
    higher_is_better: bool,
    allowed_pct: float,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,  # n_resamples and seed serve only the one-run-per-side
    seed: int = DEFAULT_SEED,  # fallback to `compare`'s bootstrap; the t interval needs neither
) -> Comparison:
    """Judge several stored runs per side with the run as the unit (between-run variance included).

    Each run's raw sample gives one value, stat(run); the change is the ratio of the geometric means
    of those values on the two sides, minus 1, in percent (`old` / `new` hold the geometric means).
    Its CI is a Student t interval on log stat(run):
      * two or more runs on both sides: Welch (unequal variances, Welch-Satterthwaite df);
      * one run on one side: that run's deviation from its side's true level is taken to have the
        other side's run-to-run variance (se = s * sqrt(1/n_old + 1/n_new), df = n_other - 1);
      * one run on each side: there is no run-to-run variance to estimate; this falls back to the
        request-level bootstrap of `compare`, and `method` and `message` say so.
    `regression` and `significant` follow `compare` exactly (worse than `allowed_pct` and the CI
    bound nearest zero on the bad side). Nothing is significant when a run has fewer than
    MIN_SAMPLES_FOR_SIGNIFICANCE values; `n_old` / `n_new` count the values of all runs of a side.
    """
    if allowed_pct < 0:
        raise ValueError(f"allowed_pct must be >= 0, got {allowed_pct}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    olds = [_as_sample(run, "baseline values") for run in old_runs]
    news = [_as_sample(run, "candidate values") for run in new_runs]
    if not olds or not news or any(run.size == 0 for run in olds + news):
        raise ValueError("a run-level comparison needs at least one non-empty run on each side")
    if len(olds) == 1 and len(news) == 1:
        result = compare(olds[0], news[0], statistic=statistic, higher_is_better=higher_is_better,
                         allowed_pct=allowed_pct, confidence=confidence, n_resamples=n_resamples, seed=seed)
        result.method += "; one run per side: requests as the unit, between-run variance not accounted for"
        result.message += " (one run per side: between-run variance not accounted for)"
        return result
    reducer = statistic_named(statistic)
    per_run = {side: np.array([float(reducer(run)) for run in runs]) for side, runs in (("old", olds), ("new", news))}
    if any(np.any(values <= 0) for values in per_run.values()):
        raise ValueError(f"a run's {statistic} is <= 0; the run-level change is taken on the log scale")
    log_old, log_new = np.log(per_run["old"]), np.log(per_run["new"])
    n_o, n_n = log_old.size, log_new.size
    diff = float(log_new.mean() - log_old.mean())
    if n_o >= 2 and n_n >= 2:
        v_o, v_n = log_old.var(ddof=1) / n_o, log_new.var(ddof=1) / n_n
        se = math.sqrt(v_o + v_n)
        df = (v_o + v_n) ** 2 / (v_o**2 / (n_o - 1) + v_n**2 / (n_n - 1)) if se > 0 else float(n_o + n_n - 2)
        how = "Welch t interval"
    else:
        single, other, spread = ("OLD", "NEW", log_new) if n_o == 1 else ("NEW", "OLD", log_old)
        se = float(spread.std(ddof=1)) * math.sqrt(1.0 / n_o + 1.0 / n_n)
        df = float(spread.size - 1)
        how = (f"t interval; one run on the {single} side: its run-to-run variance is taken from the "
               f"{other} side's {spread.size} runs")
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, df) * se
    change_pct = math.expm1(diff) * 100.0
    low, high = math.expm1(diff - half) * 100.0, math.expm1(diff + half) * 100.0
    return _judged(
        statistic, float(np.exp(log_old.mean())), float(np.exp(log_new.mean())), change_pct, low, high,
        higher_is_better=higher_is_better, allowed_pct=allowed_pct, confidence=confidence,
        enough=min(run.size for run in olds + news) >= MIN_SAMPLES_FOR_SIGNIFICANCE,
        n_old=int(sum(run.size for run in olds)),
        n_new=int(sum(run.size for run in news)),
        method=(f"runs as the unit: {statistic} of each run, change of their geometric mean, {confidence:.0%} "
                f"{how} on log {statistic} per run ({n_o} vs {n_n} runs, df {df:.1f}); percentiles numpy "
                f"'{PERCENTILE_METHOD}'"),
        note=f" ({n_o} vs {n_n} runs, runs as the unit)",
    )
