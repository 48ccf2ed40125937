"""The built-in deployer kinds as implementations of the `pytest_vllmgrid_make_deployer` hook (hookspec.py).

Registered as a plugin by plugin.py; plain pluggy, no pytest import. `trylast`: a user's implementation of
the hook runs first and may replace a built-in kind.
"""

from __future__ import annotations

import pluggy

from pytest_vllmgrid.deploy.base import Deployer
from pytest_vllmgrid.deploy.options import DeployOptions
from pytest_vllmgrid.grid import BUILTIN_DEPLOYERS as BUILTIN_KINDS

hookimpl = pluggy.HookimplMarker("pytest")


@hookimpl(trylast=True)
def pytest_vllmgrid_make_deployer(kind: str, options: DeployOptions, grid_spec=None) -> Deployer | None:
    """process, compose or endpoint; None for any other kind."""
    if kind == "process":
        from pytest_vllmgrid.deploy.process import ProcessDeployer

        return ProcessDeployer(options)
    if kind == "compose":
        from pytest_vllmgrid.deploy.compose import ComposeDeployer

        return ComposeDeployer(options, grid_spec)
    if kind == "endpoint":
        from pytest_vllmgrid.deploy.endpoint import EndpointDeployer

        return EndpointDeployer(options, grid_spec)
    return None
