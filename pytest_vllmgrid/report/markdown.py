"""Markdown and terminal renderings of the report (seed 000's phase 3, with CIs)."""

from __future__ import annotations

from pydantic import JsonValue

from pytest_vllmgrid.numbers import fmt_number as _fmt
from pytest_vllmgrid.report.model import ConfigRow, Report, RowMetric
from pytest_vllmgrid.results import Metric, ResumeRecord

SEED_PARAMS = [("gpu_memory_utilization", "GPU mem"), ("enable_prefix_caching", "Prefix"),
               ("enable_chunked_prefill", "Chunked"), ("max_num_seqs", "Max seqs"),
               ("max_num_batched_tokens", "Batched tok")]


def cell(metric: Metric | None, *, with_ci: bool = True) -> str:
    """`p50 [ci_low–ci_high] unit` for a sample, `value` for a number."""
    value = metric.point() if metric is not None else None
    if metric is None or value is None:
        return "–"
    unit = metric.unit
    text = f"{_fmt(value)}{'' if unit in ('x', '%') else ' '}{unit}".strip() if unit != "x" else f"x{_fmt(value)}"
    if metric.validity != "valid":  # before the CI: a narrow terminal column still shows it
        text += " INVALID" if metric.validity == "invalid" else " (inconclusive)"
    if with_ci and metric.ci is not None:
        text += f" [{_fmt(metric.ci[0])}–{_fmt(metric.ci[1])}]"
    return text


def delta(metric: Metric | None) -> str:
    """% vs baseline with its CI, in points for a percentage ('' for a metric with no change vs the baseline)."""
    if not isinstance(metric, RowMetric):
        return ""
    if metric.vs_baseline_pts is not None:
        text, ci, unit = f"{metric.vs_baseline_pts:+.1f} pts", metric.vs_baseline_ci_pts, ""
    elif metric.vs_baseline_pct is not None:
        text, ci, unit = f"{metric.vs_baseline_pct:+.1f}%", metric.vs_baseline_ci_pct, ""
    else:
        return ""
    if ci:
        text += f" [{ci[0]:+.1f}, {ci[1]:+.1f}]{unit}"
    return text


def sample_stats(metric: Metric) -> list[str]:
    """p95, p99 and mean of a sample, formatted; blanks for a derived value."""
    if metric.kind != "sample":
        return ["", "", ""]
    return [_fmt(metric.p95), _fmt(metric.p99), _fmt(metric.mean)]


FAMILY_LABELS = {"kv_cache": "KV", "throughput": "throughput", "long_conversation": "long conv", "ttft": "TTFT",
                 "tool_calling": "tool call", "reasoning": "reasoning", "stability": "stability"}
METRIC_LABELS = {"ttft_miss_ms": "MISS TTFT", "ttft_hit_ms": "HIT TTFT", "ttft_ms": "TTFT", "output_tok_s": "out tok/s",
                 "acceleration": "speed-up",
                 "decode_tok_s": "decode tok/s", "answer_ttft_ms": "answer TTFT", "success_rate_pct": "success rate",
                 "degradation_pct": "degradation", "e2e_ms": "e2e", "tpot_ms": "TPOT", "itl_ms": "ITL",
                 "server_hit_rate_pct": "server hit rate", "last_turns_ttft_ms": "last turns TTFT",
                 "first_turns_ttft_ms": "first turns TTFT", "request_rate": "req/s", "goodput_pct": "goodput"}


def metric_label(key: str) -> str:
    """A stored `test[id].metric` key as people read it: `kv_cache[16000].ttft_hit_ms` -> `KV 16000 HIT TTFT`."""
    test, _, metric = key.rpartition(".")
    family, _, param = test.partition("[")
    label = METRIC_LABELS.get(metric) or metric.removesuffix("_ms").removesuffix("_pct").replace("_", " ")
    head = " ".join(filter(None, [FAMILY_LABELS.get(family, family.replace("_", " ")), param.rstrip("]")]))
    return head if label == FAMILY_LABELS.get(family) and param else f"{head} {label}".strip()


def param_cell(row: ConfigRow, key: str, *, words: bool = False) -> str:
    """A flag as the server runs it: the grid's value, else what the server showed (`16 (server)`), else
    `default`."""
    value = row.params.get(key)
    if value is None and row.effective is not None:
        seen = next((c for c in row.effective.checks if c.flag == key and c.seen), None)
        if seen is not None:
            return f"{seen.seen_text().split(' (', 1)[0]} (server)"
    if words and isinstance(value, bool):
        return "on" if value else "off"
    return _param(value)


def _param(value: JsonValue) -> str:
    if value is True:
        return "✅"
    if value is False:
        return "❌"
    return "default" if value is None else str(value)


def _resume_text(resume: ResumeRecord) -> str:
    """One --resume of the run: when, what it ran again, its command line."""
    rerun = ", ".join(resume.configs) if resume.configs else "nothing (all complete)"
    return f"{resume.time}, ran again: {rerun} (`{' '.join(resume.argv[1:])}`)"


def ranking_params(report: Report) -> list[tuple[str, str]]:
    """The seed parameters any config states or any server showed, as (flag, column label)."""
    def shown(row: ConfigRow, key: str) -> bool:
        return key in row.params or (row.effective is not None and any(c.flag == key and c.seen
                                                                        for c in row.effective.checks))
    return [(k, label) for k, label in SEED_PARAMS if any(shown(r, k) for r in report.configs)]


def excluded_lines(report: Report) -> list[str]:
    """`NAME: why it is not ranked`, one per config left out of the ranking."""
    return [f"{n.name}: {n.reason}" for n in report.excluded]


def beside_recommendation(report: Report) -> list[str]:
    """The lines under the recommendation: that the pick meets the goal, then each config not ranked and why."""
    opt = report.optimal
    met = [f"{opt.name} meets the goal: {', '.join(report.goal)}"] if opt and opt.meets_goal else []
    return met + [f"not ranked: {line}" for line in excluded_lines(report)]


def render_markdown(report: Report) -> str:
    """The comparative report as Markdown."""
    run = report.run
    cols = report.columns
    out = ["# vLLM grid comparative report", ""]
    out.append(f"- Results: `{report.results_dir}`")
    for label, value in (("Grid", run.grid_file), ("Model", run.model), ("vLLM", run.vllm_version),
                         ("Run status", run.status), ("Started", run.started),
                         *(("Resumed", _resume_text(r)) for r in run.resumes), ("Ended", run.ended)):
        if value:
            out.append(f"- {label}: {value}")
    hw = run.hardware
    if hw:
        gpus = hw.get("gpus")
        gpus = ", ".join(str(g) for g in gpus) if isinstance(gpus, list) and gpus else "none"
        out.append(f"- Hardware: {hw.get('cpu_count')} CPUs, {hw.get('memory_gb')} GiB, GPUs: {gpus}")
    out.append(f"- Baseline: **{report.baseline}**; ranked by **{report.primary_metric}** "
               f"({report.primary_better or '?'} is better; p50 for samples; valid figures only). "
               "Cells: p50 [95% bootstrap CI of the median], INVALID / (inconclusive) where the figure cannot "
               "be used; Δ: % vs baseline [95% CI], in points (pts) for a percentage.")
    out += ["", "## Recommendation", "", report.recommendation, ""]
    out += [f"- {line}" for line in beside_recommendation(report)]
    out += ["", "## Ranking", ""]
    seed_cols = ranking_params(report)
    header = ["Rank", "Config", *[label for _, label in seed_cols], "Status", "Startup s"]
    for name in cols:
        header += [name, "Δ"]
    extra_cols = report.extensions.columns if report.extensions else []  # hook pytest_vllmgrid_report_columns
    header += [_table_text(col.title) for col in extra_cols]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for row in report.configs:
        cells = [str(row.rank or "–"), f"**{row.name}**" if row.name == report.baseline else row.name]
        cells += [param_cell(row, k) for k, _ in seed_cols]
        cells += [row.status or "?", _fmt(row.startup_s)]
        for name in cols:
            metric = row.metrics.get(name)
            cells += [cell(metric), delta(metric)]
        cells += [_table_text(col.cells.get(row.name, "")) for col in extra_cols]
        out.append("| " + " | ".join(cells) + " |")
    if report.machines_note:
        out += ["", f"**Caution: {report.machines_note}.**"]
    out += effective_section(report)
    out += use_case_section(report)
    out += ["", "## Trade-offs", ""]
    out += [f"- {line}" for line in report.tradeoffs] or ["- none: the optimal config is also best on every "
                                                          "other headline metric (or too few configs)."]
    out += ["", "## Failures and anomalies", ""]
    failed_tests = [(r.name, k, t) for r in report.configs for k, t in r.failed_tests()]
    if not report.failed and not failed_tests and not report.anomalies and not report.skipped \
            and not report.left_out:
        out.append("- none")
    for item in report.skipped:
        out.append(f"- {item.name}: not run ({item.reason})")
    for item in report.failed:
        out.append(f"- **{item.name}**: {item.reason}")
    for item in report.left_out:
        out.append(f"- {item.name}: not ranked: {item.reason}")
    for name, key, test in failed_tests:
        out.append(f"- {name} / {key}: {test.status}: {test.message or ''}".rstrip())
    out += [f"- {group.line()}" for group in report.anomalies]
    if report.anomalies:
        out += ["", "Each warning in full: Details per config below (and report.json's `anomalies`)."]
    out += ["", "## Between-deployment noise", ""]
    if report.noise:
        sources = sorted({n.source for n in report.noise if n.source})
        if sources:
            out += [f"Not measured in this run; taken from the stored run(s) given with --vllm-noise-from: "
                    f"{', '.join(sources)}.", ""]
        out += ["Two deployments of the same flags differ by this much; a difference between configs counts as "
                "significant only beyond it.", "", "| Metric | identical deployments | largest spread |", "|---|---|---|"]
        out += [f"| {n.metric} | {', '.join(n.pairs)} | {n.spread_pct:.1f} "
                f"{'pts' if n.unit in ('%', '%/request') else '%'} |" for n in report.noise
                if n.metric in report.columns or n.metric.endswith("ttft_ms")]
    else:
        out.append("Not measured in this run: differences between configs are judged on request-to-request noise "
                   "only. Measure it with `--vllm-replicas 2` or an A/A grid (configs/aa-cpu.yaml), or reuse such a "
                   "run's with `--vllm-noise-from DIR`.")
    out += ["", "## Details per config", ""]
    for row in report.configs:
        out.append(f"### {row.name}")
        out.append("")
        args = " ".join(f"{k}={_param(v)}" for k, v in row.params.items())
        out.append(f"- params: {args or '(vLLM defaults)'}; config hash `{row.config_hash}`")
        if row.metrics:
            out += ["", "| Metric | n | p50 [CI] | p95 | p99 | mean | Δ vs baseline |", "|---|---|---|---|---|---|---|"]
            for name, metric in row.metrics.items():
                out.append(" | ".join([f"| {name}", str(metric.n or ""), cell(metric), *sample_stats(metric),
                                       f"{delta(metric)} |"]))
        if row.warnings:
            out += ["", "Warnings:", ""] + [f"- {w}" for w in row.warnings]
        out.append("")
    return "\n".join(out) + "\n"


def use_case_section(report: Report) -> list[str]:
    """`## Recommendations per use case` (one line each) and the recommended config's deployment checklist."""
    if not report.use_cases:
        return []
    out = ["", "## Recommendations per use case", ""] + [f"- {case.line()}" for case in report.use_cases]
    if report.checklist:
        out += ["", f"## Deployment checklist: {report.checklist.config}", ""]
        out += [f"- {item.line()}" for item in report.checklist.items]
    return out


def effective_section(report: Report) -> list[str]:
    """`## Effective config`: per config, the stated flags the server confirmed or contradicted and what it showed
    for the flags not stated ([] when no result recorded it)."""
    rows = [row for row in report.configs if row.effective is not None]
    if not rows:
        return []
    out = ["", "## Effective config", "",
           "What each server showed it runs after readiness (startup log `non-default args`, /metrics "
           "`vllm:cache_config_info`, /v1/models), against the flags its config states.", ""]
    return out + [f"- {row.name}: {row.effective.summary()}" for row in rows]


def render_extension_sections(report: Report) -> str:
    """The sections of hook pytest_vllmgrid_report_sections (report.extensions), as Markdown; "" when none."""
    out: list[str] = []
    for section in report.extensions.sections if report.extensions else []:
        out += ["", f"## {section.title}", "", section.markdown.rstrip(), ""]
    return "\n".join(out)


def _table_text(text: str) -> str:
    """A value as one Markdown table cell (no line break, no unescaped pipe)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def render_terminal(report: Report) -> list[str]:
    """A compact ranked table for the terminal summary: full status words, readable metric names, the primary
    metric first."""
    cols = list(report.columns)
    if report.primary_metric in cols:
        cols.remove(report.primary_metric)
        cols.insert(0, report.primary_metric)
    cols = cols[:4]
    header = ["rank", "config", "status", "startup s", *[metric_label(c) for c in cols]]
    rows = [[str(row.rank or "-"), row.name, row.status or "?", _fmt(row.startup_s),
             *[cell(row.metrics.get(c)) for c in cols]] for row in report.configs]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    if report.machines_note:
        lines.append(f"CAUTION: {report.machines_note}")
    lines.append(f"recommendation: {report.recommendation}")
    lines += beside_recommendation(report)
    return lines
