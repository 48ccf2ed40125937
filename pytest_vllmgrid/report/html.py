"""HTML report: a self-contained report.html (inline CSS, PNGs as data: URIs); its pieces also feed
the pytest-html sections (html_hooks.py)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from typing import Iterable

from pytest_vllmgrid.report.model import Report
from pytest_vllmgrid.report.markdown import (beside_recommendation, cell, delta, metric_label, param_cell, ranking_params,
                                             render_markdown, sample_stats, use_case_section)
from pytest_vllmgrid.numbers import fmt_number as _fmt
from pytest_vllmgrid.report.plots import report_plots, telemetry_series_by_config
from pytest_vllmgrid.report.correctness import correctness_markdown
from pytest_vllmgrid.report.telemetry import config_telemetry_markdown
from pytest_vllmgrid.results import ConfigResult, GateRecord, GateVerdict, Metric, ResultsStore, gate_machine_notes

# (selector, declarations); scoped under a class when embedded in pytest-html's page.
STYLE_RULES: list[tuple[str, str]] = [
    ("body", "font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1360px;"
             "padding:0 1em;color:#222"),
    ("table", "border-collapse:collapse;margin:.5em 0 1em"),
    ("th, td", "border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top;font-size:.9em"),
    ("th", "background:#f3f3f3"),
    ("td.num", "text-align:right;font-variant-numeric:tabular-nums"),
    (".delta", "color:#555;font-size:.85em"),
    (".bad", "color:#b00020;font-weight:bold"),
    ("figure", "margin:1em 0"),
    ("figure img", "max-width:100%;border:1px solid #eee"),
    ("figcaption", "font-size:.9em;color:#555"),
    ("code", "background:#f6f6f6;padding:0 .2em"),
    (".scroll", "max-width:100%;overflow-x:auto"),
    ("table.ranking", "table-layout:auto;margin:0"),
    ("table.ranking th", "white-space:normal;overflow-wrap:break-word;hyphens:auto;font-size:.75em;padding:.2em .25em"),
    ("table.ranking td", "font-size:.75em;padding:.2em .25em"),
    ("table.ranking .sticky", "position:sticky;left:0;background:#fff;z-index:1;min-width:7em;max-width:10em;"
                              "box-shadow:2px 0 0 #ccc"),
    ("table.ranking th.sticky", "background:#f3f3f3"),
    (".params", "color:#555;font-size:.85em"),
    ("p.nav", "font-size:.85em;color:#555"),
    (".ci", "color:#555;font-size:.85em"),
    ("p.rec", "font-size:1.05em;line-height:1.4"),
    ("details.anomaly summary", "cursor:pointer"),
    ("details.anomaly ul", "margin:.2em 0 .6em;font-size:.85em"),
    ("ul.anomalies", "list-style:none;padding-left:0"),
    ("@media (max-width:600px)", "table.ranking .sticky{min-width:6em;max-width:8em}"),
]


def css(scope: str | None = None) -> str:
    """The report's stylesheet; with `scope`, every rule applies only inside that selector."""
    def selector(sel: str) -> str:
        if scope is None or sel.startswith("@"):
            return sel
        return ", ".join(scope if part.strip() == "body" else f"{scope} {part.strip()}" for part in sel.split(","))
    return "".join(f"{selector(sel)}{{{decls}}}" for sel, decls in STYLE_RULES)


_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def esc(value: object) -> str:
    """Text made safe for HTML."""
    return html.escape("" if value is None else str(value))


def png_img(png: bytes, alt: str) -> str:
    """An <img> whose PNG is embedded as a data: URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(header: Iterable[str], rows: Iterable[Iterable[str]], numeric_from: int | None = None) -> str:
    """An HTML table in a box that scrolls sideways on a narrow screen; cells are already HTML; columns from
    `numeric_from` on are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{c}</td>' if numeric_from is not None and i >= numeric_from else f"<td>{c}</td>"
        for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def markdown_fragment_html(text: str) -> str:
    """The Markdown subset our sections use (headings, tables, bullets, paragraphs) as HTML."""
    out: list[str] = []
    rows: list[list[str]] = []
    bullets: list[str] = []

    def inline(s: str) -> str:
        return _BOLD.sub(r"<strong>\1</strong>", _INLINE_CODE.sub(r"<code>\1</code>", esc(s)))

    def flush() -> None:
        if rows:
            out.append(table(rows[0], rows[1:]))
        if bullets:
            out.append("<ul>" + "".join(f"<li>{b}</li>" for b in bullets) + "</ul>")
        rows.clear()
        bullets.clear()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if bullets:
                flush()
            cells = [inline(c.strip().replace("\\|", "|")) for c in re.split(r"(?<!\\)\|", stripped)[1:-1]]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif stripped.startswith("- "):
            if rows:
                flush()
            bullets.append(inline(stripped[2:]))
        else:
            flush()
            if stripped.startswith("#"):
                level = min(len(stripped) - len(stripped.lstrip("#")) + 1, 6)
                out.append(f"<h{level}>{inline(stripped.lstrip('#').strip())}</h{level}>")
            elif stripped:
                out.append(f"<p>{inline(stripped)}</p>")
    flush()
    return "\n".join(out)


def _metric_cell(metric: Metric | None) -> str:
    """p50, its CI on the next line, and the Δ vs baseline under it (lines that wrap in a narrow column)."""
    text = esc(cell(metric, with_ci=False))
    if metric is not None and metric.ci is not None and metric.point() is not None:
        text += f'<br><span class="ci">[{esc(_fmt(metric.ci[0]))}–{esc(_fmt(metric.ci[1]))}]</span>'
    change = delta(metric)
    return text + (f'<br><span class="delta">Δ {esc(change)}</span>' if change else "")


def ranking_html(report: Report, *, legend: bool = True) -> str:
    """The ranked table in a scrolling box with a sticky config column: what each server runs under its name, the
    status, startup, each headline metric (readable name; the stored key on hover) with Δ vs baseline."""
    cols = list(report.columns)
    params = ranking_params(report)
    head = ['<th class="sticky">Rank, config, status</th>', "<th>Startup s</th>",
            *[f'<th title="{esc(c)}">{esc(metric_label(c))}</th>' for c in cols]]
    body = []
    for row in report.configs:
        rank = f"{row.rank}. " if row.rank else "– "
        name = f"{rank}<strong>{esc(row.name)}</strong>" + (" (baseline)" if row.name == report.baseline else "")
        name += f"<br>{esc(row.failure or row.status or '?')}"
        runs = ", ".join(f"{label} {param_cell(row, k, words=True)}" for k, label in params)
        name += f'<br><span class="params">{esc(runs)}</span>' if runs else ""
        cells = [f'<td class="sticky">{name}</td>', f'<td class="num">{esc(_fmt(row.startup_s))}</td>',
                 *[f'<td class="num">{_metric_cell(row.metrics.get(c))}</td>' for c in cols]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = (f"<p>Ranked by <code>{esc(report.primary_metric)}</code> ({esc(report.primary_better or '?')} "
            "is better; valid figures only). Cells: p50 [95% bootstrap CI of the median], INVALID / (inconclusive) "
            "where the figure cannot be used; Δ: % vs baseline [95% CI], in points (pts) for a percentage.</p>")
    machines = (f'<p class="bad"><strong>Caution: {esc(report.machines_note)}.</strong></p>'
                if report.machines_note else "")
    grid = (f'<div class="scroll" id="ranking"><table class="ranking"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')
    return (note if legend else "") + grid + machines


def recommendation_html(report: Report) -> str:
    """The recommendation, with each config left out of the ranking and why, beside it."""
    excluded = "".join(f"<li>{esc(line)}</li>" for line in beside_recommendation(report))
    return (f'<section id="recommendation"><h2>Recommendation</h2><p class="rec">{esc(report.recommendation)}'
            f"</p>{f'<ul>{excluded}</ul>' if excluded else ''}</section>")


def anomalies_html(report: Report) -> str:
    """Failed tests one line each; warnings one line per (kind, config) with a count, each folding its details."""
    problems = [f"<li><strong>{esc(f.name)}</strong>: {esc(f.reason)}</li>" for f in report.failed]
    problems += [f"<li>{esc(r.name)} / {esc(k)}: {esc(t.status)}: {esc(t.message or '')}</li>"
                 for r in report.configs for k, t in r.failed_tests()]
    groups = [f'<li class="anomaly"><details class="anomaly"><summary>{esc(g.line())}</summary><ul>'
              + "".join(f"<li>{esc(d)}</li>" for d in g.details) + "</ul></details></li>" for g in report.anomalies]
    if not problems and not groups:
        return "<h2>Failures and anomalies</h2><p>none</p>"
    return ("<h2>Failures and anomalies</h2>" + (f"<ul>{''.join(problems)}</ul>" if problems else "")
            + (f'<ul class="anomalies" id="anomalies">{"".join(groups)}</ul>' if groups else ""))


def conclusions_html(report: Report) -> str:
    """Use cases, the deployment checklist, trade-offs and failures (the recommendation comes first, alone)."""
    cases = use_case_section(report)
    parts = [f'<section id="use-cases">{markdown_fragment_html(chr(10).join(cases))}</section>' if cases else ""]
    if report.tradeoffs:
        parts.append('<h2 id="trade-offs">Trade-offs</h2><ul>' + "".join(f"<li>{esc(t)}</li>" for t in report.tradeoffs)
                     + "</ul>")
    parts.append(f'<section id="failures">{anomalies_html(report)}</section>')
    return "\n".join(parts)


def gate_html(items: list[GateVerdict], compared_with: str | None = None) -> str:
    """The regression-gate comparison."""
    if not items:
        return ""
    rows = [[esc(v.config), f"<code>{esc(v.metric)}</code> {esc(v.statistic)}", esc(_value(v.old, v.unit)),
             esc(_value(v.new, v.unit)), esc(v.change_text()), esc(v.allowed_text() or "–"),
             f'<span class="bad">{esc(v.verdict_text())}</span>' if v.failed else esc(v.verdict_text())]
            for v in items]
    failed = sum(v.failed for v in items)
    head = f"<h2>Regression gate</h2><p>Compared with <code>{esc(compared_with)}</code>: " if compared_with else \
        "<h2>Regression gate</h2><p>"
    head += (f'<span class="bad">{failed} regression(s)</span>' if failed else "no regression") + \
        " (fails only when worse than allowed <em>and</em> the bootstrap CI of the change excludes 0).</p>"
    head += "".join(f'<p class="bad">Caution: {esc(note)}.</p>' for note in gate_machine_notes(items))
    return head + table(["Config", "Metric", "Old", "New", "Change [95% CI]", "Allowed", "Verdict"], rows)


def _value(value: float | None, unit: str) -> str:
    return "–" if value is None else f"{_fmt(value)} {unit}".strip()


def plots_html(report: Report, results: Mapping[str, ConfigResult]) -> str:
    """Every plot that has data, embedded."""
    figures = [f"<figure>{png_img(png, caption)}<figcaption>{esc(caption)}</figcaption></figure>"
               for caption, png in report_plots(report, results)]
    return "<h2>Plots</h2>" + ("\n".join(figures) if figures else "<p>No plottable data in this run.</p>")


def metrics_table_html(metrics: Mapping[str, Metric]) -> str:
    """One table row per metric: n, p50 [CI] or value, p95, p99, mean, Δ vs baseline (a report row's metrics)."""
    rows = [[f"<code>{esc(name)}</code>", esc(m.n or ""), esc(cell(m)), *[esc(s) for s in sample_stats(m)],
             esc(delta(m))] for name, m in metrics.items() if m.point() is not None]
    return table(["Metric", "n", "p50 [95% CI] / value", "p95", "p99", "mean", "Δ vs baseline"], rows, numeric_from=1)


def details_html(report: Report) -> str:
    """Per config: parameters and every metric, folded."""
    parts = ['<h2 id="details">Details per config</h2>']
    for row in report.configs:
        params = " ".join(f"{k}={v}" for k, v in row.params.items()) or "(vLLM defaults)"
        parts.append(f"<details><summary><strong>{esc(row.name)}</strong> — {esc(row.status)}</summary>"
                     f"<p>params: <code>{esc(params)}</code>; "
                     f"config hash <code>{esc(row.config_hash)}</code></p>"
                     f"{metrics_table_html(row.metrics)}</details>")
    return "\n".join(parts)


def telemetry_html(results: Mapping[str, ConfigResult]) -> str:
    """The GPU telemetry section (tables and alerts), only when a config recorded telemetry."""
    series = telemetry_series_by_config(results)
    return markdown_fragment_html(config_telemetry_markdown(series, results)) if series else ""


def run_info_html(report: Report) -> str:
    """What ran and where (the Markdown report's header bullets, so both say the same)."""
    header = render_markdown(report).split("\n## ", 1)[0]
    return markdown_fragment_html(header.split("\n", 1)[1])


NAV = ('<p class="nav">Below the plots: <a href="#use-cases">use cases and deployment checklist</a> · '
       '<a href="#trade-offs">trade-offs</a> · <a href="#failures">failures and anomalies</a> · '
       '<a href="#details">details per config</a></p>')


def render_html(report: Report, results: Mapping[str, ConfigResult],
                gate: GateRecord | None = None) -> str:
    """The whole report as one self-contained HTML page: recommendation, ranking and plots first; run facts folded."""
    body = [
        "<h1>vLLM grid comparative report</h1>", NAV, recommendation_html(report),
        "<h2>Ranking</h2>", ranking_html(report),
        plots_html(report, results), conclusions_html(report),
        gate_html(gate.verdicts, gate.compared_with) if gate else "",
        f"<details><summary>Run: what ran, where, when</summary>{run_info_html(report)}</details>",
        telemetry_html(results), markdown_fragment_html(correctness_markdown(results)), details_html(report),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>vLLM grid comparative report</title>"
            f"<style>{css()}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")


def render_store_html(store: ResultsStore, report: Report) -> str:
    """report.html's content from a results store and its built report."""
    return render_html(report, store.all_configs(), store.manifest().regression_gate)
