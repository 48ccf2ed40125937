"""Deployers: one interface (base.Deployer), several small implementations."""

from __future__ import annotations

from typing import Any

from pytest_vllmgrid.deploy.base import Deployer, DeploymentError, Deployment, Endpoint
from pytest_vllmgrid.deploy.builtin import BUILTIN_KINDS
from pytest_vllmgrid.deploy.options import DeployOptions

__all__ = ["Deployer", "DeploymentError", "Deployment", "Endpoint", "DeployOptions", "BUILTIN_KINDS",
           "deployer_kinds", "make_deployer"]


def deployer_kinds(hook: Any = None) -> tuple[str, ...]:
    """Every deployer kind a grid may name: the built-in ones, then those of the plugins' and conftests'
    `pytest_vllmgrid_deployer_kinds` (`hook` is pytest's `config.hook`; None: the built-in kinds only)."""
    kinds = list(BUILTIN_KINDS)
    for extra in (hook.pytest_vllmgrid_deployer_kinds() if hook is not None else []):
        for kind in [extra] if isinstance(extra, str) else (extra or []):
            if kind not in kinds:
                kinds.append(str(kind))
    return tuple(kinds)


def make_deployer(kind: str, options: DeployOptions, grid_spec=None, hook: Any = None) -> Deployer:
    """The deployer named by the grid (`deployer:`) or `--vllm-deployer`: through the
    `pytest_vllmgrid_make_deployer` hook when `hook` (pytest's `config.hook`) is given, else a built-in one."""
    if hook is not None:
        deployer = hook.pytest_vllmgrid_make_deployer(kind=kind, options=options, grid_spec=grid_spec)
    else:
        from pytest_vllmgrid.deploy import builtin

        deployer = builtin.pytest_vllmgrid_make_deployer(kind, options, grid_spec)
    if deployer is None:
        kinds = deployer_kinds(hook)
        if kind in kinds:
            raise ValueError(f"deployer {kind!r} is declared (pytest_vllmgrid_deployer_kinds) but no "
                             "pytest_vllmgrid_make_deployer implementation built it")
        raise ValueError(f"unknown deployer {kind!r}; allowed: {', '.join(kinds)}")
    return deployer
