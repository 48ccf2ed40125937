"""Capacity under the SLO in the report: each config's operating points from the capacity benchmark
(benchmarks/test_capacity.py), the Pareto plot across configs and the recommendation's load sentence.

Reads only stored results: `capacity[SEARCH]` tests' metrics (the capacity with its interval, the figures of
the probe at capacity) and their `info.probes`; GPUs per config from the deployment's recorded GPU UUIDs.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_vllmgrid.numbers import fmt_number
from pytest_vllmgrid.results import ConfigResult, Metric

# The figure the load sentence compares, in order of preference: TEST.METRIC, what it is, its unit
CAPACITY_KEYS = (("capacity[poisson].capacity_rate", "Poisson arrivals", "req/s"),
                 ("capacity[gamma].capacity_rate", "gamma arrivals", "req/s"),
                 ("capacity[concurrency].capacity_concurrency", "closed loop", "concurrent requests"))
MARKERS = {"poisson": "o", "gamma": "s", "concurrency": "^"}


@dataclass(frozen=True)
class OperatingPoint:
    """One probe of a config's capacity search: its throughput, p95 TTFT and outcome."""

    config: str
    search: str  # poisson | gamma | concurrency
    load: float
    output_tok_s: float
    ttft_p95_ms: float
    outcome: str  # meets | misses | inconclusive
    gpus: int | None  # GPUs the config's server ran on (None: not recorded)
    at_capacity: bool = False

    @property
    def tok_s_per_gpu(self) -> float | None:
        """Output tokens per second per GPU, where the GPUs are known."""
        return self.output_tok_s / self.gpus if self.gpus else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def operating_points(results: Mapping[str, ConfigResult]) -> list[OperatingPoint]:
    """Every capacity probe with a throughput and a p95 TTFT, per config (failed deployments left out); the
    probe each search ended on is marked `at_capacity`."""
    points = []
    for name, data in results.items():
        if data.failure():
            continue
        gpus = len(data.deployment.gpu_uuids) if data.deployment.gpu_uuids else None
        for key, test in data.tests.items():
            m = test.measurement
            if not key.startswith("capacity[") or m is None or not isinstance(m.info.get("probes"), list):
                continue
            search = key[len("capacity["):-1]
            bracket = m.info.get("bracket")
            capacity = _number(bracket.get("lo")) if isinstance(bracket, dict) else None
            for probe in m.info["probes"]:
                if not isinstance(probe, dict):
                    continue
                load, tok_s, ttft = (_number(probe.get(k)) for k in ("load", "output_tok_s", "ttft_ms_p95"))
                if load is None or tok_s is None or ttft is None:
                    continue
                points.append(OperatingPoint(name, search, load, tok_s, ttft, str(probe.get("outcome")), gpus,
                                             at_capacity=capacity is not None and load == capacity))
    return points


def pareto_front(points: list[OperatingPoint], per_gpu: bool = False) -> list[OperatingPoint]:
    """The points no other point beats on both throughput (higher) and p95 TTFT (lower), by TTFT."""
    def value(p: OperatingPoint) -> float:
        return (p.tok_s_per_gpu or 0.0) if per_gpu else p.output_tok_s
    front = [p for p in points if not any(value(q) >= value(p) and q.ttft_p95_ms <= p.ttft_p95_ms
                                          and (value(q) > value(p) or q.ttft_p95_ms < p.ttft_p95_ms) for q in points)]
    return sorted(front, key=lambda p: p.ttft_p95_ms)


def pareto_png(results: Mapping[str, ConfigResult]) -> bytes | None:
    """Throughput vs p95 TTFT of every capacity probe within the SLO, per config, each search's capacity point
    large, the Pareto front across configs' capacity points dashed; a second panel in tokens/s per GPU where
    every config's GPUs are known. None without capacity probes."""
    points = [p for p in operating_points(results) if p.outcome == "meets"]
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_gpu = all(p.gpus for p in points)
    fig = Figure(figsize=(7.5, 4.2 * (2 if per_gpu else 1)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if per_gpu else 1, 1, squeeze=False)[:, 0]
    configs = list(dict.fromkeys(p.config for p in points))
    colours = {name: f"C{i % 10}" for i, name in enumerate(configs)}
    for ax, gpu_panel in zip(axes, (False, True)):
        def y(p: OperatingPoint) -> float:
            return (p.tok_s_per_gpu or 0.0) if gpu_panel else p.output_tok_s
        for p in points:
            ax.scatter([p.ttft_p95_ms], [y(p)], color=colours[p.config], marker=MARKERS.get(p.search, "o"),
                       s=90 if p.at_capacity else 18, alpha=1.0 if p.at_capacity else 0.35,
                       edgecolors="black" if p.at_capacity else "none")
        front = pareto_front([p for p in points if p.at_capacity], per_gpu=gpu_panel)
        if len(front) > 1:
            ax.plot([p.ttft_p95_ms for p in front], [y(p) for p in front], "k--", linewidth=1, label="Pareto front")
        for p in points:
            if p.at_capacity:
                ax.annotate(f"{p.config} ({p.search})", (p.ttft_p95_ms, y(p)), fontsize="x-small",
                            xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("p95 TTFT ms at the probe")
        ax.set_ylabel("output tokens/s per GPU" if gpu_panel else "output tokens/s")
        ax.grid(True, alpha=0.3)
    for name in configs:
        axes[0].scatter([], [], color=colours[name], label=name)
    axes[0].legend(fontsize="small")
    axes[0].set_title("Capacity within the SLO: throughput vs p95 TTFT (large: each search's capacity; "
                      "o Poisson, s gamma, ^ closed loop)", fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def capacity_sentence(metrics: Mapping[str, Mapping[str, Metric]], baseline: str | None) -> str:
    """' X serves 1.8x the load of baseline B within the SLO (...)', when the configs' valid capacities say so
    (the ratio's interval from the two capacity intervals clears 1); else what they do say; '' without a
    baseline capacity to compare with. `metrics`: config name -> its flattened metrics (TEST.METRIC)."""
    base = metrics.get(baseline or "")
    if base is None:
        return ""
    for key, label, unit in CAPACITY_KEYS:
        own = base.get(key)
        if own is None or own.validity != "valid" or not own.value or own.ci is None or own.ci[0] <= 0:
            continue
        ratios = []
        for name, rows in metrics.items():
            other = rows.get(key)
            if name == baseline or other is None or other.validity != "valid" or other.value is None \
                    or other.ci is None:
                continue
            ratios.append((other.value / own.value, other.ci[0] / own.ci[1], other.ci[1] / own.ci[0], name,
                           other.value))
        if not ratios:
            return ""
        ratio, low, high, name, value = max(ratios)
        figures = (f"{fmt_number(value)} vs {fmt_number(own.value)} {unit}, {label}; x{low:.2f}–{high:.2f} from "
                   "the two capacity intervals")
        who = baseline if baseline == "baseline" else f"baseline {baseline}"
        if low > 1:
            return f" {name} serves {ratio:.1f}x the load of {who} within the SLO ({figures})."
        return f" Within the SLO no config serves significantly more load than {who} (best: {name}, {figures})."
    return ""
