"""What a run manifest records about the machine and the software, and what earlier runs tell us.

Plain Python (no pytest): hardware and versions, the command line with secrets masked, the server's own
version, the visible GPUs, the latest unfinished run (for a bare --resume) and duration estimates from
the latest stored run of the same grid and model (for --vllm-dry-run).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import JsonValue

import httpx

from pytest_vllmgrid.results import ResultsStore, ResumeRecord, RunManifest

if TYPE_CHECKING:
    from pytest_vllmgrid.deploy.base import Deployment


def latest_unfinished_run(results_base: Path) -> str | None:
    """The newest results directory whose run did not complete (for a bare --resume); None if there is none."""
    manifests = sorted(results_base.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in manifests:
        status = ResultsStore(manifest.parent).manifest().status
        if status != "complete":
            return str(manifest.parent)
    return None


def provenance(stored: RunManifest, *, started: str, argv: list[str], resuming: bool,
               rerun: list[str]) -> dict[str, JsonValue]:
    """The manifest's `started`, `argv` and `resumes`: this session's own on a fresh run; on --resume the first
    session's, with this resume (started, argv, the configs it ran again) added to `resumes` or updated there."""
    if not resuming or not stored.started:
        return {"started": started, "argv": argv}
    this = ResumeRecord(time=started, argv=argv, configs=rerun)
    resumes = [r for r in stored.resumes if r.time != started] + [this]
    return {"started": stored.started, "argv": stored.argv, "resumes": [r.model_dump(mode="json") for r in resumes]}


def complete_runs(results_bases: list[Path], grid_name: str, exclude: Path | None = None) -> list[Path]:
    """Complete stored runs of the grid named `grid_name` under `results_bases`, newest first (`exclude`: this
    run's own directory)."""
    found: dict[Path, tuple[str, Path]] = {}
    for base in results_bases:
        for path in base.glob("*/manifest.json"):
            run_dir = path.parent.resolve()
            if run_dir in found or (exclude is not None and run_dir == exclude.resolve()):
                continue
            run = ResultsStore(path.parent).manifest()
            if run.status == "complete" and run.grid_name == grid_name:
                found[run_dir] = (run.ended or run.started or "", path.parent)
    return [shown for _, shown in sorted(found.values(), key=lambda item: item[0], reverse=True)]


def visible_devices() -> list[str]:
    """GPUs this run may use: CUDA_VISIBLE_DEVICES entries when set, else NVML's device list."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        from pytest_vllmgrid.telemetry import list_devices

        return [str(d.index) for d in list_devices()]
    except Exception:  # no driver: a CPU machine has no GPU sets
        return []


def estimate_durations(results_base: Path, grid_name: str, model: str) -> tuple[float, float, Path] | None:
    """(startup s, seconds per benchmark, run dir) from the latest stored run of the same grid and model; None
    when there is none (another grid's or model's timings say nothing about this one)."""
    runs = sorted((p for p in results_base.glob("*/manifest.json")), key=lambda p: p.stat().st_mtime)
    for path in reversed(runs):
        store = ResultsStore(path.parent)
        run = store.manifest()
        if run.grid_name != grid_name or run.model != model:
            continue
        configs = [c for c in store.all_configs().values() if c.status == "complete"]
        startups = [c.deployment.startup_time_seconds for c in configs if c.deployment.startup_time_seconds]
        per_test = [t.duration_s for c in configs for t in c.tests.values() if t.duration_s is not None]
        if startups and per_test:
            return (sum(startups) / len(startups), sum(per_test) / len(per_test), path.parent)
    return None


def server_version(deployment: Deployment) -> str | None:
    """vLLM's own version, from the server's /version."""
    try:
        resp = deployment.http().get(f"{deployment.endpoint.base_url}/version", timeout=5)
        return resp.json().get("version") if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def hardware_info() -> dict[str, JsonValue]:
    """CPU, memory and GPU names of this machine."""
    info: dict[str, JsonValue] = {"machine": platform.machine(), "system": platform.system(),
                            "cpu_count": os.cpu_count(), "processor": platform.processor() or None}
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        from pytest_vllmgrid.telemetry import resolve_devices

        info["gpus"] = [getattr(d, "name", str(d)) for d in resolve_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))]
    except Exception as exc:  # no driver / no NVML: recorded, never fatal
        info["gpus"] = []
        info["gpu_probe"] = f"{type(exc).__name__}: {exc}"[:200]
    return info


def machine_facts(gpu_devices: list[str] | None, endpoint_url: str | None = None) -> dict[str, JsonValue]:
    """Where a config's server runs: `host` and `gpu_uuids` (NVML UUIDs of the GPUs it was given: `gpu_devices`,
    else this process's CUDA_VISIBLE_DEVICES; None without NVML). A remote endpoint's host is its URL's, and its
    GPUs cannot be read from here."""
    remote = urlsplit(endpoint_url).hostname if endpoint_url else None
    if remote and remote not in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return {"host": remote, "gpu_uuids": None}
    from pytest_vllmgrid.telemetry import TelemetryUnavailable, resolve_devices

    visible = ",".join(gpu_devices) if gpu_devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        uuids: list[JsonValue] | None = [d.uuid for d in resolve_devices(visible)]
    except TelemetryUnavailable:
        uuids = None
    return {"host": socket.gethostname(), "gpu_uuids": uuids}


def package_version(dist: str) -> str | None:
    """An installed distribution's version, or None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def safe_argv() -> list[str]:
    """The command line, with anything that looks like a secret masked."""
    out = []
    for arg in sys.argv:
        lowered = arg.lower()
        out.append("***" if any(w in lowered for w in ("key=", "token=", "secret=", "password=")) else arg)
    return out
