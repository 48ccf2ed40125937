"""Endpoint deployer: an already-running server; nothing is started or stopped, readiness is still proven."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pytest_vllmgrid.deploy.base import DeploymentError, Deployment, Endpoint
from pytest_vllmgrid.deploy.options import DeployOptions
from pytest_vllmgrid.deploy.readiness import wait_until_ready
from pytest_vllmgrid.grid import SERVED_MODEL, Grid, ServerConfig


@dataclass
class EndpointDeployer:
    """Measures a server someone else runs (grid `endpoint: {base_url}` or --vllm-endpoint-url)."""

    options: DeployOptions
    grid_spec: Any = None
    name: str = "endpoint"
    served: list[str] | None = None  # the model ids /v1/models listed at preflight

    @property
    def base_url(self) -> str:
        """The server's base URL, without /v1."""
        url = self.options.endpoint_url or (self.grid_spec.endpoint.base_url if self.grid_spec and
                                            self.grid_spec.endpoint else None)
        if not url:
            raise DeploymentError("deployer endpoint needs `endpoint: {base_url: ...}` in the grid or "
                                  "--vllm-endpoint-url", kind="preflight")
        return url.rstrip("/").removesuffix("/v1")

    def preflight(self, grid: Grid) -> None:
        """The endpoint must answer /v1/models now (it is not ours to start)."""
        headers = {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        try:
            resp = httpx.get(f"{self.base_url}/v1/models", headers=headers, timeout=10, trust_env=False)
        except httpx.HTTPError as exc:
            raise DeploymentError(f"endpoint {self.base_url} does not answer: {type(exc).__name__}",
                                  kind="preflight") from None
        if resp.status_code != 200:
            raise DeploymentError(f"endpoint {self.base_url}/v1/models answered HTTP {resp.status_code}",
                                  kind="preflight")
        try:
            self.served = [str(m.get("id")) for m in resp.json().get("data", [])]
        except (ValueError, AttributeError, TypeError):
            self.served = []
        if any(cfg.model_name == SERVED_MODEL for cfg in grid.configs):
            self.model_for(grid.configs[0])

    def model_for(self, config: ServerConfig) -> str:
        """The model the benchmarks ask for: the grid's, else the one model the server lists."""
        if config.model_name != SERVED_MODEL:
            return config.model_name
        if self.served is None or len(self.served) != 1:
            listed = ", ".join(self.served or []) or "none"
            raise DeploymentError(f"endpoint {self.base_url} lists {len(self.served or [])} models ({listed}): "
                                  "name the one to measure with --vllm-model NAME", kind="preflight")
        return self.served[0]

    def plan(self, config: ServerConfig) -> dict[str, Any]:
        """Nothing is deployed: the benchmarks run against the given URL."""
        return {"endpoint": self.base_url, "note": "already running; grid parameters are recorded, not applied"}

    def deploy(self, config: ServerConfig, workdir: Path) -> Deployment:
        """Wait until the endpoint serves the model and a completion; teardown does nothing."""
        endpoint = Endpoint(self.base_url, self.model_for(config), self.options.api_key)
        start = time.monotonic()
        ready = wait_until_ready(endpoint, death_reason=lambda: None,
                                 timeout_s=self.options.startup_timeout_s or config.startup_timeout_s,
                                 poll_interval_s=self.options.poll_interval_s, config_name=config.name)
        return Deployment(config_name=config.name, endpoint=endpoint, startup_seconds=time.monotonic() - start,
                          health_check_attempts=ready.attempts, log_path=None,
                          describe={"deployer": self.name, "endpoint": self.base_url, "model": endpoint.model,
                                    "params_applied": False, "ready_monotonic": ready.first_ok_monotonic})
