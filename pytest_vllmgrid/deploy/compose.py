"""Compose deployer: the user's compose service, redeployed per config through a rendered override file.

The user's compose file is never modified. Per config an override file (kept in the config's
results directory) replaces the service's `command:` with a YAML list: the file's own command
with the config's vLLM flags merged in. `docker compose -f USER -f OVERRIDE -p PROJECT up -d
SERVICE` starts it; the container is found by its compose labels with the docker SDK.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from dotenv import dotenv_values

from pytest_vllmgrid.atomic import write_text_atomic
from pytest_vllmgrid.deploy.capacity import disk_problem
from pytest_vllmgrid.deploy.base import (
    LOG_TAIL_LINES,
    REDACTED,
    Deployment,
    DeploymentError,
    Endpoint,
    looks_like_oom,
    redact,
    tail_file,
)
from pytest_vllmgrid.deploy.options import DeployOptions
from pytest_vllmgrid.deploy.readiness import wait_until_ready
from pytest_vllmgrid.grid import TINY_MODEL
from pytest_vllmgrid.vllm_argv import merge_command, option_value, split_command

if TYPE_CHECKING:
    from pytest_vllmgrid.grid import Grid, GridFile, ServerConfig

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
CONFIG_LABEL = "io.pytest-vllmgrid.config"
OWNER_LABEL = "io.pytest-vllmgrid.owner"  # host:pid:start time of the run that started the container
OVERRIDE_FILE = "compose.override.yml"
CONTAINER_LOG_FILE = "docker_container.log"
DEPLOYMENT_LOG_FILE = "deployment.log"
DEFAULT_CONTAINER_PORT = 8000
STOP_TIMEOUT_S = 15
COMPOSE_QUICK_TIMEOUT_S = 60.0
MAX_POLL_INTERVAL_S = 1.0
# Added to the service's environment: dev mode enables POST /reset_prefix_cache (KV-cache benchmark).
SERVER_ENV = {"VLLM_SERVER_DEV_MODE": "1", "PYTHONUNBUFFERED": "1"}
# Variables the deployer exports to compose so a file can mount this host's Python, venv, sources and model.
HOST_VARIABLES = ("VLLMGRID_PYTHON", "VLLMGRID_PYTHON_HOME", "VLLMGRID_VENV", "VLLMGRID_SOURCE", "VLLMGRID_MODEL")
ENGINE_HINT = ("start it (`sudo systemctl start docker`, Docker Desktop, or `scripts/docker-engine.sh`, which "
               "installs Docker if missing and starts dockerd in the background)")
_VARIABLE = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD)", re.IGNORECASE)


# ---- pure helpers (no Docker needed) --------------------------------------------------------------


def escape_interpolation(value: str) -> str:
    """Protect `$` from compose's variable interpolation (grid values are literal)."""
    return value.replace("$", "$$")


def render_override(service: str, command: list[str], *, environment: dict[str, str],
                    labels: dict[str, str], config_name: str) -> str:
    """The override file for one config: the service's command as a YAML list, plus env and labels."""
    body = {"services": {service: {"command": command, "environment": environment, "labels": labels}}}
    header = (f"# Rendered by pytest-vllmgrid for config {config_name!r}; the user's compose file is not modified.\n"
              "# Secrets are referenced by variable name (${VAR}) only, never written here.\n")
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=10_000)


def project_name_for(compose_file: Path) -> str:
    """The project name compose itself would pick for a file: its folder's name, normalised."""
    name = re.sub(r"[^a-z0-9_-]", "", compose_file.resolve().parent.name.lower()).lstrip("_-")
    return name or "vllmgrid"


def referenced_variables(value: Any) -> list[tuple[str, bool]]:
    """(name, has_default) of every `$VAR` / `${VAR...}` in a string or list of strings (`$$` is no reference).

    Only the names are needed (compose itself interpolates when it runs); python-dotenv's parser knows just
    `${VAR}` and `${VAR:-default}`, not compose's `$VAR`, `${VAR-x}`, `${VAR:?error}` or `$$`."""
    found: list[tuple[str, bool]] = []
    for text in value if isinstance(value, list) else [value]:
        if not isinstance(text, str):
            continue
        for match in _VARIABLE.finditer(text):
            name = match.group(1) or match.group(3)
            modifier = match.group(2) or ""
            found.append((name, modifier.startswith((":-", "-"))))
    return found


def api_key_reference(service_def: dict[str, Any]) -> tuple[str | None, str | None]:
    """(variable name, literal key) the service takes its API key from (`--api-key` or VLLM_API_KEY)."""
    command = split_command(service_def.get("command"))
    value = option_value(command, "api_key")
    if value is None:
        environment = service_def.get("environment") or {}
        if isinstance(environment, list):
            pairs = [item.split("=", 1) for item in environment if isinstance(item, str)]
            environment = {pair[0]: (pair[1] if len(pair) > 1 else None) for pair in pairs}
        if "VLLM_API_KEY" not in environment:
            return None, None
        value = environment["VLLM_API_KEY"]
        if value is None:  # `- VLLM_API_KEY`: passed through from compose's environment by name
            return "VLLM_API_KEY", None
    refs = referenced_variables(str(value))
    if refs:
        return refs[0][0], None
    return None, str(value)


def read_env_file(path: Path) -> dict[str, str]:
    """A compose env file's variables, read by python-dotenv: quotes, `export `, comments, and `${VAR}` /
    `${VAR:-default}` expanded from earlier lines and the environment, as compose does (unlike compose,
    python-dotenv also expands inside single quotes and leaves a bare `$VAR` as written). A line without `=`
    sets nothing and is left out."""
    return {key: value for key, value in dotenv_values(path, encoding="utf-8").items() if value is not None}


def host_variables() -> dict[str, str]:
    """VLLMGRID_* paths of this host's Python, virtualenv and pytest_vllmgrid sources (model aside)."""
    import pytest_vllmgrid

    in_venv = sys.prefix != sys.base_prefix
    return {
        "VLLMGRID_PYTHON": str(Path(sys.prefix) / "bin" / "python") if in_venv else sys.executable,
        "VLLMGRID_PYTHON_HOME": sys.base_prefix,
        "VLLMGRID_VENV": sys.prefix if in_venv else sysconfig.get_paths()["purelib"],
        "VLLMGRID_SOURCE": str(Path(pytest_vllmgrid.__file__).resolve().parent.parent),
    }


def owner_label() -> str:
    """This run's identity for the owner label: host, pid and the process's start time."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_is_gone(label: str) -> bool:
    """True when an owner label names a process of this host that no longer runs (a killed run)."""
    host, _, rest = label.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return _start_time(int(pid_text)) != started


def _start_time(pid: int) -> str:
    """A process's start time as text ('' when it does not exist)."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def container_base_url(attrs: dict[str, Any], container_port: int) -> str | None:
    """How this host reaches the container's port: host networking, or its published port."""
    if attrs.get("HostConfig", {}).get("NetworkMode") == "host":
        return f"http://127.0.0.1:{container_port}"
    bindings = (attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{container_port}/tcp") or []
    for binding in bindings:
        host_ip = binding.get("HostIp") or "127.0.0.1"
        if host_ip in ("0.0.0.0", "::", ""):
            host_ip = "127.0.0.1"
        if ":" in host_ip:
            host_ip = f"[{host_ip}]"
        return f"http://{host_ip}:{binding['HostPort']}"
    return None


def death_reason_of(attrs: dict[str, Any], restart_count_at_start: int) -> str | None:
    """None while the container runs, else why not (exit code, OOM kill, restart)."""
    state = attrs.get("State", {})
    oom = ", OOM-killed" if state.get("OOMKilled") else ""
    if state.get("Restarting") or attrs.get("RestartCount", 0) > restart_count_at_start:
        return f"container restarted by its restart policy (exit code {state.get('ExitCode')}{oom})"
    if state.get("Status") in ("exited", "dead"):
        return f"container exited (exit code {state.get('ExitCode')}{oom})"
    return None


def health_of(attrs: dict[str, Any]) -> tuple[str | None, str]:
    """The container's healthcheck status (None without a healthcheck) and its last probe's output."""
    health = attrs.get("State", {}).get("Health")
    if not health:
        return None, ""
    probes = health.get("Log") or []
    last = probes[-1] if probes else {}
    output = " ".join(str(last.get("Output", "")).split())[:300]
    return health.get("Status"), (f"exit {last.get('ExitCode')}: {output}" if last else "")


# ---- the deployer ------------------------------------------------------------------------------


class DeploymentLog:
    """The per-config deployment log: compose commands, their output, readiness stages (secrets redacted)."""

    def __init__(self, path: Path | None, secrets: set[str]) -> None:
        self.path = path
        self.secrets = secrets
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def line(self, text: str) -> None:
        """Append one timestamped line."""
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {redact(text, self.secrets)}\n")


@dataclass
class _Started:
    """What one deploy() started: the container (once found) and its timings."""

    config_name: str
    workdir: Path
    log: DeploymentLog
    container: Any = None
    restart_count: int = 0
    describe: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComposeDeployer:
    """Redeploys the user's compose service per config with a rendered override file."""

    options: DeployOptions
    grid_spec: GridFile | None = None
    name: str = "compose"
    compose_cli: list[str] | None = None
    _grid_dir: Path | None = field(default=None, repr=False)
    _client: Any = field(default=None, repr=False)
    _owns_project: bool | None = field(default=None, repr=False)
    _model_value: str | None = field(default=None, repr=False)
    reaped: list[str] = field(default_factory=list)

    # -- settings ---------------------------------------------------------------------------

    def _spec_value(self, option: str | None, spec_attr: str) -> tuple[str | None, bool]:
        """A setting and whether it came from the grid file (relative paths resolve against it)."""
        spec = self.grid_spec.compose if self.grid_spec is not None else None
        from_spec = getattr(spec, spec_attr, None) if spec is not None else None
        if option is not None:
            return option, option == from_spec
        return from_spec, from_spec is not None

    def _path(self, option: str | None, spec_attr: str) -> Path | None:
        """A file setting as an absolute path (grid paths relative to the grid file, CLI ones to the cwd)."""
        value, from_grid = self._spec_value(option, spec_attr)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and from_grid and self._grid_dir is not None:
            path = self._grid_dir / path
        return path.absolute()

    @property
    def compose_file(self) -> Path:
        """The user's compose file."""
        path = self._path(self.options.compose_file, "file")
        if path is None:
            raise DeploymentError("deployer compose needs a compose file: set `compose: {file: ..., service: ...}` "
                                  "in the grid or pass --vllm-compose-file", kind="preflight")
        return path

    @property
    def env_file(self) -> Path | None:
        """The env file passed to compose (--env-file), if any."""
        return self._path(self.options.compose_env_file, "env_file")

    @property
    def service(self) -> str:
        """The compose service that runs vLLM."""
        value, _ = self._spec_value(self.options.compose_service, "service")
        if not value:
            raise DeploymentError("deployer compose needs the service name: set `compose: {service: ...}` "
                                  "in the grid or pass --vllm-compose-service", kind="preflight")
        return value

    @property
    def project(self) -> str:
        """The compose project (-p): option, grid, COMPOSE_PROJECT_NAME, the file's `name:`, its folder."""
        value, _ = self._spec_value(self.options.compose_project, "project_name")
        if value:
            return value
        if os.environ.get("COMPOSE_PROJECT_NAME"):
            return os.environ["COMPOSE_PROJECT_NAME"]
        declared = self._compose_document().get("name")
        if isinstance(declared, str) and "$" not in declared:
            return declared
        return project_name_for(self.compose_file)

    def _compose_document(self) -> dict[str, Any]:
        """The user's compose file as written (no interpolation: `${VAR}` references stay references)."""
        path = self.compose_file
        if not path.is_file():
            raise DeploymentError(f"compose file {path} does not exist", kind="preflight")
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise DeploymentError(f"compose file {path} cannot be read as YAML: {exc}", kind="preflight") from None
        if not isinstance(document, dict):
            raise DeploymentError(f"compose file {path} is not a mapping with a `services:` section", kind="preflight")
        return document

    def service_definition(self) -> dict[str, Any]:
        """The service's section of the user's file, as written."""
        services = self._compose_document().get("services") or {}
        if self.service not in services:
            raise DeploymentError(f"compose file {self.compose_file} has no service {self.service!r}; its services: "
                                  f"{', '.join(sorted(services)) or 'none'}", kind="preflight")
        return services[self.service] or {}

    def _env_file_values(self) -> dict[str, str]:
        """Variables of the env file compose reads (--env-file, else .env beside the compose file)."""
        path = self.env_file or self.compose_file.parent / ".env"
        try:
            return read_env_file(path) if path.is_file() else {}
        except (OSError, UnicodeDecodeError):
            return {}

    def _lookup(self, name: str) -> str | None:
        """A variable as compose sees it: the environment first, then the env file."""
        return os.environ.get(name) or self._env_file_values().get(name) or None

    def api_key(self) -> tuple[str | None, str | None]:
        """(variable name, value) of the API key clients must send, from the options or the service."""
        variable, literal = api_key_reference(self.service_definition())
        variable = self.options.api_key_env or variable
        value = self.options.api_key or literal or (self._lookup(variable) if variable else None)
        return variable, value

    def secrets(self) -> set[str]:
        """Values never to write anywhere: the API key and secret-looking env-file values."""
        found = {value for name, value in self._env_file_values().items() if _SECRET_NAME.search(name)}
        found |= {value for name, value in os.environ.items() if name.startswith("VLLM_API_KEY")}
        _, key = self.api_key()
        return {value for value in found | {key or ""} if value}

    def _uses_variable(self, name: str) -> bool:
        """Whether the user's compose file references a variable."""
        try:
            return name in self.compose_file.read_text(encoding="utf-8")
        except OSError:
            return False

    def compose_environment(self, config: ServerConfig | None = None) -> dict[str, str]:
        """The environment compose runs with: ours plus the VLLMGRID_* host paths (ours never override yours)."""
        extra = host_variables()
        if self._uses_variable("VLLMGRID_MODEL") and "VLLMGRID_MODEL" not in os.environ:
            extra["VLLMGRID_MODEL"] = self._model_path(config)
        return {**extra, **os.environ}

    def _model_path(self, config: ServerConfig | None) -> str:
        """The grid's model for ${VLLMGRID_MODEL}: '@tiny' builds (or reuses) the project's tiny model."""
        if self._model_value is None:
            from pytest_vllmgrid.deploy.process import resolve_model

            model = config.model if config is not None else (self.grid_spec.model if self.grid_spec else TINY_MODEL)
            self._model_value = resolve_model(model)
        return self._model_value

    # -- compose and docker ------------------------------------------------------------------

    def _cli(self) -> list[str]:
        """`docker compose` (v2) or `docker-compose` (v1), whichever works here."""
        if self.compose_cli is None:
            self.compose_cli = detect_compose_cli()
        return self.compose_cli

    def _docker(self) -> Any:
        """A docker SDK client (raises a preflight DeploymentError when no engine answers)."""
        if self._client is None:
            self._client = docker_client()
        return self._client

    def _base_args(self, override: Path | None = None, cli: list[str] | None = None) -> list[str]:
        """Compose's global arguments: files, env file and project."""
        args = [*(cli or self._cli()), "-f", str(self.compose_file)]
        if override is not None:
            args += ["-f", str(override)]
        if self.env_file is not None:
            args += ["--env-file", str(self.env_file)]
        return args + ["-p", self.project]

    def _compose(self, args: list[str], *, log: DeploymentLog, timeout_s: float, override: Path | None = None,
                 config: ServerConfig | None = None, shielded: bool = False) -> subprocess.CompletedProcess:
        """Run one compose command (argv list, own session), logging it and its output."""
        argv = self._base_args(override) + args
        log.line(f"$ {shlex.join(argv)}")
        start = time.monotonic()
        runner = run_shielded if shielded else run_command
        result = runner(argv, env=self.compose_environment(config), cwd=self.compose_file.parent, timeout_s=timeout_s)
        output = redact(result.stdout or "", log.secrets).rstrip()
        took = time.monotonic() - start
        log.line(f"  exit {result.returncode} after {took:.1f} s" + (f"\n{output}" if output else ""))
        return result

    def containers(self, *, config_name: str | None = None) -> list[Any]:
        """Containers of the project's service (all states), found by their compose labels."""
        labels = [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={self.service}"]
        if config_name is not None:
            labels.append(f"{CONFIG_LABEL}={config_name}")
        return self._docker().containers.list(all=True, filters={"label": labels})

    def project_containers(self) -> list[Any]:
        """Every container of the compose project (all states)."""
        return self._docker().containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"})

    def reap_orphans(self) -> list[str]:
        """Remove containers (and their project networks) that a killed run of this tool left; their names."""
        client = self._docker()
        removed: list[str] = []
        for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
            if not owner_is_gone(container.labels.get(OWNER_LABEL, "")):
                continue
            project = container.labels.get(PROJECT_LABEL)
            try:
                container.remove(force=True)
                removed.append(container.name)
                if project and not client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
                    for network in client.networks.list(filters={"label": f"{PROJECT_LABEL}={project}"}):
                        network.remove()
            except Exception:  # noqa: BLE001, S112 - removed meanwhile, or a network still in use: leave it
                continue
        return removed

    # -- Deployer protocol ------------------------------------------------------------------

    def preflight(self, grid: Grid) -> None:
        """Engine reachable, compose present, file valid, service present, disk free, API key set."""
        self._grid_dir = grid.path.parent.absolute()
        client = self._docker()
        self.reaped = self.reap_orphans()
        self._cli()
        path = self.compose_file
        if not path.is_file():
            raise DeploymentError(f"compose file {path} does not exist", kind="preflight")
        if self.env_file is not None and not self.env_file.is_file():
            raise DeploymentError(f"compose env file {self.env_file} does not exist", kind="preflight")
        service_def = self.service_definition()
        self._check_api_key(service_def)
        self._check_host_python()
        log = DeploymentLog(None, self.secrets())
        result = self._compose(["config", "-q"], log=log, timeout_s=COMPOSE_QUICK_TIMEOUT_S, config=grid.configs[0])
        if result.returncode != 0:
            raise DeploymentError(f"`{' '.join(self._cli())} config` rejects {path}: "
                                  f"{_last_lines(redact(result.stdout, log.secrets), 5)}", kind="preflight")
        self._check_disk(client)

    def _check_api_key(self, service_def: dict[str, Any]) -> None:
        """The API key variable the service references must be set (environment or env file)."""
        variable, _ = api_key_reference(service_def)
        refs = dict(referenced_variables(str(service_def.get("environment", ""))) +
                    referenced_variables(split_command(service_def.get("command"))))
        if variable and not refs.get(variable, False) and self._lookup(variable) is None:
            where = self.env_file or self.compose_file.parent / ".env"
            raise DeploymentError(
                f"service {self.service!r} needs the API key variable {variable} (referenced in {self.compose_file}), "
                f"but it is set neither in the environment nor in {where}; export {variable}=... or add it to that "
                "env file (compose: `env_file`, or --vllm-compose-env-file)", kind="preflight")
        if self.options.api_key_env and not self.options.api_key and self._lookup(self.options.api_key_env) is None:
            raise DeploymentError(f"the grid sets api_key_env {self.options.api_key_env!r} but that variable is "
                                  "empty", kind="preflight")

    def _check_host_python(self) -> None:
        """A file that mounts this host's Python installation needs one outside /usr."""
        if self._uses_variable("VLLMGRID_PYTHON_HOME") and "VLLMGRID_PYTHON_HOME" not in os.environ \
                and Path(sys.base_prefix).resolve() == Path("/usr"):
            raise DeploymentError(
                f"{self.compose_file} mounts the host's Python installation (VLLMGRID_PYTHON_HOME), but this Python "
                "lives in /usr; use a Python installed elsewhere (pyenv, uv, /usr/local) or set VLLMGRID_PYTHON_HOME",
                kind="preflight")

    def _check_disk(self, client: Any) -> None:
        """At least min_free_disk_gb free for results and for Docker's data (when local)."""
        paths = {"the run's state": self.options.state_dir}
        try:
            docker_root = client.info().get("DockerRootDir")
        except Exception:  # noqa: BLE001 - a remote engine may hide it; the results disk is still checked
            docker_root = None
        if docker_root and Path(docker_root).exists():
            paths["Docker's data"] = Path(docker_root)
        problem = disk_problem(paths, self.options.min_free_disk_gb)
        if problem:
            raise DeploymentError(problem, kind="preflight")

    def command_for(self, config: ServerConfig) -> list[str]:
        """The service's command for this config: the file's command with the config's flags merged in."""
        base = split_command(self.service_definition().get("command"))
        grid_args = [escape_interpolation(arg) for arg in config.vllm_args()]
        if config.served_model_name:
            grid_args += ["--served-model-name", escape_interpolation(config.served_model_name)]
        return merge_command(base, grid_args)

    def model_name_for(self, config: ServerConfig, command: list[str]) -> str:
        """The model name clients ask for: the grid's served name, else the command's, else its model."""
        if config.served_model_name:
            return config.served_model_name
        named = option_value(command, "served_model_name") or option_value(command, "model")
        if named and "$" not in named:
            return named
        if named and self._uses_variable("VLLMGRID_MODEL") and "VLLMGRID_MODEL" in named:
            return self._model_path(config)
        return config.model_name

    def override_for(self, config: ServerConfig) -> str:
        """The rendered override file's text for a config."""
        environment = {**SERVER_ENV, **{key: escape_interpolation(value) for key, value in config.env.items()}}
        return render_override(self.service, self.command_for(config), environment=environment,
                               labels={CONFIG_LABEL: config.name, OWNER_LABEL: owner_label()},
                               config_name=config.name)

    def plan(self, config: ServerConfig) -> dict[str, Any]:
        """What deploy() would run (dry run): the compose command and the rendered override."""
        override = Path("<results>") / config.name / OVERRIDE_FILE
        return {"deployer": self.name,
                "compose": [*self._base_args(override, self.compose_cli or ["docker", "compose"]), "up", "-d",
                            self.service],
                "command": self.command_for(config), "override": self.override_for(config)}

    def deploy(self, config: ServerConfig, workdir: Path) -> Deployment:
        """Render the override, `up -d` the service, wait until ready, or raise DeploymentError."""
        workdir.mkdir(parents=True, exist_ok=True)
        secrets = self.secrets()
        log = DeploymentLog(workdir / DEPLOYMENT_LOG_FILE, secrets)
        started = _Started(config.name, workdir, log)
        override = workdir / OVERRIDE_FILE
        write_text_atomic(override, self.override_for(config))
        timeout_s = self.options.startup_timeout_s or config.startup_timeout_s
        start = time.monotonic()
        deadline = start + timeout_s
        log.line(f"config {config.name}: service {self.service} of {self.compose_file}, project {self.project}, "
                 f"override {override}")
        try:
            if self._owns_project is None:  # only containers this tool labelled (leftovers of a killed run): ours
                self._owns_project = all(CONFIG_LABEL in c.labels for c in self.project_containers())
                log.line("project " + ("holds none of the user's containers: teardown runs `down`"
                                       if self._owns_project else
                                       "already has containers: teardown stops and removes only this service"))
            result = self._compose(["up", "-d", self.service], log=log, override=override, config=config,
                                   timeout_s=max(COMPOSE_QUICK_TIMEOUT_S, timeout_s))
            started.container = self._find_container(config.name)
            if result.returncode != 0:
                raise _compose_up_error(config.name, redact(result.stdout, secrets))
            if started.container is None:
                raise DeploymentError(f"compose up succeeded but no container carries the labels {PROJECT_LABEL}="
                                      f"{self.project}, {SERVICE_LABEL}={self.service}", config_name=config.name)
            started.restart_count = started.container.attrs.get("RestartCount", 0)
            endpoint = self._endpoint_for(config, started)
            log.line(f"container {started.container.name} ({started.container.short_id}) started; "
                     f"polling {endpoint.base_url}")
            ready = wait_until_ready(
                endpoint, death_reason=lambda: self._death_reason(started),
                timeout_s=max(0.0, deadline - time.monotonic()),
                poll_interval_s=min(self.options.poll_interval_s, MAX_POLL_INTERVAL_S),
                log_tail=lambda: self._container_tail(started), config_name=config.name,
                on_attempt=_stage_logger(log))
            healthy_s = self._wait_healthy(started, deadline, start, timeout_s)
        except BaseException as exc:
            self._save_container_log(started)
            self._take_down(started)
            if isinstance(exc, DeploymentError):
                raise self._explain_failure(exc, started) from None
            raise
        startup_s = ready.first_ok_monotonic - start
        log.line(f"ready: completion answered after {startup_s:.1f} s" +
                 (f", healthcheck healthy after {healthy_s:.1f} s" if healthy_s is not None else ", no healthcheck"))
        started.describe.update({
            "deployer": self.name, "compose_cli": " ".join(self._cli()), "project": self.project,
            "service": self.service, "compose_file": str(self.compose_file), "override_path": str(override),
            "command": self.command_for(config), "container": started.container.name,
            "container_id": started.container.short_id, "image": _image_name(started.container),
            "base_url": endpoint.base_url, "healthy_after_s": None if healthy_s is None else round(healthy_s, 2),
            "container_log_path": str(workdir / CONTAINER_LOG_FILE), "ready_stages_s": ready.stages,
            "ready_monotonic": ready.first_ok_monotonic})
        return Deployment(
            config_name=config.name, endpoint=endpoint, startup_seconds=startup_s,
            health_check_attempts=ready.attempts, log_path=workdir / DEPLOYMENT_LOG_FILE, describe=started.describe,
            _alive=lambda: self._death_reason(started), _teardown=lambda: self._finish(started),
            _log_tail=lambda: self._container_tail(started), _startup_log=lambda: self._container_log(started))

    def restore(self) -> str:
        """Bring the user's service back up from their unmodified compose file; returns what happened."""
        log = DeploymentLog(self.options.state_dir / "compose-restore.log", self.secrets())
        timeout_s = self.options.startup_timeout_s or (self.grid_spec.startup_timeout_s if self.grid_spec else 600.0)
        start = time.monotonic()
        result = self._compose(["up", "-d", self.service], log=log, timeout_s=max(COMPOSE_QUICK_TIMEOUT_S, timeout_s))
        if result.returncode != 0:
            raise DeploymentError(f"restoring service {self.service!r} from {self.compose_file} failed: "
                                  f"{_last_lines(redact(result.stdout, log.secrets), 5)}", kind="restore")
        started = _Started("(restore)", self.options.state_dir, log, container=self._find_container(None))
        if started.container is None:
            raise DeploymentError(f"restoring service {self.service!r}: compose started no container", kind="restore")
        started.restart_count = started.container.attrs.get("RestartCount", 0)
        try:
            healthy_s = self._wait_healthy(started, start + timeout_s, start, timeout_s)
        except DeploymentError as exc:
            raise DeploymentError(f"restoring service {self.service!r}: {exc.message}", kind="restore",
                                  exit_code=exc.exit_code, log_tail=self._container_tail(started)) from None
        state = f"healthy after {healthy_s:.0f} s" if healthy_s is not None else "running (no healthcheck)"
        return f"service {self.service!r} restored from {self.compose_file}: container {started.container.name} {state}"

    # -- deploy steps -----------------------------------------------------------------------

    def _find_container(self, config_name: str | None) -> Any:
        """The service's container that this deploy created (labels), newest first."""
        found = self.containers(config_name=config_name) if config_name else []
        found = found or self.containers()
        if not found:
            return None
        return max(found, key=lambda c: c.attrs.get("Created", ""))

    def _endpoint_for(self, config: ServerConfig, started: _Started) -> Endpoint:
        """The endpoint: the grid's base_url, else the container's published (or host-network) port."""
        command = self.command_for(config)
        _, key = self.api_key()
        model = self.model_name_for(config, command)
        spec = self.grid_spec.compose if self.grid_spec is not None else None
        if spec is not None and spec.base_url:
            return Endpoint(spec.base_url.rstrip("/"), model, key)
        # The container's Cmd is the command as compose ran it: variables already interpolated by compose itself.
        running = (started.container.attrs.get("Config") or {}).get("Cmd") or command
        port_text = option_value(running, "port") or str(DEFAULT_CONTAINER_PORT)
        try:
            port = int(port_text)
        except ValueError:
            raise DeploymentError(f"service {self.service!r}: --port {port_text!r} is not a number",
                                  config_name=config.name, kind="startup_failed") from None
        deadline = time.monotonic() + 10.0
        while True:
            if self._death_reason(started):
                return Endpoint("http://127.0.0.1:0", model, key)  # readiness reports the death
            url = container_base_url(started.container.attrs, port)
            if url:
                return Endpoint(url, model, key)
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"container {started.container.name} publishes no host port for its port {port}; add "
                    f"`ports: [\"127.0.0.1:{port}:{port}\"]` (or network_mode: host) to service {self.service!r}, "
                    "or set `compose: {base_url: ...}` in the grid", config_name=config.name, kind="startup_failed")
            time.sleep(0.2)

    def _death_reason(self, started: _Started) -> str | None:
        """None while the container runs, else why it is gone."""
        if started.container is None:
            return "no container was created"
        try:
            started.container.reload()
        except Exception as exc:  # noqa: BLE001 - docker.errors.NotFound, or the engine went away
            return f"container {started.container.name} is gone ({type(exc).__name__})"
        return death_reason_of(started.container.attrs, started.restart_count)

    def _wait_healthy(self, started: _Started, deadline: float, start: float, timeout_s: float) -> float | None:
        """Wait (polling ≤ 1 s) until the container's healthcheck says healthy; None without a healthcheck."""
        while True:
            reason = self._death_reason(started)
            if reason is not None:
                raise DeploymentError(f"{reason} while waiting for its healthcheck", kind="exited",
                                      exit_code=started.container.attrs.get("State", {}).get("ExitCode"))
            status, probe = health_of(started.container.attrs)
            if status is None or status == "healthy":
                return None if status is None else time.monotonic() - start
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"container {started.container.name} not healthy after {timeout_s:.0f} s: its healthcheck "
                    f"reports {status!r}" + (f" (last probe {probe})" if probe else ""), kind="timeout")
            time.sleep(min(self.options.poll_interval_s, MAX_POLL_INTERVAL_S))

    def _container_tail(self, started: _Started, lines: int = LOG_TAIL_LINES) -> str:
        """The container log's last lines, secrets redacted (from the saved log once it is removed)."""
        if started.container is None:
            return ""
        try:
            raw = started.container.logs(stdout=True, stderr=True, tail=lines)
        except Exception:  # noqa: BLE001 - container removed or engine gone: the saved copy, if any
            return tail_file(started.workdir / CONTAINER_LOG_FILE, lines)
        return redact(raw.decode("utf-8", errors="replace"), started.log.secrets)

    def _container_log(self, started: _Started) -> str:
        """The whole container log, secrets redacted ("" when there is none or it is gone)."""
        if started.container is None:
            return ""
        try:
            raw = started.container.logs(stdout=True, stderr=True)
        except Exception as exc:  # noqa: BLE001 - already removed: say so in the deployment log
            started.log.line(f"container log unavailable: {type(exc).__name__}: {exc}")
            return ""
        return redact(raw.decode("utf-8", errors="replace"), started.log.secrets)

    def _save_container_log(self, started: _Started) -> None:
        """Write the whole container log to docker_container.log (before the container is removed)."""
        text = self._container_log(started)
        if text:
            write_text_atomic(started.workdir / CONTAINER_LOG_FILE, text)

    def _explain_failure(self, exc: DeploymentError, started: _Started) -> DeploymentError:
        """The error with the container's state (exit code, OOM kill, health) and its last log lines."""
        attrs = started.container.attrs if started.container is not None else {}
        state = attrs.get("State", {})
        container_log = started.workdir / CONTAINER_LOG_FILE
        tail = tail_file(container_log) or exc.log_tail
        message = exc.message
        kind = exc.kind
        exit_code = exc.exit_code
        if started.container is not None:
            name = started.container.name
            if state.get("Status") in ("exited", "dead") or kind == "exited":
                exit_code = state.get("ExitCode", exit_code)
                message = f"container {name} (service {self.service}) exited during startup"
            if state.get("OOMKilled"):
                kind = "oom"
                message += (": OOM-killed (the kernel killed it for exceeding its memory limit; raise the service's "
                            "mem_limit or free memory)")
            elif kind in ("exited", "startup_failed") and looks_like_oom(tail):
                kind = "oom"
                message += ": out of memory (see the log line below)"
            health, probe = health_of(attrs)
            if kind == "timeout" and health is not None and "healthcheck" not in message:
                message += f"; container healthcheck {health!r}" + (f" (last probe {probe})" if probe else "")
        has_log = container_log.is_file() and container_log.stat().st_size > 0
        log_path = container_log if has_log else started.workdir / DEPLOYMENT_LOG_FILE
        return DeploymentError(message, config_name=started.config_name, kind=kind, exit_code=exit_code,
                               log_tail=tail, log_path=log_path)

    def _finish(self, started: _Started) -> None:
        """Normal teardown: save the container log, then take the service down."""
        self._save_container_log(started)
        self._take_down(started)

    def _take_down(self, started: _Started) -> None:
        """`down` (project was ours) or stop+rm of the service; then remove by label anything left. Never skipped."""
        start = time.monotonic()
        args = (["down", "-t", str(STOP_TIMEOUT_S)] if self._owns_project
                else ["rm", "-s", "-f", self.service])
        try:
            self._compose(args, log=started.log, timeout_s=STOP_TIMEOUT_S + COMPOSE_QUICK_TIMEOUT_S, shielded=True)
        except (OSError, subprocess.SubprocessError) as exc:
            started.log.line(f"compose teardown failed: {exc}")
        self._remove_leftovers(started)
        seconds = time.monotonic() - start
        started.describe["teardown_seconds"] = round(seconds, 2)
        started.log.line(f"teardown done in {seconds:.1f} s")

    def _remove_leftovers(self, started: _Started) -> list[Any]:
        """Force-remove the service's containers still there through the SDK (when compose could not)."""
        removed = []
        try:
            for container in self.containers():
                container.remove(force=True)
                removed.append(container)
                started.log.line(f"removed leftover container {container.name} through the docker SDK")
        except Exception as exc:  # noqa: BLE001 - the engine went away: nothing more can be done here
            started.log.line(f"could not remove leftover containers: {type(exc).__name__}: {exc}")
        return removed


# ---- process and engine helpers ---------------------------------------------------------------


def detect_compose_cli() -> list[str]:
    """`docker compose` (v2 plugin) when it works, else `docker-compose` (v1), else a preflight error."""
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) is None:
            continue
        try:
            probe = subprocess.run([*candidate, "version"], capture_output=True, text=True, timeout=30,
                                   stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return candidate
    raise DeploymentError("neither `docker compose` (v2) nor `docker-compose` (v1) works here; install one "
                          "(Debian: apt-get install docker-compose, or the docker-compose-plugin)", kind="preflight")


def docker_client() -> Any:
    """A docker SDK client whose engine answers a ping, else a preflight DeploymentError saying how to start one."""
    try:
        import docker
    except ImportError:
        raise DeploymentError("the docker SDK is missing: pip install 'docker>=7'", kind="preflight") from None
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - DockerException, connection and permission errors alike
        raise DeploymentError(f"no Docker engine answers at {where} ({type(exc).__name__}: {str(exc)[:200]}); "
                              f"{ENGINE_HINT}", kind="preflight") from None
    return client


def run_command(argv: list[str], *, env: dict[str, str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """Run argv (never through a shell) in its own session; stdout and stderr together."""
    try:
        return subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout_s, start_new_session=True, check=False)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(argv, 124, f"{output}\ntimed out after {timeout_s:.0f} s")


def run_shielded(argv: list[str], *, env: dict[str, str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """Like run_command, but a Ctrl+C waits for the command to finish (teardown) before it is re-raised."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    interrupted = False
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            output, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            break
        except KeyboardInterrupt:
            interrupted = True
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            output = f"{output}\ntimed out after {timeout_s:.0f} s"
            break
    if interrupted:
        raise KeyboardInterrupt
    return subprocess.CompletedProcess(argv, proc.returncode, output)


def _compose_up_error(config_name: str, output: str) -> DeploymentError:
    """A DeploymentError for a failed `up`, naming a busy port as such."""
    lowered = output.lower()
    busy = "port is already allocated" in lowered or "address already in use" in lowered
    hint = "; free the port or change the service's `ports:` (the example reads VLLMGRID_PORT)" if busy else ""
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith(("ERROR:", "Error"))]
    reason = errors[-1].removeprefix("ERROR: ") if errors else _last_lines(output, 3)
    return DeploymentError(f"compose up failed: {reason[-400:]}{hint}", config_name=config_name,
                           kind="port_in_use" if busy else "startup_failed", log_tail=output)


def _last_lines(text: str, count: int) -> str:
    """The last non-empty lines of a text, joined with ' | '."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"


def _image_name(container: Any) -> str:
    """The container's image as configured (tag), else its id."""
    return container.attrs.get("Config", {}).get("Image") or container.attrs.get("Image", "")


def _stage_logger(log: DeploymentLog, every_s: float = 10.0) -> Callable[[int, str], None]:
    """An on_attempt callback that logs readiness progress when the stage changes, else every `every_s`."""
    last = {"stage": "", "at": 0.0}

    def on_attempt(attempt: int, text: str) -> None:
        stage = text.split(":", 1)[0]
        now = time.monotonic()
        if stage != last["stage"] or now - last["at"] >= every_s:
            log.line(f"readiness attempt {attempt}: {text}")
            last.update(stage=stage, at=now)
    return on_attempt
