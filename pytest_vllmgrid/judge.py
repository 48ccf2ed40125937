"""The judge: the one place that decides whether a figure holds.

It fills `Verdict`s on a test's record from the thresholds file (absolute bounds and bounds relative to
the baseline config), says which verdicts fail a test, and whether a config met the early-stop goal.
The regression gate's per-metric statistics live in gate.py; its verdicts are read back here.
"""

from __future__ import annotations

from collections.abc import Mapping

from pytest_vllmgrid.numbers import fmt_bound
from pytest_vllmgrid.results.models import ConfigResult, Metric, TestResult, Verdict
from pytest_vllmgrid.thresholds import Bound, Thresholds


def judge_bound(metric_name: str, bound: Bound, metric: Metric | None, baseline_metric: Metric | None,
                config: str, is_baseline: bool) -> list[Verdict]:
    """Every bound of one metric judged on one config's value (and the baseline's, for relative bounds)."""
    stat = bound.stat or ("p50" if metric is not None and metric.kind == "sample" else "value")
    value = metric.point(stat) if metric is not None else None
    unit = metric.unit if metric is not None else ""
    label = f"{metric_name} {stat}"
    shown = _show(value, metric, stat, unit)
    verdicts = []
    for kind, limit in (("min", bound.min), ("max", bound.max)):
        if limit is None:
            continue
        if value is None:
            verdicts.append(Verdict(metric=metric_name, config=config, passed=None,
                                    message=f"{label}: no value measured (bound {kind} {limit})"))
            continue
        ok = value >= limit if kind == "min" else value <= limit
        verdicts.append(Verdict(metric=metric_name, config=config, passed=ok, value=value, bound=limit,
                                message=f"{label} = {shown} {'>=' if kind == 'min' else '<='} {limit:g} {unit} "
                                        f"required: {'ok' if ok else 'FAILED'}"))
    for kind, pct in (("max", bound.max_vs_baseline_pct), ("min", bound.min_vs_baseline_pct)):
        if pct is None or (is_baseline and bound.skip_baseline):
            continue
        base = baseline_metric.point(stat) if baseline_metric is not None else None
        if value is None or base is None:
            verdicts.append(Verdict(metric=metric_name, config=config, passed=None, message=(
                f"{label}: cannot judge vs baseline (value {shown}, baseline "
                f"{'missing' if base is None else fmt_bound(base)})")))
            continue
        limit = base * (1 + pct / 100)
        ok = value <= limit if kind == "max" else value >= limit
        verdicts.append(Verdict(
            metric=metric_name, config=config, passed=ok, value=value, bound=limit, baseline_value=base,
            message=(f"{label} = {shown} {'<=' if kind == 'max' else '>='} {fmt_bound(limit)} {unit} required "
                     f"(baseline {fmt_bound(base)} {unit} {pct:+g}%): {'ok' if ok else 'FAILED'}")))
    return verdicts


def judge_test(test: TestResult, test_key: str, thresholds: Thresholds | None, config: str,
               params: Mapping[str, object], is_baseline: bool,
               baseline: Mapping[str, Metric] | None) -> list[Verdict]:
    """Judge a test's measurement against every bound of the thresholds file that applies; the verdicts are
    stored on the test record."""
    verdicts: list[Verdict] = []
    if thresholds is not None and test.measurement is not None:
        for metric_name, bound in thresholds.for_test(test_key, config, dict(params)).items():
            verdicts += judge_bound(f"{test_key}.{metric_name}", bound, test.measurement.metric(metric_name),
                                    (baseline or {}).get(metric_name), config, is_baseline)
    test.thresholds = verdicts
    return verdicts


def failures(test: TestResult, *, fail_on_gpu_alerts: bool = False) -> list[str]:
    """Why a judged test fails: every broken bound, and GPU alerts when they are set to fail."""
    failed = [v.message for v in test.thresholds if v.passed is False]
    if fail_on_gpu_alerts:
        failed += [w for w in test.warnings() if w.startswith("GPU alert")]
    return failed


def goal_met(goal: list[str], result: ConfigResult) -> bool:
    """Every goal metric was judged on this config and all its bounds passed."""
    verdicts = result.verdicts()
    for metric in goal:
        test, name = metric.rsplit(".", 1)
        mine = [v for v in verdicts if v.metric.rsplit(".", 1)[1] == name
                and v.metric.rsplit(".", 1)[0].split("[", 1)[0] in (test, test.split("[", 1)[0])]
        if not mine or not all(v.passed is True for v in mine):
            return False
    return True


def _show(value: float | None, metric: Metric | None, stat: str, unit: str) -> str:
    """The value with its 95% CI when the statistic has one."""
    if value is None:
        return "n/a"
    text = f"{fmt_bound(value)} {unit}".strip()
    if metric is not None and stat in ("p50", "value") and metric.ci is not None:
        text += f" [95% CI {fmt_bound(metric.ci[0])}–{fmt_bound(metric.ci[1])}]"
    return text
