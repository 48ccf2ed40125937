"""The judge: the one place that decides whether a figure holds.

A figure is *valid*, *inconclusive* or *invalid* (`assess`): invalid when a precondition of its method
failed (burst-delivered streams under a client timing, too many failed requests, too few samples),
inconclusive when its interval is degenerate (wider than the figure itself). A bound is then judged on the
figure's 95 % CI, not on its point (`judge_bound`): *pass* only when the whole interval is on the good side,
*fail* only when it is wholly on the bad side, *inconclusive* when it straddles the bound, *invalid* when the
figure (or the baseline's) is. Only a pass is green; `failures` and `unsure` say why a test is not.
The regression gate's per-metric statistics live in gate.py; the early-stop goal is judged here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pytest_vllmgrid.numbers import fmt_bound
from pytest_vllmgrid.results.models import ConfigResult, Measurement, Metric, TestResult, Verdict
from pytest_vllmgrid.stats import bootstrap_ci, ratio_ci, statistic_named
from pytest_vllmgrid.thresholds import Bound, Thresholds

MIN_SAMPLES = 3  # a sample metric with fewer values is invalid
MAX_FAILED_FRACTION = 0.05  # more failed requests than this and the latency figures are invalid
MAX_BURST_FRACTION = 0.05  # more burst-delivered responses than this and the client timings are invalid
MAX_POINTS_HALF_WIDTH = 25.0  # a percentage whose CI half-width exceeds this many points and itself: inconclusive
PERCENT_UNITS = ("%", "%/request")
NO_BASELINE = "not judged: no baseline measurement"  # a relative bound without one is never a silent pass


class NotConclusive(Exception):
    """A benchmark whose figures could not decide (inconclusive or invalid): never shown as passed."""


def assess(test: TestResult) -> None:
    """Fill the validity of each of a test's metrics (a benchmark may have set one itself: kept)."""
    m = test.measurement
    if m is None:
        return
    method_problem = _method_problem(m)
    for name, metric in m.metrics.items():
        if metric.validity != "valid":
            continue
        reason = _sample_problem(metric)
        if reason is None and _is_client_timing(name, metric):
            reason = method_problem
        if reason is not None:
            metric.validity, metric.validity_reason = "invalid", reason
        elif (degenerate := _degenerate_interval(metric)) is not None:
            metric.validity, metric.validity_reason = "inconclusive", degenerate


def _method_problem(m: Measurement) -> str | None:
    """Why this measurement's client timings cannot be trusted (bursts, failures), or None."""
    check = m.info.get("server_check")
    check = check if isinstance(check, dict) else {}
    responses = next((m.metrics[k].n for k in ("e2e_ms", "ttft_ms") if k in m.metrics and m.metrics[k].n), 0)
    bursts = check.get("burst_responses")
    if isinstance(bursts, (int, float)) and responses and bursts / responses > MAX_BURST_FRACTION:
        return (f"{bursts:.0f} of {responses} responses arrived in one burst (over {MAX_BURST_FRACTION:.0%}): "
                "the client's TTFT includes decoding")
    errors = m.metrics.get("errors")
    if errors is not None and errors.value and errors.n and errors.value / errors.n > MAX_FAILED_FRACTION:
        return f"{errors.value:.0f} of {errors.n} requests failed (over {MAX_FAILED_FRACTION:.0%})"
    return None


def _sample_problem(metric: Metric) -> str | None:
    if metric.kind == "sample" and metric.n is not None and metric.n < MIN_SAMPLES:
        return f"too few samples (n={metric.n} < {MIN_SAMPLES})"
    return None


def _is_client_timing(name: str, metric: Metric) -> bool:
    """A figure timed by the client (TTFT, TPOT, E2E... and what derives from them), not by the server."""
    return not name.startswith("server_") and not metric.exact and (
        metric.unit == "ms" or name in ("decode_tok_s", "degradation_pct", "acceleration", "gain_pct"))


def _degenerate_interval(metric: Metric) -> str | None:
    """Why a figure's interval is too wide to mean anything, or None."""
    point, ci = metric.point(), metric.ci
    if point is None or ci is None or metric.exact:
        return None
    half = (ci[1] - ci[0]) / 2
    if metric.unit in PERCENT_UNITS:
        if half > max(MAX_POINTS_HALF_WIDTH, abs(point)):
            return f"95% CI [{fmt_bound(ci[0])}–{fmt_bound(ci[1])}] is ±{half:.0f} points wide"
    elif half > abs(point):
        return f"95% CI [{fmt_bound(ci[0])}–{fmt_bound(ci[1])}] is wider than the figure itself"
    return None


def interval(metric: Metric, stat: str, samples: Sequence[float] | None) -> tuple[float, float] | None:
    """The 95 % CI of a metric's statistic: the stored CI of its median/value, a bootstrap of its raw samples
    for another statistic, the point itself for an exact count; None when there is none."""
    point = metric.point(stat)
    if point is None:
        return None
    if metric.exact:
        return point, point
    if stat in ("p50", "value") or metric.kind != "sample":
        return metric.ci
    if samples and len(samples) >= MIN_SAMPLES:
        return bootstrap_ci(samples, statistic_named(stat))
    return None


def _decide(lo: float, hi: float, limit: float, kind: str) -> str:
    """pass / fail / inconclusive of an interval against a min or max bound."""
    if kind == "min":
        return "pass" if lo >= limit else "fail" if hi < limit else "inconclusive"
    return "pass" if hi <= limit else "fail" if lo > limit else "inconclusive"


def _verdict(metric_name: str, config: str, status: str, message: str, **numbers: float | None) -> Verdict:
    passed = True if status == "pass" else False if status == "fail" else None
    return Verdict(metric=metric_name, config=config, passed=passed, status=status, message=message, **numbers)


def judge_bound(metric_name: str, bound: Bound, metric: Metric | None, baseline_metric: Metric | None,
                config: str, is_baseline: bool, samples: Sequence[float] | None = None,
                baseline_samples: Sequence[float] | None = None, baseline_source: str = "") -> list[Verdict]:
    """Every bound of one metric judged on one config's figure (and the baseline's, for relative bounds;
    `baseline_source` says where the baseline's figure came from when not from this run)."""
    stat = bound.stat or ("p50" if metric is not None and metric.kind == "sample" else "value")
    value = metric.point(stat) if metric is not None else None
    unit = metric.unit if metric is not None else ""
    label = f"{metric_name} {stat}"
    ci = interval(metric, stat, samples) if metric is not None else None
    shown = _show(value, ci, unit)
    verdicts = []
    for kind, limit in (("min", bound.min), ("max", bound.max)):
        if limit is None:
            continue
        need = f"{'>=' if kind == 'min' else '<='} {limit:g} {unit}".rstrip()
        if value is None:  # a figure that says why it has no value (e.g. judge.NO_BASELINE) says so here too
            why = f": {metric.validity_reason}" if metric is not None and metric.validity_reason else ""
            verdicts.append(_verdict(metric_name, config, "not judged",
                                     f"{label}: no value measured (bound {kind} {limit}){why}"))
        elif metric.validity == "invalid":
            verdicts.append(_verdict(metric_name, config, "invalid", f"{label} = {shown}: INVALID figure "
                                     f"({metric.validity_reason}); {need} not judged", value=value, bound=limit))
        elif ci is None:
            verdicts.append(_verdict(metric_name, config, "inconclusive", f"{label} = {shown} {need} required: "
                                     "INCONCLUSIVE (no confidence interval for this statistic)",
                                     value=value, bound=limit))
        else:
            status = _decide(ci[0], ci[1], limit, kind)
            verdicts.append(_verdict(metric_name, config, status, f"{label} = {shown} {need} required: "
                                     f"{_word(status)}", value=value, bound=limit, ci_low=ci[0], ci_high=ci[1]))
    for kind, pct in (("max", bound.max_vs_baseline_pct), ("min", bound.min_vs_baseline_pct)):
        if pct is None or (is_baseline and bound.skip_baseline):
            continue
        verdicts.append(_judge_relative(metric_name, label, kind, pct, metric, baseline_metric, stat, config,
                                        samples, baseline_samples, baseline_source))
    return verdicts


def _judge_relative(metric_name: str, label: str, kind: str, pct: float, metric: Metric | None,
                    base_metric: Metric | None, stat: str, config: str, samples: Sequence[float] | None,
                    base_samples: Sequence[float] | None, source: str = "") -> Verdict:
    """A bound relative to the baseline config, judged on the CI of the ratio config / baseline."""
    value = metric.point(stat) if metric is not None else None
    base = base_metric.point(stat) if base_metric is not None else None
    unit = metric.unit if metric is not None else ""
    if base is None:
        return _verdict(metric_name, config, "not judged", f"{label} {kind} {pct:+g}% vs baseline: {NO_BASELINE} "
                        "(the baseline config did not measure it in this run and no stored run has it; "
                        "run the baseline too, or give --vllm-baseline-run DIR)")
    if value is None:
        return _verdict(metric_name, config, "not judged", f"{label}: cannot judge vs baseline (no value measured, "
                        f"baseline {fmt_bound(base)})")
    limit = base * (1 + pct / 100)
    need = (f"{'<=' if kind == 'max' else '>='} {fmt_bound(limit)} {unit} required "
            f"(baseline {fmt_bound(base)} {unit}{' from ' + source if source else ''} {pct:+g}%)")
    for who, m in (("figure", metric), ("baseline's figure", base_metric)):
        if m.validity == "invalid":
            return _verdict(metric_name, config, "invalid", f"{label} = {_show(value, None, unit)}: INVALID "
                            f"{who} ({m.validity_reason}); {need} not judged", value=value, bound=limit,
                            baseline_value=base)
    ratio = _ratio_interval(metric, base_metric, stat, samples, base_samples)
    if ratio is None or base <= 0:
        return _verdict(metric_name, config, "inconclusive", f"{label} = {_show(value, None, unit)} {need}: "
                        "INCONCLUSIVE (no confidence interval for the ratio to the baseline)", value=value,
                        bound=limit, baseline_value=base)
    status = _decide(ratio[0], ratio[1], 1 + pct / 100, kind)
    shown = f"{_show(value, None, unit)}, ratio to baseline x{ratio[0]:.3g}–{ratio[1]:.3g}"
    return _verdict(metric_name, config, status, f"{label} = {shown} {need}: {_word(status)}", value=value,
                    bound=limit, baseline_value=base, ci_low=ratio[0] * base, ci_high=ratio[1] * base)


def _ratio_interval(metric: Metric, base: Metric, stat: str, samples: Sequence[float] | None,
                    base_samples: Sequence[float] | None) -> tuple[float, float] | None:
    """95 % CI of figure / baseline: a two-sample bootstrap of the raw samples when both have them, else the
    conservative quotient of the two CIs."""
    if metric.kind == "sample" and samples and base_samples and min(len(samples), len(base_samples)) >= MIN_SAMPLES:
        try:
            est = ratio_ci(samples, base_samples, statistic_named(stat if stat != "value" else "p50"))
        except ValueError:
            return None
        return est.ci_low, est.ci_high
    mine, theirs = interval(metric, stat, samples), interval(base, stat, base_samples)
    if mine is None or theirs is None or theirs[0] <= 0:
        return None
    return mine[0] / theirs[1], mine[1] / theirs[0]


def _word(status: str) -> str:
    return {"pass": "ok", "fail": "FAILED", "inconclusive": "INCONCLUSIVE (the 95% CI straddles the bound)"}[status]


def judge_test(test: TestResult, test_key: str, thresholds: Thresholds | None, config: str,
               params: Mapping[str, object], is_baseline: bool, baseline: Measurement | None,
               baseline_source: str = "") -> list[Verdict]:
    """Assess a test's figures and judge them against every bound of the thresholds file that applies; the
    verdicts are stored on the test record (`baseline_source`: where `baseline` came from, "" = this run)."""
    assess(test)
    verdicts: list[Verdict] = []
    m = test.measurement
    if thresholds is not None and m is not None:
        for metric_name, bound in thresholds.for_test(test_key, config, dict(params)).items():
            verdicts += judge_bound(f"{test_key}.{metric_name}", bound, m.metric(metric_name),
                                    baseline.metric(metric_name) if baseline else None, config, is_baseline,
                                    m.samples.get(metric_name), baseline.samples.get(metric_name) if baseline
                                    else None, baseline_source)
    test.thresholds = verdicts
    return verdicts


def failures(test: TestResult, *, fail_on_gpu_alerts: bool = False) -> list[str]:
    """Why a judged test fails: every bound its figure's CI broke, and GPU alerts when they are set to fail."""
    failed = [v.message for v in test.thresholds if v.status == "fail"]
    if fail_on_gpu_alerts:
        failed += [w for w in test.warnings() if w.startswith("GPU alert")]
    return failed


def unsure(test: TestResult) -> list[str]:
    """Why a test that broke no bound is still not a pass: inconclusive or invalid verdicts, and headline
    figures that are invalid or inconclusive."""
    reasons = [v.message for v in test.thresholds if v.status in ("inconclusive", "invalid")
               or (v.status == "not judged" and NO_BASELINE in v.message)]
    judged = {v.metric.rsplit(".", 1)[1] for v in test.thresholds}
    for name, metric in (test.measurement.metrics.items() if test.measurement else []):
        if metric.headline and metric.validity != "valid" and name not in judged:
            reasons.append(f"{name}: {metric.validity.upper()} ({metric.validity_reason})")
    return reasons


def slo_outcome(verdicts: Sequence[Verdict], load_problem: str | None = None) -> tuple[str, list[str]]:
    """A load probe against an SLO (its bounds' verdicts): "misses" when any bound's CI is wholly on the wrong
    side, "meets" only when every bound passed and the load was delivered as planned (`load_problem`: why not),
    else "inconclusive"; with the messages of the verdicts (and problem) that decided it."""
    failed = [v.message for v in verdicts if v.status == "fail"]
    if failed:
        return "misses", failed
    unsure_ = [v.message for v in verdicts if v.status != "pass"] + ([load_problem] if load_problem else [])
    if unsure_ or not verdicts:
        return "inconclusive", unsure_ or ["no SLO bound judged"]
    return "meets", [v.message for v in verdicts]


def goal_met(goal: list[str], result: ConfigResult) -> bool:
    """Every goal metric was judged on this config and all its bounds passed."""
    return not goal_shortfall(goal, result)


def goal_shortfall(goal: list[str], result: ConfigResult) -> list[str]:
    """Why this config does not meet the goal: each goal bound that did not pass (its verdict's message), and
    each goal metric no bound was judged on; [] when the goal is met."""
    verdicts = result.verdicts()
    reasons = []
    for metric in goal:
        test, name = metric.rsplit(".", 1)
        mine = [v for v in verdicts if v.metric.rsplit(".", 1)[1] == name
                and v.metric.rsplit(".", 1)[0].split("[", 1)[0] in (test, test.split("[", 1)[0])]
        if not mine:
            reasons.append(f"{metric}: not judged on {result.config_name}")
        reasons += [v.message for v in mine if v.status != "pass"]
    return reasons


def _show(value: float | None, ci: tuple[float, float] | None, unit: str) -> str:
    """The value with its 95% CI when it has one."""
    if value is None:
        return "n/a"
    text = f"{fmt_bound(value)} {unit}".strip()
    if ci is not None and ci[0] != ci[1]:
        text += f" [95% CI {fmt_bound(ci[0])}–{fmt_bound(ci[1])}]"
    return text
