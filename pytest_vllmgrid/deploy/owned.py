"""A record of the server processes this tool started, so a later run can stop orphans."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from pytest_vllmgrid.atomic import write_json_atomic


@dataclass
class OwnedProcesses:
    """One JSON file per server process group we started, removed when we stop it."""

    state_dir: Path

    @property
    def folder(self) -> Path:
        """Where the records live."""
        return self.state_dir / "owned"

    def record(self, pid: int, argv: list[str], config_name: str) -> None:
        """Remember a process group leader we just started, with its start time."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / f"{pid}.json", {
            "pid": pid, "pgid": pid, "create_time": _create_time(pid), "argv": argv[:6],
            "config": config_name, "owner_pid": os.getpid(), "owner_create_time": _create_time(os.getpid()),
            "recorded_at": time.time()})

    def forget(self, pid: int) -> None:
        """Drop the record of a process we stopped."""
        (self.folder / f"{pid}.json").unlink(missing_ok=True)

    def reap_orphans(self) -> list[dict]:
        """Stop servers whose owning pytest died (SIGKILL); returns what was stopped."""
        stopped = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            owner = rec.get("owner_pid", -1)
            if owner != os.getpid() and _owner_alive(owner, rec.get("owner_create_time")):
                continue  # another live run owns it
            if _create_time(rec["pid"]) == rec.get("create_time") and rec.get("create_time") is not None:
                _kill_group(rec["pgid"])
                stopped.append(rec)
            path.unlink(missing_ok=True)
        return stopped


def _create_time(pid: int) -> float | None:
    """The process's start time (tells a reused pid from ours)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _owner_alive(pid: int, create_time: float | None) -> bool:
    """The run that recorded a server still runs: not a zombie, and not another process that reused its pid."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or proc.create_time() == create_time
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process: leave its servers alone
        return True


def _kill_group(pgid: int) -> None:
    """SIGTERM a group, then SIGKILL what is left after a few seconds."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
