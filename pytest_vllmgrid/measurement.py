"""What a benchmark builds: a `Measurement` (typed, in results.models) with metrics, samples and context.

Kept as the benchmarks' import point: `Measurement`, `LOWER` / `HIGHER`.
"""

from __future__ import annotations

from pytest_vllmgrid.results.models import HIGHER, LOWER, Measurement, Metric

__all__ = ["HIGHER", "LOWER", "Measurement", "Metric"]
