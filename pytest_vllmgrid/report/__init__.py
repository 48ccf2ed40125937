"""Reports: read only the results store, write Markdown, JSON and HTML, print the terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_vllmgrid.atomic import write_json_atomic, write_text_atomic
from pytest_vllmgrid.grid import Grid
from pytest_vllmgrid.report.html import render_store_html
from pytest_vllmgrid.report.model import build_report
from pytest_vllmgrid.report.markdown import render_markdown, render_terminal
from pytest_vllmgrid.report.plots import telemetry_series_by_config
from pytest_vllmgrid.report.telemetry import telemetry_markdown
from pytest_vllmgrid.telemetry import TelemetrySeries
from pytest_vllmgrid.results import ResultsStore

__all__ = ["write_reports", "terminal_table", "build_report"]


def write_reports(store: ResultsStore, grid: Grid | None = None) -> dict[str, Path]:
    """Write report.md, report.json and a self-contained report.html into the results directory; return their paths."""
    report = build_report(store, grid)
    paths = {"markdown": store.root / "report.md", "json": store.root / "report.json",
             "html": store.root / "report.html"}
    write_text_atomic(paths["markdown"], render_markdown(report) + "\n" + telemetry_section(store.all_configs()))
    write_json_atomic(paths["json"], report)
    write_text_atomic(paths["html"], render_store_html(store, report))
    return paths


def telemetry_section(results: dict[str, dict[str, Any]]) -> str:
    """The report's GPU telemetry section: per-config tables and alerts, or why telemetry was unavailable."""
    series = telemetry_series_by_config(results)
    for name, data in results.items():
        if name in series:
            continue
        reasons = {(((t.get("measurement") or {}).get("info") or {}).get("telemetry") or {}).get("unavailable")
                   for t in (data.get("tests") or {}).values()} - {None}
        if reasons:
            series[name] = TelemetrySeries.unavailable("; ".join(sorted(reasons)))
    return telemetry_markdown(series)


def terminal_table(store: ResultsStore, grid: Grid | None = None) -> list[str]:
    """The ranked table as terminal lines."""
    return render_terminal(build_report(store, grid))
