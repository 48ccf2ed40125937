"""The report's content, computed from the results store alone (renderers only format it).

`build_report` returns a `Report`; report.json is its `model_dump(mode="json")`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from pytest_vllmgrid.grid import Grid
from pytest_vllmgrid.numbers import fmt_number as _fmt
from pytest_vllmgrid.results import HIGHER, LOWER, ConfigResult, ErrorLine, JsonObject, Metric, ResultsStore
from pytest_vllmgrid.results.models import Better
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
    """A config's stored metric plus its % change vs the baseline (with a bootstrap CI when both have samples)."""

    vs_baseline_pct: float | None = None
    vs_baseline_ci_pct: list[float] | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> JsonObject:
        return _dump_without_none(self, handler, ("vs_baseline_pct", "vs_baseline_ci_pct"))


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
    rank: int | None = None  # 1 = best on the primary metric; None = not ranked (no value, or failed)

    def failed_tests(self) -> list[tuple[str, TestOutcome]]:
        """(test key, outcome) of the benchmarks that failed or errored."""
        return [(key, test) for key, test in self.tests.items() if test.status in ("failed", "error")]


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
    rows = [_config_row(name, results[name]) for name in order if name in results]
    base_row = next((r for r in rows if r.name == baseline), None)
    for row in rows:
        _add_vs_baseline(row, base_row)
    columns = _headline_columns(rows)
    primary = primary or (grid.spec.primary_metric if grid else None)
    primary = primary or next((p for p in PRIMARY_PREFERENCE if p in columns), next(iter(columns), None))
    primary_column = columns.get(primary) if primary else None
    ranked = _rank(rows, primary, primary_column.better if primary_column else None)
    report = Report(
        run=RunInfo.model_validate(manifest.model_dump(include=set(RunInfo.model_fields))),
        results_dir=str(store.root), baseline=baseline, primary_metric=primary,
        primary_better=primary_column.better if primary_column else None, columns=columns, configs=ranked,
        failed=[ConfigNote(name=r.name, reason=r.failure) for r in ranked if r.failure],
        skipped=[ConfigNote(name=r.name, reason=r.skip_reason) for r in ranked if r.skip_reason],
    )
    report.optimal = _optimal(report)
    report.tradeoffs = _tradeoffs(report)
    report.recommendation = _recommendation(report)
    return report


def _config_row(name: str, data: ConfigResult) -> ConfigRow:
    """One config's status, deployment and flattened metrics (`test.metric`)."""
    row = ConfigRow(name=name, status=data.status, params=data.config_params, config_hash=data.config_hash,
                    server_version=data.server_version, startup_s=data.deployment.startup_time_seconds,
                    failure=data.failure(), errors=data.errors, skip_reason=data.skip_reason)
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
        if new is None or old in (None, 0):
            continue
        metric.vs_baseline_pct = (new / old - 1) * 100
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
        value = row.metrics[primary].point() if primary and primary in row.metrics else None
        if value is None or row.failure:
            return (1, 0.0)
        return (0, -value if better == HIGHER else value)
    ranked = sorted(rows, key=key)
    for i, row in enumerate(ranked, 1):
        row.rank = i if key(row)[0] == 0 else None
    return ranked


def _optimal(report: Report) -> Optimal | None:
    """The best-ranked config, and whether it beats the baseline significantly."""
    for row in report.configs:
        if row.rank == 1 and report.primary_metric is not None:
            metric = row.metrics[report.primary_metric]
            ci = metric.vs_baseline_ci_pct
            significant = bool(ci) and ((ci[1] < 0) if report.primary_better == LOWER else (ci[0] > 0))
            return Optimal(name=row.name, value=metric.point(), unit=metric.unit,
                           vs_baseline_pct=metric.vs_baseline_pct, vs_baseline_ci_pct=ci,
                           significant_vs_baseline=significant, is_baseline=row.name == report.baseline)
    return None


def _tradeoffs(report: Report) -> list[str]:
    """For each other headline metric, which config is best and how the optimal one fares."""
    lines = []
    optimal = report.optimal
    for name, col in report.columns.items():
        if name == report.primary_metric or col.better not in (LOWER, HIGHER):
            continue
        scored = [(value, r.name) for r in report.configs if name in r.metrics and not r.failure
                  and (value := r.metrics[name].point()) is not None]
        if len(scored) < 2:
            continue
        best_value, best = (max if col.better == HIGHER else min)(scored)
        if optimal and best != optimal.name:
            mine = next((v for v, n in scored if n == optimal.name), None)
            if mine is not None and best_value:
                gap = (mine / best_value - 1) * 100
                lines.append(f"{name}: best is {best} ({_fmt(best_value)} {col.unit}); "
                             f"{optimal.name} is {gap:+.1f}% from it")
    return lines


def _recommendation(report: Report) -> str:
    """One sentence that follows from the numbers."""
    opt = report.optimal
    primary = report.primary_metric
    if opt is None:
        return "No config produced the primary metric: nothing can be recommended from this run."
    if opt.is_baseline:
        return (f"Keep the baseline {opt.name}: no other config beats its {primary} "
                f"({_fmt(opt.value)} {opt.unit}).")
    change = opt.vs_baseline_pct
    ci = opt.vs_baseline_ci_pct
    ci_text = f" (95% CI {ci[0]:+.1f}% to {ci[1]:+.1f}%)" if ci else ""
    change_text = f"{change:+.1f}% vs baseline{ci_text}" if change is not None else "no baseline value to compare"
    if opt.significant_vs_baseline:
        return f"Deploy {opt.name}: best {primary} at {_fmt(opt.value)} {opt.unit}, {change_text}."
    return (f"{opt.name} ranks first on {primary} ({_fmt(opt.value)} {opt.unit}, {change_text}), "
            f"but the difference from the baseline {report.baseline} is not statistically significant: "
            "keep the baseline or measure with more repetitions.")
