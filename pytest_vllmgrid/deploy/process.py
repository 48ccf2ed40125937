"""Process deployer: `vllm serve MODEL <flags>` as a subprocess in its own process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_vllmgrid.deploy import capacity, hub
from pytest_vllmgrid.deploy.base import DeploymentError, Deployment, Endpoint, read_from, tail_file
from pytest_vllmgrid.deploy.options import DeployOptions
from pytest_vllmgrid.deploy.owned import OwnedProcesses
from pytest_vllmgrid.deploy.readiness import wait_until_ready
from pytest_vllmgrid import dummymodel
from pytest_vllmgrid.grid import TINY_MODEL, Grid, ServerConfig

DEFAULT_VLLM_COMMAND = ("{python}", "-m", "pytest_vllmgrid.vllm_launcher", "serve")
BASE_ENV = {  # hub offline switches (hub.OFFLINE_ENV) only for the project's own '@' models or when asked
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_SERVER_DEV_MODE": "1",  # enables POST /reset_prefix_cache for the KV-cache benchmark
    "PYTHONUNBUFFERED": "1",
}
STOP_GRACE_S = 15.0
# The server gets a process group of its own (stop_process_group signals all of it at once; a terminal's
# Ctrl+C, sent to the foreground group, does not reach it) but stays in the caller's session. A session
# of its own (start_new_session) is also a scheduler autogroup of its own (kernel.sched_autogroup_enabled,
# on by default), and there vLLM's CPU engine, which busy-polls on every core during a request (the bound
# Worker on its shared-memory queue, EngineCore on the Worker's replies, both with sched_yield, which
# yields only inside its own group), starved the client reading the stream: on the 2-core default job the
# whole response reached the client in one burst after the last token (client TTFT ~70 ms vs the engine's
# ~6 ms, 50-100 % burst responses). In the caller's autogroup: within ~1.7 ms, no bursts
# (perf/streaming_probe.py: variant newsession, the old way, vs default).
NEW_PROCESS_GROUP: dict[str, Any] = ({"process_group": 0} if sys.version_info >= (3, 11)
                                     else {"preexec_fn": os.setpgrp})


def free_port(host: str = "127.0.0.1", port_range: tuple[int, int] | None = None) -> int:
    """A TCP port nobody listens on right now (inside `port_range` when given)."""
    candidates = range(port_range[0], port_range[1] + 1) if port_range else [0]
    for candidate in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise DeploymentError(f"no free port on {host} in {port_range[0]}-{port_range[1]}", kind="port_in_use")


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def resolve_model(model: str) -> str:
    """The model path to serve: '@tiny' builds (or reuses) the project's tiny local model, '@dummy:SHAPE' the
    weightless directory of a named shape (dummymodel.py)."""
    if model == TINY_MODEL:
        from pytest_vllmgrid.tinymodel import ensure_tiny_model

        return str(ensure_tiny_model())
    if dummymodel.is_dummy(model):
        return str(dummymodel.ensure_dummy_model(model))
    return model


@dataclass
class ProcessDeployer:
    """Runs one local `vllm serve` per config on a free 127.0.0.1 port."""

    options: DeployOptions
    name: str = "process"

    def preflight(self, grid: Grid) -> None:
        """Before anything starts: the model (path, hub cache, or the hub when online), each config's GPUs
        (tensor x pipeline parallel, visible through NVML in this worker's set), free disk, the ports."""
        cfg = grid.configs[0]
        for model, config in {c.model: c for c in grid.configs}.items():
            problem = None if model.startswith("@") else hub.model_problem(
                model, self.environment(config), offline_because=self.offline_reason(config))
            if problem:
                raise DeploymentError(problem, kind="model_missing")
        for config in grid.configs:
            problem = capacity.gpu_problem(config, self.environment(config))
            if problem:
                raise DeploymentError(problem, kind="preflight")
        disks = {"the run's state": self.options.state_dir}
        if any(hub.hub_id(c.model) for c in grid.configs):
            disks["the Hugging Face cache"] = hub.hub_cache_dir(self.environment(cfg))
        problem = capacity.disk_problem(disks, self.options.min_free_disk_gb)
        if problem:
            raise DeploymentError(problem, kind="preflight")
        if cfg.port is not None and port_in_use(cfg.host, cfg.port):
            raise DeploymentError(
                f"port {cfg.port} on {cfg.host} is already in use by another process; "
                "free it or remove `port` from the grid to use a free port",
                kind="port_in_use")
        if cfg.port is None and self.options.port_range:
            free_port(cfg.host, self.options.port_range)  # raises when every port of this worker's range is taken
        if self.options.api_key_env and not self.options.api_key:
            raise DeploymentError(f"the grid sets api_key_env {self.options.api_key_env!r} but that environment "
                                  "variable is empty", kind="preflight")

    def command(self, config: ServerConfig, port: int, model_path: str) -> list[str]:
        """The exact argv that starts the server."""
        prefix = [part.replace("{python}", sys.executable) for part in (config.vllm_command or DEFAULT_VLLM_COMMAND)]
        return [*prefix, model_path, "--host", config.host, "--port", str(port),
                "--served-model-name", config.model_name, *config.vllm_args()]

    def offline(self, config: ServerConfig) -> bool:
        """The server is kept off the hub: the project's own '@' models, or --vllm-offline / grid `offline: true`."""
        return config.model.startswith("@") or self.options.offline

    def offline_reason(self, config: ServerConfig) -> str:
        """Who made the server offline, for a message."""
        if self.options.offline:
            return "--vllm-offline or the grid's `offline: true`"
        return "HF_HUB_OFFLINE=1 in the environment"

    def environment(self, config: ServerConfig) -> dict[str, str]:
        """The server's environment: ours, our switches, the hub offline switches (when offline), the grid's, and
        the API key."""
        env = {**os.environ, **BASE_ENV, **(hub.OFFLINE_ENV if self.offline(config) else {}), **config.env}
        if self.options.gpu_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.options.gpu_devices)
        if self.options.api_key:
            env["VLLM_API_KEY"] = self.options.api_key
        if self.options.cache_root:
            env.setdefault("VLLM_CACHE_ROOT", str(self.options.cache_root / "vllm"))
        return env

    def plan(self, config: ServerConfig) -> dict[str, Any]:
        """What deploy() would run (dry run); the model and port are shown as they will be resolved."""
        model = {TINY_MODEL: "<tiny model, built locally>"}.get(
            config.model, f"<{config.model} shape, built locally>" if dummymodel.is_dummy(config.model) else config.model)
        port = config.port or "<free port>"
        return {"command": self.command(config, port, model),  # type: ignore[arg-type]
                "env": sorted(set(BASE_ENV) | set(hub.OFFLINE_ENV if self.offline(config) else ()) | set(config.env)
                              | ({"VLLM_API_KEY"} if self.options.api_key_env else set()))}

    def deploy(self, config: ServerConfig, workdir: Path) -> Deployment:
        """Start the server, wait until it answers a completion, or raise DeploymentError."""
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "server.log"
        model_path = resolve_model(config.model)
        if config.model != TINY_MODEL and model_path.startswith(("/", ".", "~")) and not Path(model_path).exists():
            raise DeploymentError(f"model path {model_path!r} does not exist", config_name=config.name,
                                  kind="model_missing")
        port = config.port or free_port(config.host, self.options.port_range)
        if port_in_use(config.host, port):
            raise DeploymentError(f"port {port} on {config.host} is already in use by another process",
                                  config_name=config.name, kind="port_in_use")
        argv = self.command(config, port, model_path)
        start = time.monotonic()
        log_start = log_path.stat().st_size if log_path.exists() else 0  # the log is appended to across deploys
        with open(log_path, "ab") as log:
            log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.environment(config), cwd=workdir, **NEW_PROCESS_GROUP)
        owned = OwnedProcesses(self.options.state_dir)
        owned.record(proc.pid, argv, config.name)

        def death_reason() -> str | None:
            code = proc.poll()
            if code is None:
                return None
            return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"

        def teardown() -> None:
            stop_process_group(proc)
            owned.forget(proc.pid)

        endpoint = Endpoint(f"http://{config.host}:{port}", config.model_name, self.options.api_key)
        try:
            ready = wait_until_ready(
                endpoint, death_reason=death_reason, timeout_s=self.options.startup_timeout_s or config.startup_timeout_s,
                poll_interval_s=self.options.poll_interval_s, log_tail=lambda: tail_file(log_path),
                config_name=config.name)
        except BaseException as exc:
            teardown()
            if isinstance(exc, DeploymentError):
                exc.log_path = log_path
                exc.log_tail = exc.log_tail or tail_file(log_path)
                raise DeploymentError(exc.message, config_name=config.name, kind=exc.kind, exit_code=exc.exit_code,
                                      log_tail=tail_file(log_path), log_path=log_path) from None
            raise
        return Deployment(
            config_name=config.name, endpoint=endpoint, startup_seconds=time.monotonic() - start,
            health_check_attempts=ready.attempts, log_path=log_path,
            describe={"deployer": self.name, "command": argv, "pid": proc.pid, "port": port,
                      "ready_stages_s": ready.stages, "ready_monotonic": ready.first_ok_monotonic},
            _alive=death_reason, _teardown=teardown, _log_tail=lambda: tail_file(log_path),
            _startup_log=lambda: read_from(log_path, log_start))


def stop_process_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group, SIGKILL it after the grace period; reap the leader."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc.pid, signal.SIGKILL)  # children that ignored SIGTERM or outlived the leader
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def signal_group(pgid: int, sig: int) -> None:
    """Send a signal to a process group, ignoring one that is already gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
