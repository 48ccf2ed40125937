"""Where a deployed server answers (`Endpoint`): the one deployment fact benchmarks and bench.py need.

A neutral module, so that benchmarks and the benchmark helpers never import deploy/; deploy.base and
the deploy package re-export it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    """Where a deployed server answers: everything a benchmark may know about it."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)

    @property
    def metrics_url(self) -> str:
        """The Prometheus /metrics address."""
        return f"{self.base_url}/metrics"

    def headers(self) -> dict[str, str]:
        """HTTP headers for an authenticated request."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
