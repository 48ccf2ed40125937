"""The report's content, computed from the results store alone (renderers only format it).

`build_report` returns a `Report`; report.json is its `model_dump(mode="json")`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from pytest_vllmgrid.grid import Grid
from pytest_vllmgrid.judge import PERCENT_UNITS, goal_shortfall
from pytest_vllmgrid.numbers import fmt_number as _fmt
from pytest_vllmgrid.report.capacity import capacity_sentence
from pytest_vllmgrid.report.anomalies import AnomalyGroup, group_warnings
from pytest_vllmgrid.report.usecases import Checklist, UseCase, checklist, use_cases
from pytest_vllmgrid.results import (HIGHER, LOWER, ConfigResult, ErrorLine, JsonObject, Machine, Metric, ResultsStore,
                                     placement_note)
from pytest_vllmgrid.results.models import Better, EffectiveConfig, ResumeRecord
from pytest_vllmgrid.stats import ratio_ci

# Preferred primary metrics, in order, when the grid names none.
PRIMARY_PREFERENCE = ["kv_cache.ttft_hit_ms", "ttft.ttft_ms", "ttft.ttft_short_ms", "throughput.output_tok_s"]


def _dump_without_none(model: BaseModel, handler: SerializerFunctionWrapHandler, keys: tuple[str, ...]) -> JsonObject:
    """The model's dump with `keys` left out where they are None (report.json never had them then)."""
    data = handler(model)
    for key in keys:
        if data.get(key) is None:
            data.pop(key, None)
    return data


class _ReportModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RowMetric(Metric):
    """A config's stored metric plus its change vs the baseline: % for times and rates (with a bootstrap CI
    when both have samples), percentage points for a percentage (never a % change of a %)."""

    vs_baseline_pct: float | None = None
    vs_baseline_ci_pct: list[float] | None = None
    vs_baseline_pts: float | None = None
    vs_baseline_ci_pts: list[float] | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> JsonObject:
        return _dump_without_none(self, handler, ("vs_baseline_pct", "vs_baseline_ci_pct", "vs_baseline_pts",
                                                  "vs_baseline_ci_pts"))


class TestOutcome(_ReportModel):
    """One benchmark's pytest outcome on a config."""

    __test__ = False  # not a pytest test class
    status: str
    message: str | None = None


class ConfigRow(_ReportModel):
    """One config's status, deployment and flattened metrics (`test.metric`)."""

    name: str
    status: str
    params: JsonObject = Field(default_factory=dict)
    config_hash: str | None = None
    server_version: str | None = None
    startup_s: float | None = None
    tests: dict[str, TestOutcome] = Field(default_factory=dict)
    metrics: dict[str, RowMetric] = Field(default_factory=dict)
    samples: dict[str, list[float]] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    failure: str | None = None
    errors: list[ErrorLine] = Field(default_factory=list)
    skip_reason: str | None = None
    rank: int | None = None  # 1 = best on the primary metric; None = not ranked (no value, failed, not valid)
    unmet: list[str] = Field(default_factory=list)  # threshold verdicts that did not pass (fail/inconclusive/invalid)
    goal_unmet: list[str] | None = None  # why it misses the run's goal ([] = meets it; None = the run has no goal)
    host: str | None = None  # where it was measured (None: not recorded, e.g. an older result)
    gpu_uuids: list[str] | None = None
    effective: EffectiveConfig | None = None  # what the server showed it runs (None: not read, e.g. an older result)

    def machine(self) -> Machine | None:
        """Where this config was measured, when its result says."""
        return Machine(host=self.host, gpu_uuids=self.gpu_uuids) if self.host else None

    def failed_tests(self) -> list[tuple[str, TestOutcome]]:
        """(test key, outcome) of the benchmarks that failed, errored or could not decide."""
        return [(key, test) for key, test in self.tests.items() if test.status in ("failed", "error", "inconclusive")]


class Column(_ReportModel):
    """A headline metric of the ranking table."""

    unit: str = ""
    better: Better | None = None


class ConfigNote(_ReportModel):
    """A config that failed or was skipped, and why."""

    name: str
    reason: str


class Optimal(_ReportModel):
    """The best-ranked config, and whether it beats the baseline significantly."""

    name: str
    value: float | None = None
    unit: str = ""
    vs_baseline_pct: float | None = None
    vs_baseline_ci_pct: list[float] | None = None
    significant_vs_baseline: bool = False
    is_baseline: bool = False
    runner_up: str | None = None  # the next valid config, when the two cannot be told apart
    separated_from_runner_up: bool = True
    unmet: list[str] = Field(default_factory=list)  # its own criteria that did not pass
    meets_goal: bool | None = None  # None: the run has no goal
    goal_unmet: list[str] = Field(default_factory=list)  # why it misses the goal
    caveat: str = ""  # "but it does NOT meet the goal: ..." (every rendering shows it beside the name); "" = none


class RunInfo(_ReportModel):
    """What ran, from the run manifest."""

    status: str | None = None
    started: str | None = None
    ended: str | None = None
    grid_file: str | None = None
    grid_hash: str | None = None
    model: str | None = None
    vllm_version: str | None = None
    package_version: str | None = None
    hardware: JsonObject = Field(default_factory=dict)
    deployer: str | None = None
    resumes: list[ResumeRecord] = Field(default_factory=list)  # `started` stays the first session's


class ExtensionSection(_ReportModel):
    """An extra report.md section from hook pytest_vllmgrid_report_sections."""

    title: str
    markdown: str


class ExtensionColumn(_ReportModel):
    """An extra ranking-table column from hook pytest_vllmgrid_report_columns: config name -> cell."""

    title: str
    cells: dict[str, str] = Field(default_factory=dict)


class Extensions(_ReportModel):
    """What the report hooks added (report/__init__.py's extensions())."""

    sections: list[ExtensionSection] = Field(default_factory=list)
    columns: list[ExtensionColumn] = Field(default_factory=list)


class NoiseEstimate(_ReportModel):
    """How far two deployments of the same flags landed apart on one headline metric."""

    metric: str
    pairs: list[str]  # "a vs a~2" for each pair of identical deployments that measured it
    spread_pct: float  # the largest |change| between two identical deployments, in % (points for a %)
    unit: str = ""
    source: str | None = None  # None: measured in this run; else the stored run(s) it comes from (--vllm-noise-from)


class Report(_ReportModel):
    """The whole report: ranked config rows, the optimal config, trade-offs, failures and a recommendation."""

    schema_version: int = 1
    run: RunInfo = Field(default_factory=RunInfo)
    results_dir: str
    baseline: str | None = None
    primary_metric: str | None = None
    primary_better: Better | None = None
    columns: dict[str, Column] = Field(default_factory=dict)
    configs: list[ConfigRow] = Field(default_factory=list)
    failed: list[ConfigNote] = Field(default_factory=list)
    skipped: list[ConfigNote] = Field(default_factory=list)
    left_out: list[ConfigNote] = Field(default_factory=list)  # not ranked: the primary figure is not valid
    excluded: list[ConfigNote] = Field(default_factory=list)  # every config not ranked, and why (beside the pick)
    anomalies: list[AnomalyGroup] = Field(default_factory=list)  # warnings grouped by (kind, config), with counts
    use_cases: list[UseCase] = Field(default_factory=list)  # recommendations per use case (report/usecases.py)
    checklist: Checklist | None = None  # the recommended config's deployment checklist
    noise: list[NoiseEstimate] = Field(default_factory=list)  # between-deployment noise (A/A pairs, replicas)
    goal: list[str] = Field(default_factory=list)  # the thresholds file's goal metrics (from the run manifest)
    goal_met_by: list[str] = Field(default_factory=list)  # ranked configs that meet every goal bound
    crosses_machines: bool = False  # the measured configs ran on more than one host or GPU set
    machines_note: str = ""  # which configs ran where, when that matters for the comparison
    optimal: Optimal | None = None
    tradeoffs: list[str] = Field(default_factory=list)
    recommendation: str = ""
    extensions: Extensions | None = None  # only when a report hook returned something

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> JsonObject:
        return _dump_without_none(self, handler, ("extensions",))


def build_report(store: ResultsStore, grid: Grid | None = None, primary: str | None = None) -> Report:
    """Rank configs by the primary metric, add CIs and % vs baseline, failures and a recommendation."""
    manifest = store.manifest()
    results = store.all_configs()
    order = grid.names if grid else list(results)
    order += [n for n in results if n not in order]
    baseline = (grid.baseline if grid else None) or manifest.baseline or (order[0] if order else None)
    rows = [_config_row(name, results[name], manifest.goal) for name in order if name in results]
    base_row = next((r for r in rows if r.name == baseline), None)
    for row in rows:
        _add_vs_baseline(row, base_row)
    columns = _headline_columns(rows)
    primary = primary or (grid.spec.primary_metric if grid else None) or manifest.primary_metric
    primary = primary or next((p for p in PRIMARY_PREFERENCE if p in columns), next(iter(columns), None))
    primary_column = columns.get(primary) if primary else None
    every = {name: Column(unit=m.unit, better=m.better) for row in rows for name, m in row.metrics.items()}
    noise = between_deployment_noise(rows, {name: results[name].config_hash for name in results}, every)
    if not noise and manifest.noise_from:
        noise = stored_noise(manifest.noise_from)
    ranked = _rank(rows, primary, primary_column.better if primary_column else None)
    measured = {r.name: r.machine() for r in rows if r.metrics}  # in run order
    report = Report(
        run=RunInfo.model_validate(manifest.model_dump(include=set(RunInfo.model_fields))),
        results_dir=str(store.root), baseline=baseline, primary_metric=primary,
        primary_better=primary_column.better if primary_column else None, columns=columns, configs=ranked,
        failed=[ConfigNote(name=r.name, reason=r.failure) for r in ranked if r.failure],
        skipped=[ConfigNote(name=r.name, reason=r.skip_reason) for r in ranked if r.skip_reason],
        noise=noise, goal=manifest.goal,
        goal_met_by=[r.name for r in ranked if r.rank is not None and r.goal_unmet == []],
        crosses_machines=len({m.key() for m in measured.values() if m is not None}) > 1,
        machines_note=placement_note(measured),
        left_out=[ConfigNote(name=r.name, reason=f"{primary} {m.validity}: {m.validity_reason}")
                  for r in ranked if not r.failure and primary and (m := r.metrics.get(primary)) is not None
                  and m.validity != "valid"],
    )
    report.excluded = _excluded(report)
    report.anomalies = [g for row in ranked for g in group_warnings(row.name, row.warnings)]
    report.optimal = _optimal(report)
    report.tradeoffs = _tradeoffs(report)
    report.recommendation = _recommendation(report)
    report.use_cases = use_cases(ranked, primary, manifest.profiles)
    picked = next((r for r in ranked if report.optimal and r.name == report.optimal.name), None)
    report.checklist = checklist(picked, ranked, results.get(picked.name)) if picked else None
    return report


def _excluded(report: Report) -> list[ConfigNote]:
    """Each config left out of the ranking, with why: failed, not run, interrupted, figure not valid or absent."""
    out = []
    for row in report.configs:
        if row.rank is not None:
            continue
        metric = row.metrics.get(report.primary_metric or "")
        if row.failure:
            why = row.failure
        elif row.skip_reason:
            why = f"not run ({row.skip_reason})"
        elif metric is not None and metric.validity != "valid":
            why = f"{report.primary_metric} {metric.validity}: {metric.validity_reason}"
        else:
            why = f"no {report.primary_metric} figure"
        if row.status not in ("complete", "skipped") and not row.failure:
            why = f"{row.status}: {why}"
        out.append(ConfigNote(name=row.name, reason=why))
    return out


def _config_row(name: str, data: ConfigResult, goal: list[str]) -> ConfigRow:
    """One config's status, deployment, where it ran, its criteria and goal, and flattened metrics (`test.metric`)."""
    row = ConfigRow(name=name, status=data.status, params=data.config_params, config_hash=data.config_hash,
                    server_version=data.server_version, startup_s=data.deployment.startup_time_seconds,
                    failure=data.failure(), errors=data.errors, skip_reason=data.skip_reason,
                    unmet=[v.message for v in data.verdicts() if v.status not in ("pass", "not judged")],
                    goal_unmet=goal_shortfall(goal, data) if goal else None, host=data.deployment.host,
                    gpu_uuids=data.deployment.gpu_uuids, effective=data.deployment.effective)
    for key, test in data.tests.items():
        row.tests[key] = TestOutcome(status=test.status, message=test.message)
        meas = test.measurement
        if meas is None:
            continue
        for metric_name, metric in meas.metrics.items():
            row.metrics[f"{key}.{metric_name}"] = RowMetric.model_validate(metric.model_dump())
        for metric_name, values in meas.samples.items():
            row.samples[f"{key}.{metric_name}"] = values
        row.warnings += [f"{key}: {w}" for w in meas.warnings]
    return row


def _add_vs_baseline(row: ConfigRow, base: ConfigRow | None) -> None:
    """% change of each metric vs the baseline, with a bootstrap CI when both have raw samples."""
    if base is None or row is base:
        return
    for name, metric in row.metrics.items():
        other = base.metrics.get(name)
        new, old = metric.point(), other.point() if other else None
        if new is None or old is None or metric.validity == "invalid" or other.validity == "invalid":
            continue
        if metric.unit in PERCENT_UNITS:  # a percentage moves in points
            metric.vs_baseline_pts = new - old
            if metric.ci is not None and other.ci is not None:
                metric.vs_baseline_ci_pts = [metric.ci[0] - other.ci[1], metric.ci[1] - other.ci[0]]
            continue
        if old == 0:
            continue
        metric.vs_baseline_pct = (new / old - 1) * 100
        if metric.kind == "value" and metric.ci is not None and other.ci is not None and other.ci[0] > 0:
            metric.vs_baseline_ci_pct = [(metric.ci[0] / other.ci[1] - 1) * 100, (metric.ci[1] / other.ci[0] - 1) * 100]
            continue
        a, b = row.samples.get(name), base.samples.get(name)
        if a and b and len(a) >= 2 and len(b) >= 2 and sorted(b)[len(b) // 2] != 0:
            try:
                est = ratio_ci(a, b)
            except ValueError:
                continue
            metric.vs_baseline_ci_pct = [(est.ci_low - 1) * 100, (est.ci_high - 1) * 100]


def _headline_columns(rows: list[ConfigRow]) -> dict[str, Column]:
    """Metrics flagged headline by any config, with unit and direction, in first-seen order."""
    cols: dict[str, Column] = {}
    for row in rows:
        for name, metric in row.metrics.items():
            if metric.headline and name not in cols:
                cols[name] = Column(unit=metric.unit, better=metric.better)
    return cols


def _rank(rows: list[ConfigRow], primary: str | None, better: Better | None) -> list[ConfigRow]:
    """Configs with the primary metric first (best first), then the rest in run order."""
    def key(row: ConfigRow) -> tuple[int, float]:
        metric = row.metrics.get(primary) if primary else None
        value = metric.point() if metric is not None and metric.validity == "valid" else None
        if value is None or row.failure:
            return (1, 0.0)
        return (0, -value if better == HIGHER else value)
    ranked = sorted(rows, key=key)
    for i, row in enumerate(ranked, 1):
        row.rank = i if key(row)[0] == 0 else None
    return ranked


def _optimal(report: Report) -> Optimal | None:
    """The best-ranked config, whether it beats the baseline significantly, and whether it can be told apart
    from the runner-up at all."""
    primary = report.primary_metric
    ranked = sorted((r for r in report.configs if r.rank is not None), key=lambda r: r.rank or 0)
    if not ranked or primary is None:
        return None
    row = ranked[0]
    metric = row.metrics[primary]
    ci = metric.vs_baseline_ci_pct
    delta = noise_pct(report, primary)
    significant = bool(ci) and ((ci[1] < -delta) if report.primary_better == LOWER else (ci[0] > delta))
    runner_up = ranked[1] if len(ranked) > 1 else None
    separated = runner_up is None or _separated(row, runner_up, primary, delta)
    optimal = Optimal(name=row.name, value=metric.point(), unit=metric.unit,
                      vs_baseline_pct=metric.vs_baseline_pct, vs_baseline_ci_pct=ci,
                      significant_vs_baseline=significant, is_baseline=row.name == report.baseline,
                      runner_up=runner_up.name if runner_up else None, separated_from_runner_up=separated,
                      unmet=row.unmet, meets_goal=None if row.goal_unmet is None else not row.goal_unmet,
                      goal_unmet=row.goal_unmet or [])
    optimal.caveat = _caveat(optimal, report.goal_met_by)
    return optimal


def _caveat(opt: Optimal, goal_met_by: list[str]) -> str:
    """What the best-ranked config fails, said beside its name wherever it is named: its goal first, then its
    other criteria, then which configs meet the goal; '' when it fails nothing."""
    if opt.meets_goal is False:
        others = [m for m in opt.unmet if m not in opt.goal_unmet]
        text = f"but it does NOT meet the goal: {'; '.join(opt.goal_unmet)}"
        text += f"; nor its other criteria: {'; '.join(others)}" if others else ""
        met = f"; the goal is met by {', '.join(goal_met_by)}" if goal_met_by else "; no config meets the goal"
        return text + met
    if opt.unmet:
        return f"but it does NOT meet its own criteria: {'; '.join(opt.unmet)}"
    return ""


def _separated(a: ConfigRow, b: ConfigRow, name: str, noise: float = 0.0) -> bool:
    """True when two configs' figures differ significantly, beyond the between-deployment noise (`noise` %):
    a bootstrap CI of their ratio that stays outside [1 - noise, 1 + noise] when both have raw samples, else
    CIs that stay that far apart."""
    band = noise / 100
    sa, sb = a.samples.get(name), b.samples.get(name)
    if sa and sb and len(sa) >= 2 and len(sb) >= 2 and min(sb) > 0:
        try:
            est = ratio_ci(sa, sb)
        except ValueError:
            return False
        return est.ci_high < 1.0 - band or est.ci_low > 1.0 + band
    ca, cb = a.metrics[name].ci, b.metrics[name].ci
    if ca is None or cb is None:
        return False
    return ca[1] * (1 + band) < cb[0] or cb[1] * (1 + band) < ca[0]


def between_deployment_noise(rows: list[ConfigRow], hashes: dict[str, str | None],
                             columns: dict[str, Column]) -> list[NoiseEstimate]:
    """For each headline metric, the largest change seen between two deployments of identical flags (same
    config hash: an A/A grid's twins, or --vllm-replicas' copies): what a config-to-config difference must exceed."""
    groups: dict[str, list[ConfigRow]] = {}
    for row in rows:
        if not row.failure and hashes.get(row.name):
            groups.setdefault(hashes[row.name] or "", []).append(row)
    twins = [(g[0], other) for g in groups.values() if len(g) > 1 for other in g[1:]]
    out = []
    for name, column in columns.items():
        spreads, pairs = [], []
        for first, other in twins:
            a, b = first.metrics.get(name), other.metrics.get(name)
            va, vb = (a.point() if a else None), (b.point() if b else None)
            if va is None or vb is None or a.validity == "invalid" or b.validity == "invalid":
                continue
            if column.unit in PERCENT_UNITS:
                spreads.append(abs(vb - va))
            elif va:
                spreads.append(abs(vb / va - 1) * 100)
            else:
                continue
            pairs.append(f"{first.name} vs {other.name}")
        if spreads:
            out.append(NoiseEstimate(metric=name, pairs=pairs, spread_pct=max(spreads), unit=column.unit))
    return out


def measured_noise(store: ResultsStore) -> list[NoiseEstimate]:
    """The between-deployment noise a stored run's own twins measured (what build_report computes), without
    building the rest of its report."""
    results = store.all_configs()
    rows = [_config_row(name, result, []) for name, result in results.items()]
    every = {name: Column(unit=m.unit, better=m.better) for row in rows for name, m in row.metrics.items()}
    return between_deployment_noise(rows, {name: r.config_hash for name, r in results.items()}, every)


def stored_noise(run_dirs: Sequence[str]) -> list[NoiseEstimate]:
    """Between-deployment noise measured by stored runs (an A/A grid's twins, --vllm-replicas' copies), for a run
    that has no twins of its own: per metric the largest spread any of them saw, with where it comes from."""
    merged: dict[str, NoiseEstimate] = {}
    for run_dir in run_dirs:
        for est in measured_noise(ResultsStore(Path(run_dir))):
            pairs = [f"{pair} ({Path(run_dir).name})" for pair in est.pairs]
            have = merged.get(est.metric)
            if have is None:
                merged[est.metric] = est.model_copy(update={"pairs": pairs, "source": str(run_dir)})
                continue
            have.pairs += pairs
            have.source = f"{have.source}, {run_dir}"
            have.spread_pct = max(have.spread_pct, est.spread_pct)
    return list(merged.values())


def noise_reference_dirs(values: Sequence[str] | None) -> list[str]:
    """--vllm-noise-from's directories, checked before anything deploys: each must be a stored run with two
    deployments of identical flags (ValueError, one line, otherwise)."""
    dirs = [part for value in values or () for part in str(value).split(",") if part]
    for run_dir in dirs:
        store = ResultsStore(Path(run_dir))
        if not store.root.is_dir() or not store.all_configs():
            raise ValueError(f"--vllm-noise-from {run_dir}: not a results directory with config results")
        if not measured_noise(store):
            raise ValueError(f"--vllm-noise-from {run_dir}: no two deployments of identical flags measured the same "
                             "figure there (run an A/A grid such as configs/aa-cpu.yaml, or --vllm-replicas 2)")
    return dirs


def noise_pct(report: Report, metric: str | None) -> float:
    """The between-deployment spread measured on this metric in this run, in % (0 when not measured)."""
    return next((n.spread_pct for n in report.noise if n.metric == metric), 0.0)


def _tradeoffs(report: Report) -> list[str]:
    """For each other headline metric, which config is best and how the optimal one fares."""
    lines = []
    optimal = report.optimal
    for name, col in report.columns.items():
        if name == report.primary_metric or col.better not in (LOWER, HIGHER):
            continue
        scored = [(value, r.name) for r in report.configs if name in r.metrics and not r.failure
                  and r.metrics[name].validity == "valid" and (value := r.metrics[name].point()) is not None]
        if optimal and report.baseline not in {n for _, n in scored}:
            lines += _worse_than_baseline(report, name, col)
        if len(scored) < 2:
            continue
        best_value, best = (max if col.better == HIGHER else min)(scored)
        if optimal and best != optimal.name:
            mine = next((v for v, n in scored if n == optimal.name), None)
            if mine is not None and col.unit in PERCENT_UNITS:  # a percentage moves in points
                lines.append(f"{name}: best is {best} ({_fmt(best_value)} {col.unit}); "
                             f"{optimal.name} is {mine - best_value:+.1f} pts from it")
            elif mine is not None and best_value:
                gap = (mine / best_value - 1) * 100
                lines.append(f"{name}: best is {best} ({_fmt(best_value)} {col.unit}); "
                             f"{optimal.name} is {gap:+.1f}% from it")
    return lines


def _worse_than_baseline(report: Report, name: str, col: Column) -> list[str]:
    """The optimal config's figure significantly worse than the baseline's, when the baseline is not among the
    configs compared above (it failed, or its figure is partial): the change vs the baseline is the only one left."""
    row = next((r for r in report.configs if report.optimal and r.name == report.optimal.name), None)
    metric = row.metrics.get(name) if row else None
    if metric is None:
        return []
    if metric.vs_baseline_pts is not None:
        change, ci, unit = metric.vs_baseline_pts, metric.vs_baseline_ci_pts, " pts"
    else:
        change, ci, unit = metric.vs_baseline_pct, metric.vs_baseline_ci_pct, "%"
    if change is None or ci_side(ci, col.better) != "worse":
        return []
    return [f"{name}: {row.name} is {change:+.1f}{unit} vs the baseline {report.baseline} "
            f"(95% CI {ci[0]:+.1f} to {ci[1]:+.1f}){baseline_state(report)}: worse"]


def _recommendation(report: Report) -> str:
    """One sentence that follows from the valid figures, with what it rests on and what it cannot claim: a config
    that misses its goal or criteria is named with that shortfall in the same sentence, and a comparison across
    machines says so."""
    loads = capacity_sentence({r.name: r.metrics for r in report.configs if not r.failure}, report.baseline)
    return _verdict_sentence(report) + loads + (f" Caution: {report.machines_note}." if report.machines_note else "")


def _verdict_sentence(report: Report) -> str:
    opt = report.optimal
    primary = report.primary_metric
    left = f" Not ranked (figure not valid): {', '.join(n.name for n in report.left_out)}." if report.left_out else ""
    if opt is None:
        what = primary or "primary metric"
        return f"No config produced a valid {what}: nothing can be recommended from this run.{left}"
    change = opt.vs_baseline_pct
    ci = opt.vs_baseline_ci_pct
    ci_text = f" (95% CI {ci[0]:+.1f}% to {ci[1]:+.1f}%)" if ci else ""
    change_text = f"{change:+.1f}% vs baseline{ci_text}" if change is not None else "no baseline value to compare"
    if opt.caveat:
        where = "" if opt.is_baseline else f", {change_text}"
        apart = ("" if opt.separated_from_runner_up else
                 f" Nor can it be told apart from {opt.runner_up} (the 95% CIs do not separate).")
        return (f"{opt.name} is the best measured on {primary} ({_fmt(opt.value)} {opt.unit}{where}), "
                f"{opt.caveat}.{apart}{left}")
    if not opt.separated_from_runner_up:
        return (f"No significant difference on {primary} between {opt.name} ({_fmt(opt.value)} {opt.unit}) and "
                f"{opt.runner_up}: the 95% CIs do not separate; keep the baseline {report.baseline} or measure with "
                f"more repetitions.{left}")
    if opt.is_baseline:
        others = "no other ranked config" if report.excluded else "no other config"
        return (f"Keep the baseline {opt.name}: {others} beats its {primary} "
                f"({_fmt(opt.value)} {opt.unit}).{left}")
    if opt.significant_vs_baseline:
        return f"Deploy {opt.name}: best {primary} at {_fmt(opt.value)} {opt.unit}, {change_text}.{left}"
    side = ci_side(ci, report.primary_better)
    base = baseline_state(report)
    mine = next((r.metrics.get(primary or "") for r in report.configs if r.name == opt.name), None)
    if mine is not None and mine.vs_baseline_pct is None and mine.vs_baseline_pts is None:
        return (f"{opt.name} ranks first on {primary} ({_fmt(opt.value)} {opt.unit}), but the baseline "
                f"{report.baseline} has no valid {primary} figure to compare it with{base}: measure the baseline "
                f"again before deploying it.{left}")
    if side == "worse":
        return (f"{opt.name} ranks first among the ranked configs on {primary} ({_fmt(opt.value)} {opt.unit}), "
                f"but it is significantly worse than the baseline {report.baseline}: {change_text}{base}; "
                f"do not deploy it on this evidence.{left}")
    if side == "better":
        return (f"{opt.name} ranks first on {primary} ({_fmt(opt.value)} {opt.unit}, {change_text}{base}), "
                f"better than the baseline {report.baseline} but within the between-deployment noise "
                f"(±{noise_pct(report, primary):.1f}%): keep the baseline or measure with more repetitions.{left}")
    return (f"{opt.name} ranks first on {primary} ({_fmt(opt.value)} {opt.unit}, {change_text}{base}), "
            f"but the difference from the baseline {report.baseline} is not statistically significant: "
            f"keep the baseline or measure with more repetitions.{left}")


def ci_side(ci: list[float] | None, better: Better | None) -> str | None:
    """'better' / 'worse' when a CI of a change vs the baseline excludes 0 on that side; None when it covers 0."""
    if not ci or better not in (LOWER, HIGHER) or ci[0] <= 0 <= ci[1]:
        return None
    return "better" if (ci[1] < 0) == (better == LOWER) else "worse"


def baseline_state(report: Report) -> str:
    """` (the baseline failed: REASON; its figures are partial)` when the baseline is not a complete run; ''."""
    row = next((r for r in report.configs if r.name == report.baseline), None)
    if row is None or (row.status == "complete" and not row.failure):
        return ""
    return f" (the baseline {row.status}: {row.failure or row.skip_reason or 'incomplete'}; its figures are partial)"
