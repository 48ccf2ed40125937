"""Report plots: pure functions from the `Report` (and stored results) to PNG bytes, None when no data.

matplotlib's Agg canvas only (no pyplot: no global state, no display needed).
"""

from __future__ import annotations

import io
import re
import statistics
from dataclasses import replace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Iterable

from pytest_vllmgrid.results import ConfigResult, JsonObject, Measurement, Metric, TestResult

from pytest_vllmgrid.report.capacity import pareto_png
from pytest_vllmgrid.report.model import ConfigRow, Report
from pytest_vllmgrid.report.telemetry import telemetry_plot_png
from pytest_vllmgrid.telemetry import Sample, TelemetrySeries

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_DISTRIBUTIONS = 6
_TTFT_KEY = re.compile(r"^ttft(\[[^\]]*\])?\.ttft_ms$")
_CONCURRENCY_KEY = re.compile(r"^throughput\[[^\]\d]*(\d+(?:\.\d+)?)[^\]]*\]\.(\w+)$")


def _figure(width: float, height: float) -> Figure:
    """A matplotlib Figure on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _point(metric: Metric | None) -> tuple[float, float, float] | None:
    """(p50 or value, CI low, CI high) of a stored metric; the CI collapses to the point when absent."""
    value = metric.point() if metric is not None else None
    if metric is None or value is None:
        return None
    low, high = metric.ci_low, metric.ci_high
    return value, value if low is None else low, value if high is None else high


def _healthy(report: Report) -> list[ConfigRow]:
    """Config rows in report order, failed deployments left out."""
    return [row for row in report.configs if not row.failure]


def grouped_ci_png(report: Report, keys: list[str], labels: list[str], title: str,
                   ylabel: str) -> bytes | None:
    """Bars of p50 per config, one bar per metric key, with 95% CI error bars; None without data."""
    rows = [row for row in _healthy(report) if any(_point(row.metrics.get(k)) for k in keys)]
    if not rows:
        return None
    fig = _figure(max(6.0, 1.1 * len(rows) * max(1, len(keys)) ** 0.5 + 2), 4.2)
    ax = fig.subplots()
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(zip(keys, labels)):
        xs, ys, errs = [], [], [[], []]
        for x, row in enumerate(rows):
            point = _point(row.metrics.get(key))
            if point is None:
                continue
            value, low, high = point
            xs.append(x + (i - (len(keys) - 1) / 2) * width)
            ys.append(value)
            errs[0].append(max(0.0, value - low))
            errs[1].append(max(0.0, high - value))
        ax.bar(xs, ys, width=width * 0.95, yerr=errs, capsize=3, label=label)
    ax.set_xticks(range(len(rows)), [row.name for row in rows], rotation=30 if len(rows) > 4 else 0,
                  ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    if len(keys) > 1:
        ax.legend(fontsize="small")
    return _png(fig)


def ttft_png(report: Report) -> bytes | None:
    """TTFT p50 per config with its 95% CI, one bar per prompt kind (ttft[short], ttft[long], ...)."""
    keys = sorted({k for row in _healthy(report) for k in row.metrics if _TTFT_KEY.match(k)})
    labels = [k.split(".", 1)[0] for k in keys]
    return grouped_ci_png(report, keys, labels, "TTFT p50 per config (95% bootstrap CI)", "TTFT ms") if keys else None


def kv_cache_png(report: Report) -> bytes | None:
    """Prefix-cache MISS vs HIT TTFT p50 per config with 95% CIs."""
    return grouped_ci_png(report, ["kv_cache.ttft_miss_ms", "kv_cache.ttft_hit_ms"], ["MISS", "HIT"],
                          "KV cache: TTFT p50, new prefix (MISS) vs same prefix (HIT)", "TTFT ms")


def concurrency_curves(report: Report, metric: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """config -> [(concurrency, p50/value, ci low, ci high)] of `throughput[N].<metric>`, sorted by N."""
    curves: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in _healthy(report):
        for key, stored in row.metrics.items():
            match = _CONCURRENCY_KEY.match(key)
            point = _point(stored) if match and match.group(2) == metric else None
            if point is not None:
                curves.setdefault(row.name, []).append((float(match.group(1)), *point))
    return {name: sorted(points) for name, points in curves.items()}


def throughput_png(report: Report) -> bytes | None:
    """Output tokens/s (and TTFT p50 when measured) against concurrency, one line per config."""
    if not concurrency_curves(report, "output_tok_s"):
        return None
    panels = [(m, label) for m, label in (("output_tok_s", "output tokens/s"), ("ttft_ms", "TTFT p50 ms"))
              if concurrency_curves(report, m)]
    fig = _figure(7.5, 3.6 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (metric, label) in zip(axes, panels):
        for name, points in concurrency_curves(report, metric).items():
            xs, ys, lows, highs = zip(*points)
            ax.errorbar(xs, ys, yerr=[[max(0.0, y - lo) for y, lo in zip(ys, lows)],
                                      [max(0.0, hi - y) for y, hi in zip(ys, highs)]],
                        marker="o", capsize=3, label=name)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("Throughput vs concurrency")
    axes[0].legend(fontsize="small")
    levels = sorted({point[0] for points in concurrency_curves(report, "output_tok_s").values() for point in points})
    axes[-1].set_xscale("log", base=2)
    axes[-1].set_xticks(levels, [f"{level:g}" for level in levels])
    axes[-1].minorticks_off()
    axes[-1].set_xlabel("concurrent requests")
    return _png(fig)


def turn_series(info: JsonObject) -> list[list[float | None]]:
    """Per-turn TTFT ms, one list per conversation (None for a failed turn), from a long conversation's info."""
    series = info.get("turn_ttft_ms")
    if not isinstance(series, list) or not series:
        return []
    rows = series if all(isinstance(s, list) for s in series) else [series]
    return [[None if v is None else float(v) for v in row] for row in rows]


def turn_ttft_png(results: Mapping[str, ConfigResult]) -> bytes | None:
    """TTFT per turn of the long conversations: median over conversations, min-max band, per config."""
    curves = {}
    for name, data in results.items():
        for key, test in data.tests.items():
            rows = turn_series(test.measurement.info) if key.startswith("long_conversation") and \
                test.measurement is not None else []
            if rows:
                curves[f"{name}" if key == "long_conversation" else f"{name} {key}"] = rows
    if not curves:
        return None
    fig = _figure(7.5, 4.0)
    ax = fig.subplots()
    for label, rows in curves.items():
        per_turn = [[r[t] for r in rows if t < len(r) and r[t] is not None] for t in range(max(map(len, rows)))]
        xs = [t + 1 for t, values in enumerate(per_turn) if values]
        per_turn = [values for values in per_turn if values]
        ax.plot(xs, [statistics.median(v) for v in per_turn], marker="o", label=label)
        if len(rows) > 1:
            ax.fill_between(xs, [min(v) for v in per_turn], [max(v) for v in per_turn], alpha=0.15)
    ax.set_xlabel("turn")
    ax.set_ylabel("TTFT ms")
    ax.set_title("TTFT per turn in long conversations (median, min-max band)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def _distribution_axes(ax: Axes, named_samples: list[tuple[str, list[float]]], title: str, unit: str) -> None:
    """Box plots of raw samples with the points themselves jittered on top."""
    ax.boxplot([values for _, values in named_samples], showfliers=False, widths=0.5)
    for i, (_, values) in enumerate(named_samples, 1):
        jitter = [i + ((j * 0.618) % 1 - 0.5) * 0.3 for j in range(len(values))]
        ax.scatter(jitter, values, s=8, alpha=0.5)
    ax.set_xticks(range(1, len(named_samples) + 1), [label for label, _ in named_samples],
                  rotation=30 if len(named_samples) > 3 else 0, ha="right" if len(named_samples) > 3 else "center")
    ax.set_title(title, fontsize="medium")
    ax.set_ylabel(unit)
    ax.grid(True, axis="y", alpha=0.3)


def _grid_of_axes(count: int, cell_height: float = 3.2) -> list[Axes]:
    """A figure with `count` axes, two per row."""
    cols = 1 if count == 1 else 2
    rows = (count + cols - 1) // cols
    fig = _figure(6.0 * cols, cell_height * rows)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for extra in axes[count:]:
        extra.set_visible(False)
    return axes[:count]


def latency_distributions_png(report: Report) -> bytes | None:
    """Raw-sample distributions of the headline latency metrics, one panel per metric, one box per config."""
    metrics = [k for k, col in report.columns.items() if col.unit == "ms"]
    metrics += sorted({k for row in _healthy(report) for k in row.samples if _TTFT_KEY.match(k)} - set(metrics))
    panels = []
    for key in metrics[:MAX_DISTRIBUTIONS]:
        named = [(row.name, row.samples[key]) for row in _healthy(report) if row.samples.get(key)]
        if named:
            panels.append((key, named))
    if not panels:
        return None
    axes = _grid_of_axes(len(panels))
    for ax, (key, named) in zip(axes, panels):
        _distribution_axes(ax, named, f"{key} (raw samples)", "ms")
    return _png(axes[0].figure)


def measurement_png(measurement: Measurement, title: str) -> bytes | None:
    """One benchmark's stored samples: a distribution panel per sample metric (per-test extra)."""
    samples = {k: v for k, v in measurement.samples.items() if v}
    if not samples:
        return None
    names = list(samples)[:MAX_DISTRIBUTIONS]
    axes = _grid_of_axes(len(names), 2.8)
    for ax, name in zip(axes, names):
        metric = measurement.metric(name)
        unit = metric.unit if metric is not None else ""
        _distribution_axes(ax, [(f"n={len(samples[name])}", samples[name])], name, unit)
    axes[0].figure.suptitle(title)
    return _png(axes[0].figure)


def merged_telemetry(tests: Iterable[TestResult]) -> TelemetrySeries | None:
    """One config's per-benchmark telemetry series joined on one clock (None when none is available)."""
    parts = [TelemetrySeries.from_dict(s) for s in (t.measurement.telemetry_series for t in tests
                                                   if t.measurement is not None) if s and s.get("available")]
    if not parts:
        return None
    parts.sort(key=lambda s: s.started_at or 0.0)
    origin = parts[0].started_at
    samples, elapsed = [], 0.0
    for part in parts:
        offset = part.started_at - origin if origin is not None and part.started_at is not None else elapsed
        samples += [Sample(t=s.t + offset, gpus=s.gpus) for s in part.samples]
        elapsed = offset + part.duration_s + part.interval_s
    return replace(parts[0], samples=samples, errors=sum(p.errors for p in parts))


def telemetry_series_by_config(results: Mapping[str, ConfigResult]) -> dict[str, TelemetrySeries]:
    """Config name -> its merged GPU telemetry, for configs that recorded any."""
    merged = {name: merged_telemetry(data.tests.values()) for name, data in results.items()}
    return {name: series for name, series in merged.items() if series is not None}


def telemetry_png(results: Mapping[str, ConfigResult]) -> bytes | None:
    """GPU utilisation and VRAM over time per config (report/telemetry.py's plot), None without telemetry."""
    series = telemetry_series_by_config(results)
    return telemetry_plot_png(series) if series else None


# (caption, builder) in report order; builders take (report, results).
PLOTS: list[tuple[str, Callable[[Report, Mapping[str, ConfigResult]], bytes | None]]] = [
    ("TTFT per config, p50 with 95% bootstrap CI", lambda report, results: ttft_png(report)),
    ("KV cache MISS vs HIT per config", lambda report, results: kv_cache_png(report)),
    ("Throughput vs concurrency", lambda report, results: throughput_png(report)),
    ("TTFT per turn in long conversations", lambda report, results: turn_ttft_png(results)),
    ("Latency distributions (raw samples)", lambda report, results: latency_distributions_png(report)),
    ("GPU telemetry over time", lambda report, results: telemetry_png(results)),
    ("Capacity within the SLO: throughput vs p95 TTFT across configs (Pareto)",
     lambda report, results: pareto_png(results)),
]


def report_plots(report: Report, results: Mapping[str, ConfigResult]) -> list[tuple[str, bytes]]:
    """Every plot that has data, as (caption, PNG bytes)."""
    out = []
    for caption, build in PLOTS:
        png = build(report, results)
        if png:
            out.append((caption, png))
    return out
