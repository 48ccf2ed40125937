"""Does this machine have what a config needs: its GPUs (visible through NVML) and free disk. Plain Python."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from pytest_vllmgrid.grid import ServerConfig


def gpus_needed(config: ServerConfig) -> int:
    """GPUs one server of this config uses: tensor_parallel_size x pipeline_parallel_size (1 x 1 when unset)."""
    return int(config.params.get("tensor_parallel_size") or 1) * int(config.params.get("pipeline_parallel_size") or 1)


def gpu_problem(config: ServerConfig, env: Mapping[str, str]) -> str | None:
    """Why the server of `config`, started with environment `env` (its CUDA_VISIBLE_DEVICES: this worker's GPU set),
    cannot get the GPUs it needs, or None. Only a parallel config (tp x pp > 1) is checked: one device may be a CPU
    (vLLM's CPU build runs a config without these flags)."""
    need = gpus_needed(config)
    if need <= 1:
        return None
    from pytest_vllmgrid.telemetry import TelemetryUnavailable, resolve_devices

    visible = env.get("CUDA_VISIBLE_DEVICES")
    try:
        have, why = len(resolve_devices(visible)), ""
    except TelemetryUnavailable as exc:
        have, why = 0, f" ({exc})"
    if have >= need:
        return None
    where = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "this machine"
    tp, pp = config.params.get("tensor_parallel_size") or 1, config.params.get("pipeline_parallel_size") or 1
    return (f"config {config.name!r} needs {need} GPUs (tensor_parallel_size {tp} x pipeline_parallel_size {pp}) "
            f"but {where} has {have} visible through NVML{why}; run it on a machine with {need} GPUs, or give "
            "this worker more (--vllm-gpus-per-config, CUDA_VISIBLE_DEVICES)")


def disk_problem(paths: Mapping[str, Path], min_free_gb: float) -> str | None:
    """The first of `paths` (label -> path, made or not) whose disk has less than `min_free_gb` free, or None."""
    for label, path in paths.items():
        probe = Path(path).expanduser()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free_gb = shutil.disk_usage(probe).free / 1e9
        if free_gb < min_free_gb:
            return (f"only {free_gb:.1f} GB free on the disk of {label} ({path}); at least {min_free_gb:g} GB needed "
                    "(--vllm-min-free-disk-gb)")
    return None
