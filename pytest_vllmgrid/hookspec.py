"""Hooks other plugins and conftest.py files implement to extend pytest-vllmgrid (registered by
`plugin.pytest_addhooks`). Working examples: tests/test_hookspec.py; overview: docs/architecture.md.

Everything passed to and returned from these hooks is plain data or plain objects: the deployer
and report packages never import pytest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_vllmgrid.deploy import Deployer, DeployOptions
    from pytest_vllmgrid.grid import Grid, GridFile
    from pytest_vllmgrid.results import ConfigResult


@pytest.hookspec(firstresult=True)
def pytest_vllmgrid_make_deployer(kind: str, options: DeployOptions, grid_spec: GridFile | None) -> Deployer | None:
    """Build the deployer named `kind` (the grid's `deployer:`, or `--vllm-deployer`), or return None when
    `kind` is not yours. The first non-None result wins; the built-in kinds (process, compose, endpoint) are
    implemented last (`trylast`), so an implementation may also replace one of them.

    `options` are the run's deployer options (deploy.DeployOptions: startup timeout, API key env, ports, GPUs,
    endpoint URL...); `grid_spec` is the validated grid file (grid.GridFile; its extra sections are not allowed,
    so pass your own settings through `options`, the environment or your own ini keys).

    A deployer has `preflight(grid)`, `plan(config) -> dict` and `deploy(config, workdir) -> Deployment`
    (see deploy.base); a new kind must also be named by `pytest_vllmgrid_deployer_kinds`.
    """


def pytest_vllmgrid_deployer_kinds() -> list[str]:
    """Extra deployer kinds this plugin provides (e.g. ["kubernetes"]): the grid's `deployer:` field and
    `--vllm-deployer` accept them, and the error for an unknown kind lists them with the built-in ones."""


def pytest_vllmgrid_report_sections(results: Mapping[str, ConfigResult], grid: Grid | None) -> list[tuple[str, str]]:
    """Extra sections for report.md (and report.json's `extensions`), after the built-in ones:
    a list of (title, Markdown body) pairs.

    `results` maps each config name to its stored `results.ConfigResult` (typed: `.status`, `.deployment`,
    `.tests[key].measurement.metrics[name].p50`, raw samples...); `grid` is the loaded grid.
    Called once, on the controller, when the run's reports are written.
    """


def pytest_vllmgrid_report_columns(results: Mapping[str, ConfigResult],
                                   grid: Grid | None) -> list[tuple[str, dict[str, str]]]:
    """Extra columns for report.md's ranking table, after the built-in ones: a list of
    (column title, {config name: cell text}) pairs; a config missing from the mapping gets an empty cell.
    Same arguments as `pytest_vllmgrid_report_sections`."""
