"""Where and how a run runs, from plain option values (no pytest): the grid file, the benchmark settings,
the results directory, this worker's index, GPU set and ports, the deployer options, the dry-run plan.

GridSession (session.py) reads pytest's options and passes their values here; a wrong value is a
ValueError (PlacementError, or the settings' own), which the pytest layer reports as a UsageError.
"""

from __future__ import annotations

import os
import shlex
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_vllmgrid.bench import BenchSettings, build_settings, parse_overrides
from pytest_vllmgrid.deploy.options import DeployOptions
from pytest_vllmgrid.grid import Grid
from pytest_vllmgrid.manifest import estimate_durations, latest_unfinished_run, visible_devices
from pytest_vllmgrid.progress import fmt_duration
from pytest_vllmgrid.results import default_results_dir

if TYPE_CHECKING:
    from pytest_vllmgrid.deploy.base import Deployer

DEFAULT_GRID = "cpu-tiny.yaml"
ENDPOINT_GRID = "endpoint.yaml"  # --vllm-deployer endpoint without a grid: the running server, one config
DEFAULT_PORT_BASE = 20000
PORTS_PER_WORKER = 100


class PlacementError(ValueError):
    """An option value this run cannot use (the pytest layer turns it into a UsageError)."""


def packaged_default_grid(name: str = DEFAULT_GRID) -> Path:
    """An embedded grid: the default (tiny model on the CPU, process deployer), or ENDPOINT_GRID."""
    return Path(str(resources.files("pytest_vllmgrid").joinpath(f"data/{name}")))


def cache_root() -> Path:
    """Where models, owned-process records and vLLM caches live across runs."""
    return Path(os.environ.get("VLLMGRID_CACHE_DIR") or Path.home() / ".cache" / "pytest-vllmgrid")


def grid_path(given: str | None, ini: str | None, rootpath: Path, deployer: str | None = None) -> Path:
    """--grid, else the ini's vllm_grid (relative to the rootdir), else the embedded default (with
    --vllm-deployer endpoint: the one-config grid of the running server)."""
    if given:
        return Path(given)
    if ini:
        return Path(rootpath, ini)
    return packaged_default_grid(ENDPOINT_GRID if deployer == "endpoint" else DEFAULT_GRID)


def bench_settings(grid: Grid, bench: Any, repetitions: Any = None, warmup: Any = None) -> BenchSettings:
    """Benchmark settings: defaults < grid `benchmarks:` < --vllm-bench KEY=VALUE (`bench`) < --vllm-repetitions /
    --vllm-warmup. A bad value is a ValueError naming the grid file."""
    overrides = parse_overrides(bench or [])
    sources = {pair.split("=", 1)[0].strip(): f"--vllm-bench {pair}" for pair in bench or []}
    for key, value in (("repetitions", repetitions), ("warmup", warmup)):
        if value is not None:
            overrides[key] = value
            sources[key] = f"--vllm-{key} {value}"
    return build_settings(grid.spec.benchmarks, overrides, str(grid.path), sources)


def results_path(rootpath: Path, *, worker_results_dir: str | None, resume: str | None,
                 results_dir: str | None) -> Path:
    """The results directory of this run: the controller's (on an xdist worker), else --resume's (DIR, or
    "latest": --results-dir when given, else the newest unfinished run under ROOT/results), else --results-dir, else
    a new results/<timestamp>/."""
    if resume == "latest" and results_dir:
        resume = results_dir  # `--results-dir D --resume`: resume D, not the newest run under results/
    if resume == "latest":
        resume = latest_unfinished_run(Path(rootpath) / "results")
        if resume is None:
            raise PlacementError(f"--resume: no unfinished run under {Path(rootpath) / 'results'}; "
                                 "pass the directory explicitly")
    chosen = worker_results_dir or resume or results_dir
    return Path(chosen) if chosen else default_results_dir(Path(rootpath))


def worker_index(workerid: str = "gw0") -> int:
    """0 without xdist; N for worker gwN."""
    return int(workerid[2:]) if workerid[2:].isdigit() else 0


def gpu_set(per_config: int | None, worker: int) -> list[str] | None:
    """Worker `worker`'s GPUs (--vllm-gpus-per-config K): a disjoint slice of the visible devices; None without K."""
    if not per_config:
        return None
    per = int(per_config)
    devices = visible_devices()
    first = worker * per
    chosen = devices[first:first + per]
    if len(chosen) < per:
        raise PlacementError(
            f"--vllm-gpus-per-config {per_config}: worker {worker} needs devices {first}..{first + per - 1}"
            f" but only {len(devices)} are visible ({', '.join(devices) or 'none'}); use fewer workers (-n) "
            "or fewer GPUs per config")
    return chosen


def port_range(is_worker: bool, port_base: int | None, worker: int) -> tuple[int, int] | None:
    """Under xdist, a disjoint port range per worker (--vllm-port-base + 100 * index); None = any free port."""
    if not is_worker:
        return None
    base = int(port_base or DEFAULT_PORT_BASE)
    return (base + PORTS_PER_WORKER * worker, base + PORTS_PER_WORKER * worker + PORTS_PER_WORKER - 1)


def deploy_options(grid: Grid, *, api_key_env: str | None = None, startup_timeout_s: float | None = None,
                   compose_file: str | None = None, compose_service: str | None = None,
                   compose_project: str | None = None, compose_env_file: str | None = None,
                   min_free_disk_gb: float | str = 5.0, restore: bool = False, endpoint_url: str | None = None,
                   gpu_devices: list[str] | None = None,
                   port_range: tuple[int, int] | None = None, offline: bool = False) -> DeployOptions:
    """DeployOptions from the command line / ini values (given here) over the grid's own keys."""
    key_env = api_key_env or grid.spec.api_key_env
    compose = grid.spec.compose
    return DeployOptions(
        state_dir=cache_root(), cache_root=cache_root(), api_key_env=key_env,
        api_key=os.environ.get(key_env) if key_env else None,
        startup_timeout_s=startup_timeout_s, poll_interval_s=0.5,
        compose_file=compose_file or (compose.file if compose else None),
        compose_service=compose_service or (compose.service if compose else None),
        compose_project=compose_project or (compose.project_name if compose else None),
        compose_env_file=compose_env_file or (compose.env_file if compose else None),
        min_free_disk_gb=float(min_free_disk_gb), restore=restore,
        endpoint_url=endpoint_url or (grid.spec.endpoint.base_url if grid.spec.endpoint else None),
        gpu_devices=gpu_devices, port_range=port_range, offline=bool(offline or grid.spec.offline),
    )


def dry_run_lines(grid: Grid, deployer: Deployer, thresholds_path: Path | None, selected: set[str], tests: int,
                  results_base: Path) -> list[str]:
    """--vllm-dry-run's report: each selected config's exact plan and an estimate from the latest run of the same
    grid and model under `results_base` (none without one). The caller has validated grid and thresholds and run
    the preflight."""
    configs = [c for c in grid.configs if c.name in selected]
    per_config_tests = max(1, tests // max(1, len(configs)))
    earlier = estimate_durations(results_base, grid.name, grid.spec.model)
    basis = (f"estimates from the run in {earlier[2]}" if earlier else
             f"no estimate: no earlier run of grid {grid.name!r} with model {grid.spec.model!r} under {results_base}")
    lines = [f"vllmgrid dry run: grid {grid.path} is valid; thresholds "
             f"{thresholds_path or '(none)'} are valid; {grid.deployer} preflight passed",
             f"{len(configs)} config(s), {tests} benchmark(s); {basis}"]
    for i, cfg in enumerate(configs, 1):
        plan = deployer.plan(cfg)
        estimate = f": ~{fmt_duration(earlier[0] + earlier[1] * per_config_tests)}" if earlier else ""
        lines.append(f"[{i}/{len(configs)}] {cfg.name}{' (baseline)' if cfg.is_baseline else ''}{estimate}")
        for key, value in plan.items():
            shown = shlex.join(value) if key == "command" and isinstance(value, list) else value
            lines.append(f"    {key}: {shown}")
    if earlier:
        lines.append(f"estimated total: {fmt_duration((earlier[0] + earlier[1] * per_config_tests) * len(configs))}")
    return lines
