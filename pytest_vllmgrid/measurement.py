"""The shape of a stored measurement: metrics with units and direction, raw samples, context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from pytest_vllmgrid.stats import RatioEstimate, summarize

LOWER = "lower"
HIGHER = "higher"


def sample_metric(values: Sequence[float], unit: str, better: str, *, headline: bool = False) -> dict[str, Any]:
    """A metric measured over a sample: n, mean, percentiles, median CI, unit, direction."""
    return {**summarize(list(values)).to_dict(), "kind": "sample", "unit": unit, "better": better,
            "headline": headline}


def value_metric(value: float | None, unit: str, better: str | None, *, headline: bool = False,
                 ci: tuple[float, float] | None = None, method: str = "", n: int | None = None) -> dict[str, Any]:
    """A single derived number (rate, ratio, percentage), with its CI when it has one."""
    return {"kind": "value", "value": value, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
            "unit": unit, "better": better, "headline": headline, "method": method, "n": n}


def ratio_metric(estimate: RatioEstimate, unit: str, better: str, *, headline: bool = False) -> dict[str, Any]:
    """A bootstrap ratio estimate as a metric."""
    return value_metric(estimate.value, unit, better, headline=headline, ci=(estimate.ci_low, estimate.ci_high),
                        method=estimate.method, n=min(estimate.n_numerator, estimate.n_denominator))


def point_of(metric: dict[str, Any], stat: str = "p50") -> float | None:
    """The number a metric is ranked and compared by (a sample's p50 by default, else its value)."""
    if metric.get("kind") == "sample":
        return metric.get(stat)
    return metric.get("value")


@dataclass
class Measurement:
    """What one benchmark stores for one config."""

    method: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    server: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add_sample(self, name: str, values: Sequence[float], unit: str, better: str, *,
                   headline: bool = False) -> dict[str, Any]:
        """Summarise a sample, keep its raw values (the regression gate reads them)."""
        clean = [float(v) for v in values if v is not None]
        self.samples[name] = [round(v, 6) for v in clean]
        self.metrics[name] = sample_metric(clean, unit, better, headline=headline)
        return self.metrics[name]

    def add_value(self, name: str, value: float | None, unit: str, better: str | None = None, **kw: Any) -> None:
        """Add a derived number."""
        self.metrics[name] = value_metric(value, unit, better, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the results store."""
        return {"method": self.method, "metrics": self.metrics, "samples": self.samples, "server": self.server,
                "info": self.info, "warnings": self.warnings}
