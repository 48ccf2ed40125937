"""The report's GPU telemetry section: a Markdown table with alerts, and a PNG of the series."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from pytest_vllmgrid.results import ConfigResult
from pytest_vllmgrid.telemetry import Alert, AlertThresholds, TelemetrySeries, check_alerts, summarize_series

_COLUMNS = (
    "Config", "GPU", "Samples", "Duration s", "Util mean %", "Util max %",
    "VRAM start MiB", "VRAM peak MiB", "VRAM peak %", "Max temp °C", "Mean power W",
)


def _cell(value: object) -> str:
    """A table cell: '–' for missing values, pipes escaped."""
    if value is None:
        return "–"
    if isinstance(value, float):
        value = f"{value:.1f}"
    return str(value).replace("|", "\\|")


def _thresholds_line(thresholds: AlertThresholds, saturating: bool) -> str:
    """One sentence stating the alert thresholds in force."""
    parts = []
    if thresholds.vram_pct is not None:
        parts.append(f"VRAM > {thresholds.vram_pct:g} %")
    if thresholds.temp_c is not None:
        parts.append(f"temperature > {thresholds.temp_c:g} °C")
    if thresholds.min_util_pct is not None:
        parts.append(f"mean utilisation < {thresholds.min_util_pct:g} % " + (
            "under load" if saturating else "in a benchmark whose load is meant to saturate the GPU (throughput at "
            "its highest concurrency; sequential benchmarks report utilisation without alerting)"))
    return "Alert thresholds (warnings): " + (", ".join(parts) if parts else "none") + "."


def telemetry_markdown(
    series_by_config: Mapping[str, TelemetrySeries],
    thresholds: AlertThresholds | None = None,
    *,
    saturating: bool = True,
    recorded_alerts: Sequence[tuple[str, Alert]] = (),
) -> str:
    """Markdown section: one table row per config/GPU, unavailable configs with reasons, alerts.

    `saturating`: whether the series' load was meant to saturate the GPU (else low utilisation is no alert on
    them); `recorded_alerts`: (label, alert) pairs the benchmarks recorded, listed with the series' alerts."""
    thresholds = thresholds or AlertThresholds()
    lines = ["## GPU telemetry", ""]
    if not series_by_config:
        return "\n".join(lines + ["No GPU telemetry was recorded.", ""])
    lines += [_thresholds_line(thresholds, saturating), ""]
    rows, unavailable, alerts = [], [], list[tuple[str, Alert]]()
    for config, series in series_by_config.items():
        if not series.available:
            unavailable.append(f"- `{config}`: telemetry unavailable: {series.reason or 'no reason recorded'}")
            continue
        summary = summarize_series(series)
        for dev in summary["devices"]:
            rows.append([
                config, f"{dev['index']} · {dev['name']}", summary["n_samples"], summary["duration_s"],
                dev["util_mean_pct"], dev["util_max_pct"], dev["mem_start_mb"], dev["mem_peak_mb"],
                dev["mem_peak_pct"], dev["temp_max_c"], dev["power_mean_w"],
            ])
        if series.errors:
            unavailable.append(f"- `{config}`: {series.errors} NVML reading(s) failed; last: {series.last_error}")
        alerts += [(config, a) for a in check_alerts(series, thresholds, saturating=saturating)]
    alerts += recorded_alerts
    if rows:
        lines.append("| " + " | ".join(_COLUMNS) + " |")
        lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(_COLUMNS))) + "|")
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        lines.append("")
    if unavailable:
        lines += unavailable + [""]
    lines += ["### Telemetry alerts", ""]
    if alerts:
        lines += [f"- ⚠ `{config}` {a.kind}: {a.message}" for config, a in alerts]
    else:
        lines.append("No telemetry alerts.")
    lines.append("")
    return "\n".join(lines)


def recorded_low_util_alerts(results: Mapping[str, ConfigResult]) -> list[tuple[str, Alert]]:
    """The low-utilisation alerts the benchmarks recorded (only those whose load was meant to saturate the GPU
    check it), labelled `config · test`: a config's whole series, sequential benchmarks included, is not."""
    found = []
    for name, data in results.items():
        for key, test in data.tests.items():
            alerts = test.measurement.telemetry().get("alerts") if test.measurement is not None else None
            found += [(f"{name} · {key}", Alert.from_dict(a)) for a in alerts or []
                      if isinstance(a, dict) and a.get("kind") == "low_util"]
    return found


def config_telemetry_markdown(series_by_config: Mapping[str, TelemetrySeries],
                              results: Mapping[str, ConfigResult]) -> str:
    """The report's section: each config's whole series, alerting on VRAM and temperature, with the
    low-utilisation alerts of the benchmarks meant to saturate the GPU."""
    return telemetry_markdown(series_by_config, saturating=False, recorded_alerts=recorded_low_util_alerts(results))


def telemetry_plot_png(series_by_config: Mapping[str, TelemetrySeries]) -> bytes:
    """PNG (matplotlib Agg): utilisation % and VRAM GiB over time, one line per config/GPU."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    util_ax, mem_ax = fig.subplots(2, 1, sharex=True)
    plotted = 0
    for config, series in series_by_config.items():
        if not series.available:
            continue
        times = [s.t for s in series.samples]
        for pos, device in enumerate(series.devices):
            label = f"{config} / GPU {device.index}"
            util = [_nan(s.gpus[pos].util_pct) for s in series.samples]
            mem = [_nan(s.gpus[pos].mem_used_mb) / 1024.0 for s in series.samples]
            util_ax.plot(times, util, label=label, linewidth=1.2)
            mem_ax.plot(times, mem, label=label, linewidth=1.2)
            plotted += 1
    util_ax.set_ylabel("GPU utilisation %")
    util_ax.set_ylim(-2, 102)
    mem_ax.set_ylabel("VRAM used GiB")
    mem_ax.set_xlabel("time since sampling started, s")
    fig.suptitle("GPU telemetry")
    if plotted:
        util_ax.legend(loc="upper right", fontsize="small")
    else:
        util_ax.text(0.5, 0.5, "no GPU telemetry available", ha="center", va="center",
                     transform=util_ax.transAxes)
    for ax in (util_ax, mem_ax):
        ax.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _nan(value: float | None) -> float:
    """None as NaN, so matplotlib leaves a gap."""
    return math.nan if value is None else value
