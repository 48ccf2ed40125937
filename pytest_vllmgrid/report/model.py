"""The report's content, computed from the results store alone (renderers only format it)."""

from __future__ import annotations

from typing import Any

from pytest_vllmgrid.grid import Grid
from pytest_vllmgrid.numbers import fmt_number as _fmt
from pytest_vllmgrid.results import HIGHER, LOWER, ConfigResult, ResultsStore
from pytest_vllmgrid.stats import ratio_ci

# Preferred primary metrics, in order, when the grid names none.
PRIMARY_PREFERENCE = ["kv_cache.ttft_hit_ms", "ttft.ttft_ms", "ttft.ttft_short_ms", "throughput.output_tok_s"]


def build_report(store: ResultsStore, grid: Grid | None = None, primary: str | None = None) -> dict[str, Any]:
    """Rank configs by the primary metric, add CIs and % vs baseline, failures and a recommendation."""
    manifest = store.manifest()
    results = store.all_configs()
    order = grid.names if grid else list(results)
    order += [n for n in results if n not in order]
    baseline = (grid.baseline if grid else None) or manifest.baseline or (order[0] if order else None)
    rows = [_config_row(name, results[name]) for name in order if name in results]
    base_row = next((r for r in rows if r["name"] == baseline), None)
    for row in rows:
        _add_vs_baseline(row, base_row)
    columns = _headline_columns(rows)
    primary = primary or (grid.spec.primary_metric if grid else None)
    primary = primary or next((p for p in PRIMARY_PREFERENCE if p in columns), next(iter(columns), None))
    ranked = _rank(rows, primary, columns)
    report = {
        "schema_version": 1,
        "run": {k: getattr(manifest, k) for k in ("status", "started", "ended", "grid_file", "grid_hash", "model",
                                             "vllm_version", "package_version", "hardware", "deployer")},
        "results_dir": str(store.root),
        "baseline": baseline,
        "primary_metric": primary,
        "primary_better": columns.get(primary, {}).get("better") if primary else None,
        "columns": columns,
        "configs": ranked,
        "failed": [{"name": r["name"], "reason": r["failure"]} for r in ranked if r["failure"]],
        "skipped": [{"name": r["name"], "reason": r["skip_reason"]} for r in ranked if r["skip_reason"]],
    }
    report["optimal"] = _optimal(report)
    report["tradeoffs"] = _tradeoffs(report)
    report["recommendation"] = _recommendation(report)
    return report


def _config_row(name: str, data: ConfigResult) -> dict[str, Any]:
    """One config's status, deployment and flattened metrics (`test.metric`)."""
    metrics: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[float]] = {}
    warnings: list[str] = []
    tests = {}
    for key, test in data.tests.items():
        tests[key] = {"status": test.status, "message": test.message}
        meas = test.measurement
        if meas is None:
            continue
        for metric_name, metric in meas.metrics.items():
            metrics[f"{key}.{metric_name}"] = metric.model_dump()
        for metric_name, values in meas.samples.items():
            samples[f"{key}.{metric_name}"] = values
        warnings += [f"{key}: {w}" for w in meas.warnings]
    return {"name": name, "status": data.status, "params": data.config_params,
            "config_hash": data.config_hash, "server_version": data.server_version,
            "startup_s": data.deployment.startup_time_seconds, "tests": tests, "metrics": metrics,
            "samples": samples, "warnings": warnings, "failure": data.failure(),
            "errors": [e.model_dump() for e in data.errors], "skip_reason": data.skip_reason}


def _add_vs_baseline(row: dict[str, Any], base: dict[str, Any] | None) -> None:
    """% change of each metric vs the baseline, with a bootstrap CI when both have raw samples."""
    if base is None or row is base:
        return
    for name, metric in row["metrics"].items():
        other = base["metrics"].get(name)
        new, old = point_of(metric), point_of(other) if other else None
        if new is None or old in (None, 0):
            continue
        metric["vs_baseline_pct"] = (new / old - 1) * 100
        a, b = row["samples"].get(name), base["samples"].get(name)
        if a and b and len(a) >= 2 and len(b) >= 2 and sorted(b)[len(b) // 2] != 0:
            try:
                est = ratio_ci(a, b)
            except ValueError:
                continue
            metric["vs_baseline_ci_pct"] = [(est.ci_low - 1) * 100, (est.ci_high - 1) * 100]


def _headline_columns(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Metrics flagged headline by any config, with unit and direction, in first-seen order."""
    cols: dict[str, dict[str, Any]] = {}
    for row in rows:
        for name, metric in row["metrics"].items():
            if metric.get("headline") and name not in cols:
                cols[name] = {"unit": metric.get("unit", ""), "better": metric.get("better")}
    return cols


def _rank(rows: list[dict[str, Any]], primary: str | None, columns: dict[str, Any]) -> list[dict[str, Any]]:
    """Configs with the primary metric first (best first), then the rest in run order."""
    better = columns.get(primary, {}).get("better") if primary else None

    def key(row: dict[str, Any]) -> tuple:
        value = point_of(row["metrics"][primary]) if primary and primary in row["metrics"] else None
        if value is None or row["failure"]:
            return (1, 0.0)
        return (0, -value if better == HIGHER else value)
    ranked = sorted(rows, key=key)
    for i, row in enumerate(ranked, 1):
        row["rank"] = i if key(row)[0] == 0 else None
    return ranked


def _optimal(report: dict[str, Any]) -> dict[str, Any] | None:
    """The best-ranked config, and whether it beats the baseline significantly."""
    primary = report["primary_metric"]
    for row in report["configs"]:
        if row.get("rank") == 1:
            metric = row["metrics"][primary]
            ci = metric.get("vs_baseline_ci_pct")
            better = report["primary_better"]
            significant = bool(ci) and ((ci[1] < 0) if better == LOWER else (ci[0] > 0))
            return {"name": row["name"], "value": point_of(metric), "unit": metric.get("unit"),
                    "vs_baseline_pct": metric.get("vs_baseline_pct"), "vs_baseline_ci_pct": ci,
                    "significant_vs_baseline": significant, "is_baseline": row["name"] == report["baseline"]}
    return None


def _tradeoffs(report: dict[str, Any]) -> list[str]:
    """For each other headline metric, which config is best and how the optimal one fares."""
    lines = []
    optimal = report["optimal"]
    for name, col in report["columns"].items():
        if name == report["primary_metric"] or col.get("better") not in (LOWER, HIGHER):
            continue
        scored = [(point_of(r["metrics"][name]), r["name"]) for r in report["configs"]
                  if name in r["metrics"] and point_of(r["metrics"][name]) is not None and not r["failure"]]
        if len(scored) < 2:
            continue
        best_value, best = (max if col["better"] == HIGHER else min)(scored)
        if optimal and best != optimal["name"]:
            mine = next((v for v, n in scored if n == optimal["name"]), None)
            if mine is not None and best_value:
                gap = (mine / best_value - 1) * 100
                lines.append(f"{name}: best is {best} ({_fmt(best_value)} {col['unit']}); "
                             f"{optimal['name']} is {gap:+.1f}% from it")
    return lines


def _recommendation(report: dict[str, Any]) -> str:
    """One sentence that follows from the numbers."""
    opt = report["optimal"]
    primary = report["primary_metric"]
    if opt is None:
        return "No config produced the primary metric: nothing can be recommended from this run."
    if opt["is_baseline"]:
        return (f"Keep the baseline {opt['name']}: no other config beats its {primary} "
                f"({_fmt(opt['value'])} {opt['unit']}).")
    change = opt.get("vs_baseline_pct")
    ci = opt.get("vs_baseline_ci_pct")
    ci_text = f" (95% CI {ci[0]:+.1f}% to {ci[1]:+.1f}%)" if ci else ""
    change_text = f"{change:+.1f}% vs baseline{ci_text}" if change is not None else "no baseline value to compare"
    if opt["significant_vs_baseline"]:
        return f"Deploy {opt['name']}: best {primary} at {_fmt(opt['value'])} {opt['unit']}, {change_text}."
    return (f"{opt['name']} ranks first on {primary} ({_fmt(opt['value'])} {opt['unit']}, {change_text}), "
            f"but the difference from the baseline {report['baseline']} is not statistically significant: "
            "keep the baseline or measure with more repetitions.")


def point_of(metric: dict[str, Any] | None, stat: str = "p50") -> float | None:
    """The number a report row's metric is ranked and compared by (a sample's p50, else its value)."""
    if not metric:
        return None
    return metric.get(stat) if metric.get("kind") == "sample" else metric.get("value")
