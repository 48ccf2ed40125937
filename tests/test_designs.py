"""Paired designs: per-unit ratios cancel a drift that pooled samples turn into a fake effect."""

from __future__ import annotations

import numpy as np

from pytest_vllmgrid.designs import early_late_pairs, paired_ratio, unit_change_pct
from pytest_vllmgrid.stats import ratio_ci


def test_paired_ratios_cancel_a_drift_that_pooled_medians_read_as_a_speed_up() -> None:
    rng = np.random.default_rng(1)
    drift = np.linspace(1.6, 1.0, 16)  # the server warms up over the run: both conditions speed up
    miss = 30 * drift * np.exp(rng.normal(0, 0.03, 16))
    hit = 30 * drift * np.exp(rng.normal(0, 0.03, 16))  # A/A: no cache, same work
    pooled = ratio_ci(list(miss[:8]), list(hit[8:]))  # early MISS vs late HIT, as an unpaired design sees them
    assert pooled.ci_low > 1.0  # a fake acceleration
    point, (low, high) = paired_ratio(list(miss / hit))
    assert low <= 1.0 <= high and abs(point - 1.0) < 0.05


def test_a_per_unit_change_has_a_t_interval_over_units() -> None:
    change, ci = unit_change_pct([1.30, 1.25, 1.35])
    assert 25 < change < 35 and ci[0] < change < ci[1]
    assert unit_change_pct([1.3])[1] is None


def test_early_late_pairs_match_kind_and_position() -> None:
    values = [10, 100, 11, 110, 20, 200, 22, 220]
    kinds = ["s", "l"] * 4
    assert early_late_pairs(values, kinds) == [2.0, 2.0, 2.0, 2.0]
