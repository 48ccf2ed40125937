"""pytest-html integration (registered by plugin.py when --html is given): each benchmark's table, gate
verdicts and sample plot as extras, and the ranked table + plots above pytest-html's results.

The pytest side only; the HTML pieces come from report/html.py, which knows no pytest.
"""

from __future__ import annotations

import base64
import pytest

from pytest_vllmgrid.report.html import (conclusions_html, css, esc, gate_html, metrics_table_html, plots_html,
                                         ranking_html, recommendation_html)
from pytest_vllmgrid.report.model import build_report
from pytest_vllmgrid.report.plots import measurement_png
from pytest_vllmgrid.results import TestResult, result_key
from pytest_vllmgrid.session import STASH_KEY, item_config


def benchmark_extras(test: TestResult | None, config_name: str, test_key: str) -> list[object]:
    """pytest-html extras for one benchmark: its metrics table, gate verdicts and sample plot."""
    from pytest_html import extras

    measurement = test.measurement if test is not None else None
    if measurement is None:
        return []
    fragment = f"<div>{metrics_table_html(measurement.metrics)}"
    gate = test.regression_gate
    fragment += (gate_html(gate.verdicts, gate.compared_with) if gate else "") + "</div>"
    out = [extras.html(fragment)]
    png = measurement_png(measurement, f"{config_name} / {test_key}")
    if png:
        out.append(extras.png(base64.b64encode(png).decode("ascii"), name=f"{test_key} samples"))
    return out


class PytestHtmlSections:
    """pytest-html hooks: per-benchmark extras, and the ranked table + plots in the summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        """Attach the benchmark's own table and plot to its call report."""
        outcome = yield
        report = outcome.get_result()
        cfg = item_config(item)
        gs = self.config.stash[STASH_KEY]
        if report.when == "call" and cfg is not None and gs.store is not None:
            key = result_key(item)
            stored = gs.store.load_config(cfg.name)
            test = gs.pending_test(cfg.name, key) or (stored.tests.get(key) if stored is not None else None)
            report.extras = [*getattr(report, "extras", []), *benchmark_extras(test, cfg.name, key)]

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        """The ranked table, the recommendation, the gate and the plots above pytest-html's results."""
        gs = session.config.stash[STASH_KEY]
        if gs.store is None or not gs.store.all_configs():
            return
        report = build_report(gs.store, gs.grid)
        gate = gs.store.manifest().regression_gate
        prefix.append(f"<div class=\"vllmgrid\"><style>{css('.vllmgrid')}</style>"
                      f"<h2>vLLM grid</h2>{recommendation_html(report)}{ranking_html(report)}{conclusions_html(report)}"
                      f"{gate_html(gate.verdicts, gate.compared_with) if gate else ''}"
                      f"{plots_html(report, gs.store.all_configs())}"
                      f"<p>Full report: <code>{esc(gs.store.root / 'report.html')}</code></p></div>")
