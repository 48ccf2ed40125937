"""Drift-proof comparison designs: two conditions measured inside one config, compared unit by unit.

A slow drift (warm-up, thermal, background load) biases any comparison of two pooled samples taken at
different times; comparing each unit (a MISS/HIT pair, a conversation, an early/late pair of requests)
with itself cancels it. The figure is the median (or geometric mean) of the per-unit ratios and its CI
is taken over units, so n is the number of units, not of requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pytest_vllmgrid.stats import t_quantile

PAIRED_MEDIAN_METHOD = "median of per-unit ratios, distribution-free (order-statistic) 95% CI over units"
LOG_T_METHOD = "geometric mean of per-unit ratios, t 95% CI on their logs over units"


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of a median: the order statistics x(k) and x(n-k+1) with the largest k such
    that P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2, so coverage is at least `confidence` for any
    continuous distribution (for n < 6 no such k exists and the CI is [min, max], covering 1 - 2^(1-n)).

    A percentile bootstrap of the median is too narrow for a dozen units: in an A/A simulation
    (lognormal ratios, 400 trials each) its 95% CI excluded the true median 6.5-7.8% of the time at
    n = 6-24; this one stays under 5% (tests/test_designs.py measures both).
    """
    xs = np.sort(np.asarray(values, dtype=float))
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    tail = (1 - confidence) / 2
    k, cumulative = 0, 0.0  # k = how many order statistics may be cut from each end
    while k < n // 2:
        cumulative += math.comb(n, k) / 2 ** n  # P(Binomial(n, 1/2) = k)
        if cumulative > tail:
            break
        k += 1
    k = max(k, 1)  # 1-indexed rank of the lower bound
    return float(xs[k - 1]), float(xs[n - k])


def paired_ratio(ratios: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Median of per-unit ratios with its distribution-free 95 % CI over units (`median_ci`)."""
    return float(np.median(ratios)), median_ci(ratios)


def unit_change_pct(ratios: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """% change from per-unit ratios (later / earlier): exp(mean log r) - 1, with a t 95 % CI over units
    (sound for a handful of units, where a bootstrap is too narrow); no CI for a single unit."""
    logs = [math.log(r) for r in ratios if r > 0]
    if not logs:
        raise ValueError("no positive ratio")
    mean = sum(logs) / len(logs)
    point = (math.exp(mean) - 1) * 100
    if len(logs) < 2:
        return point, None
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    half = t_quantile(0.975, len(logs) - 1) * sd / math.sqrt(len(logs))
    return point, ((math.exp(mean - half) - 1) * 100, (math.exp(mean + half) - 1) * 100)


def early_late_pairs(values: Sequence[float], kinds: Sequence[str]) -> list[float]:
    """Ratios late / early of requests paired by kind and position: the i-th request of a kind in the first
    half of the run with the i-th of the same kind in the second half."""
    half = len(values) // 2
    ratios = []
    for kind in dict.fromkeys(kinds):
        early = [v for v, k in zip(values[:half], kinds[:half]) if k == kind]
        late = [v for v, k in zip(values[half:], kinds[half:]) if k == kind]
        ratios += [b / a for a, b in zip(early, late) if a > 0]
    return ratios
