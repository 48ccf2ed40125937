"""Reports: read only the results store, write Markdown, JSON and HTML, print the terminal table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_vllmgrid.atomic import write_json_atomic, write_text_atomic
from pytest_vllmgrid.grid import Grid
from pytest_vllmgrid.report.html import render_store_html
from pytest_vllmgrid.report.model import Extensions, Report, build_report
from pytest_vllmgrid.report.markdown import render_extension_sections, render_markdown, render_terminal
from pytest_vllmgrid.report.plots import telemetry_series_by_config
from pytest_vllmgrid.report.correctness import correctness_markdown
from pytest_vllmgrid.report.telemetry import config_telemetry_markdown
from pytest_vllmgrid.telemetry import TelemetrySeries
from pytest_vllmgrid.results import ConfigResult, JsonObject, ResultsStore

__all__ = ["write_reports", "terminal_table", "build_report", "Report"]


def write_reports(store: ResultsStore, grid: Grid | None = None, *, sections: list | None = None,
                  columns: list | None = None) -> dict[str, Path]:
    """Write report.md, report.json and a self-contained report.html into the results directory; return their paths.

    `sections` / `columns`: what the plugin's hooks pytest_vllmgrid_report_sections / _report_columns returned
    (one result per implementation; see extensions()): extra Markdown sections at the end of report.md and extra
    columns of its ranking table, also kept in report.json under `extensions`."""
    report = build_report(store, grid)
    if sections or columns:
        report.extensions = report_extensions(sections, columns)
    paths = {"markdown": store.root / "report.md", "json": store.root / "report.json",
             "html": store.root / "report.html"}
    write_text_atomic(paths["markdown"], render_markdown(report) + "\n" + telemetry_section(store.all_configs())
                      + correctness_markdown(store.all_configs())
                      + render_extension_sections(report))
    write_json_atomic(paths["json"], report.model_dump(mode="json"))
    write_text_atomic(paths["html"], render_store_html(store, report))
    return paths


def report_extensions(sections: list | None, columns: list | None) -> Extensions:
    """Hook results as the report's `extensions`: sections (title, markdown) and columns (title, cells).

    Each of `sections` is one implementation's return value: None, a (title, markdown) pair, a list of pairs
    or a {title: markdown} mapping; each of `columns` likewise with (title, {config name: cell}) pairs."""
    return Extensions.model_validate({
        "sections": [{"title": t, "markdown": body} for t, body in _pairs(sections, "report_sections", str)],
        "columns": [{"title": t, "cells": {str(k): str(v) for k, v in cells.items()}}
                    for t, cells in _pairs(columns, "report_columns", dict)]})


def extensions(sections: list | None, columns: list | None) -> JsonObject:
    """report_extensions() as plain data, as report.json keeps it:
    {"sections": [{"title", "markdown"}], "columns": [{"title", "cells"}]}."""
    return report_extensions(sections, columns).model_dump(mode="json")


def _pairs(results: list | None, hook: str, value_type: type) -> list[tuple[str, Any]]:
    """Flatten hook results into (title, value) pairs; a malformed one is a TypeError naming the hook."""
    pairs: list[tuple[str, Any]] = []
    for result in results or []:
        if result is None:
            continue
        if isinstance(result, dict):
            result = list(result.items())
        elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str):
            result = [result]
        for item in result if isinstance(result, list) else [result]:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], value_type)):
                raise TypeError(f"pytest_vllmgrid_{hook} returned {item!r}: expected (title, "
                                f"{value_type.__name__}) pairs")
            pairs.append((item[0], item[1]))
    return pairs


def telemetry_section(results: Mapping[str, ConfigResult]) -> str:
    """The report's GPU telemetry section: per-config tables and alerts, or why telemetry was unavailable."""
    series = telemetry_series_by_config(results)
    for name, data in results.items():
        if name in series:
            continue
        reasons = {str(t.measurement.telemetry().get("unavailable")) for t in data.tests.values()
                   if t.measurement is not None and t.measurement.telemetry().get("unavailable")}
        if reasons:
            series[name] = TelemetrySeries.unavailable("; ".join(sorted(reasons)))
    return config_telemetry_markdown(series, results)


def terminal_table(store: ResultsStore, grid: Grid | None = None) -> list[str]:
    """The ranked table as terminal lines."""
    return render_terminal(build_report(store, grid))
