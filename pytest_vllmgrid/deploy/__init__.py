"""Deployers: one interface (base.Deployer), several small implementations."""

from __future__ import annotations

from pytest_vllmgrid.deploy.base import Deployer, DeploymentError, Deployment, Endpoint
from pytest_vllmgrid.deploy.options import DeployOptions

__all__ = ["Deployer", "DeploymentError", "Deployment", "Endpoint", "DeployOptions", "make_deployer"]


def make_deployer(kind: str, options: DeployOptions, grid_spec=None) -> Deployer:
    """The deployer named by the grid (`deployer:`) or `--vllm-deployer`."""
    if kind == "process":
        from pytest_vllmgrid.deploy.process import ProcessDeployer

        return ProcessDeployer(options)
    if kind == "compose":
        from pytest_vllmgrid.deploy.compose import ComposeDeployer

        return ComposeDeployer(options, grid_spec)
    if kind == "endpoint":
        from pytest_vllmgrid.deploy.endpoint import EndpointDeployer

        return EndpointDeployer(options, grid_spec)
    raise ValueError(f"unknown deployer {kind!r}; allowed: process, compose, endpoint")
