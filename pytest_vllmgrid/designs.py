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

from pytest_vllmgrid.stats import bootstrap_ci, t_quantile

PAIRED_MEDIAN_METHOD = "median of per-unit ratios, bootstrap 95% CI over units"
LOG_T_METHOD = "geometric mean of per-unit ratios, t 95% CI on their logs over units"


def paired_ratio(ratios: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Median of per-unit ratios with its bootstrap 95 % CI over units (at least a few units)."""
    return float(np.median(ratios)), bootstrap_ci(list(ratios), np.median)


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
