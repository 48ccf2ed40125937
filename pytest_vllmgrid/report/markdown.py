"""Markdown and terminal renderings of the report (seed 000's phase 3, with CIs)."""

from __future__ import annotations

from typing import Any

from pytest_vllmgrid.report.model import point_of
from pytest_vllmgrid.numbers import fmt_number as _fmt

SEED_PARAMS = [("gpu_memory_utilization", "GPU mem"), ("enable_prefix_caching", "Prefix"),
               ("enable_chunked_prefill", "Chunked"), ("max_num_seqs", "Max seqs"),
               ("max_num_batched_tokens", "Batched tok")]


def cell(metric: dict[str, Any] | None, *, with_ci: bool = True) -> str:
    """`p50 [ci_low–ci_high] unit` for a sample, `value` for a number."""
    if not metric:
        return "–"
    value = point_of(metric)
    if value is None:
        return "–"
    unit = metric.get("unit", "")
    text = f"{_fmt(value)}{'' if unit in ('x', '%') else ' '}{unit}".strip() if unit != "x" else f"x{_fmt(value)}"
    if with_ci and metric.get("ci_low") is not None and metric.get("ci_high") is not None:
        text += f" [{_fmt(metric['ci_low'])}–{_fmt(metric['ci_high'])}]"
    return text


def delta(metric: dict[str, Any] | None) -> str:
    """% vs baseline with its CI."""
    if not metric or metric.get("vs_baseline_pct") is None:
        return ""
    text = f"{metric['vs_baseline_pct']:+.1f}%"
    ci = metric.get("vs_baseline_ci_pct")
    if ci:
        text += f" [{ci[0]:+.1f}, {ci[1]:+.1f}]"
    return text


def _param(value: Any) -> str:
    if value is True:
        return "✅"
    if value is False:
        return "❌"
    return "default" if value is None else str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """The comparative report as Markdown."""
    run = report["run"]
    cols = report["columns"]
    out = ["# vLLM grid comparative report", ""]
    out.append(f"- Results: `{report['results_dir']}`")
    for key, label in (("grid_file", "Grid"), ("model", "Model"), ("vllm_version", "vLLM"), ("status", "Run status"),
                       ("started", "Started"), ("ended", "Ended")):
        if run.get(key):
            out.append(f"- {label}: {run[key]}")
    hw = run.get("hardware") or {}
    if hw:
        gpus = ", ".join(hw.get("gpus") or []) or "none"
        out.append(f"- Hardware: {hw.get('cpu_count')} CPUs, {hw.get('memory_gb')} GiB, GPUs: {gpus}")
    out.append(f"- Baseline: **{report['baseline']}**; ranked by **{report['primary_metric']}** "
               f"({report.get('primary_better') or '?'} is better; p50 for samples). "
               "Cells: p50 [95% bootstrap CI of the median]; Δ: % vs baseline [95% CI].")
    out += ["", "## Ranking", ""]
    seed_cols = [(k, label) for k, label in SEED_PARAMS if any(k in r["params"] for r in report["configs"])]
    header = ["Rank", "Config", *[label for _, label in seed_cols], "Status", "Startup s"]
    for name in cols:
        header += [name, "Δ"]
    extra_cols = (report.get("extensions") or {}).get("columns") or []  # hook pytest_vllmgrid_report_columns
    header += [_table_text(col["title"]) for col in extra_cols]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for row in report["configs"]:
        cells = [str(row.get("rank") or "–"), f"**{row['name']}**" if row["name"] == report["baseline"] else row["name"]]
        cells += [_param(row["params"].get(k)) for k, _ in seed_cols]
        cells += [row.get("status") or "?", _fmt(row.get("startup_s"))]
        for name in cols:
            metric = row["metrics"].get(name)
            cells += [cell(metric), delta(metric)]
        cells += [_table_text(col["cells"].get(row["name"], "")) for col in extra_cols]
        out.append("| " + " | ".join(cells) + " |")
    opt = report.get("optimal")
    out += ["", "## Optimal configuration", ""]
    out.append(f"**{opt['name']}**" if opt else "none (no config produced the primary metric)")
    out += ["", "## Trade-offs", ""]
    out += [f"- {line}" for line in report["tradeoffs"]] or ["- none: the optimal config is also best on every "
                                                              "other headline metric (or too few configs)."]
    out += ["", "## Failures and anomalies", ""]
    failed_tests = [(r["name"], k, t) for r in report["configs"] for k, t in r["tests"].items()
                    if t["status"] in ("failed", "error")]
    if not report["failed"] and not failed_tests and not any(r["warnings"] for r in report["configs"]) \
            and not report.get("skipped"):
        out.append("- none")
    for item in report.get("skipped", []):
        out.append(f"- {item['name']}: not run ({item['reason']})")
    for item in report["failed"]:
        out.append(f"- **{item['name']}**: {item['reason']}")
    for name, key, test in failed_tests:
        out.append(f"- {name} / {key}: {test['status']}: {test.get('message') or ''}".rstrip())
    for row in report["configs"]:
        out += [f"- {row['name']}: warning: {w}" for w in row["warnings"]]
    out += ["", "## Recommendation", "", report["recommendation"], "", "## Details per config", ""]
    for row in report["configs"]:
        out.append(f"### {row['name']}")
        out.append("")
        args = " ".join(f"{k}={_param(v)}" for k, v in row["params"].items())
        out.append(f"- params: {args or '(vLLM defaults)'}; config hash `{row.get('config_hash')}`")
        if row["metrics"]:
            out += ["", "| Metric | n | p50 [CI] | p95 | p99 | mean | Δ vs baseline |", "|---|---|---|---|---|---|---|"]
            for name, metric in row["metrics"].items():
                out.append(f"| {name} | {metric.get('n') or ''} | {cell(metric)} | {_fmt(metric.get('p95')) if metric.get('kind') == 'sample' else ''} "
                           f"| {_fmt(metric.get('p99')) if metric.get('kind') == 'sample' else ''} "
                           f"| {_fmt(metric.get('mean')) if metric.get('kind') == 'sample' else ''} | {delta(metric)} |")
        out.append("")
    return "\n".join(out) + "\n"


def render_extension_sections(report: dict[str, Any]) -> str:
    """The sections of hook pytest_vllmgrid_report_sections (report["extensions"]), as Markdown; "" when none."""
    out: list[str] = []
    for section in (report.get("extensions") or {}).get("sections") or []:
        out += ["", f"## {section['title']}", "", section["markdown"].rstrip(), ""]
    return "\n".join(out)


def _table_text(text: Any) -> str:
    """A value as one Markdown table cell (no line break, no unescaped pipe)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def render_terminal(report: dict[str, Any]) -> list[str]:
    """A compact ranked table for the terminal summary."""
    cols = list(report["columns"])[:4]
    widths = [4, max([len(r["name"]) for r in report["configs"]] + [6]), 10, 9] + [24] * len(cols)
    header = ["rank", "config", "status", "startup s", *cols]
    lines = ["  ".join(h[:w].ljust(w) for h, w in zip(header, widths))]
    for row in report["configs"]:
        cells = [str(row.get("rank") or "-"), row["name"], row.get("status") or "?", _fmt(row.get("startup_s")),
                 *[cell(row["metrics"].get(c)) for c in cols]]
        lines.append("  ".join(c[:w].ljust(w) for c, w in zip(cells, widths)))
    lines.append(f"recommendation: {report['recommendation']}")
    return lines
