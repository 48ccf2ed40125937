"""Deployer protocol, the Deployment it returns, and the errors it raises."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import httpx

from pytest_vllmgrid.endpoint import Endpoint  # re-exported: deploy.base.Endpoint still works

if TYPE_CHECKING:
    from pytest_vllmgrid.grid import Grid, ServerConfig

LOG_TAIL_LINES = 200
REDACTED = "[REDACTED]"

# Log lines that name an out-of-memory death; quoted first in a DeploymentError.
_OOM_PATTERN = re.compile(
    r"(CUDA out of memory|OutOfMemoryError|out of memory|OOMKilled|Killed process|Cannot allocate memory)",
    re.IGNORECASE,
)
# vLLM's own one-line reasons for refusing to start (argparse and config validation).
_ERROR_LINE_PATTERN = re.compile(
    r"(error: (unrecognized arguments|argument )|\b\w*(Error|Exception): )",
)
# Log lines at these levels are never the reason (e.g. vLLM's ulimit WARNING quoting `OSError: ...`).
_NOT_AN_ERROR_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING)\b")


class DeploymentError(Exception):
    """A server could not be brought up (or died): message, exit code and the log's last lines."""

    def __init__(
        self,
        message: str,
        *,
        config_name: str = "",
        kind: str = "startup_failed",
        exit_code: int | None = None,
        log_tail: str = "",
        log_path: Path | None = None,
    ) -> None:
        self.message = message
        self.config_name = config_name
        self.kind = kind  # startup_failed | exited | timeout | oom | preflight | port_in_use | model_missing
        self.exit_code = exit_code
        self.log_tail = log_tail
        self.log_path = log_path
        super().__init__(self.summary())

    def summary(self) -> str:
        """One line: what failed and vLLM's own reason when the log has one."""
        parts = [self.message]
        if self.exit_code is not None and f"exit code {self.exit_code}" not in self.message:
            parts.append(f"exit code {self.exit_code}")
        reason = key_error_line(self.log_tail)
        if reason and reason not in self.message:
            parts.append(f"log: {reason}")
        return "; ".join(parts)

    def details(self) -> str:
        """The summary followed by the last log lines and where the full log is."""
        text = self.summary()
        if self.log_path:
            text += f"\nfull log: {self.log_path}"
        if self.log_tail:
            text += f"\n--- last {LOG_TAIL_LINES} log lines ---\n{self.log_tail}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the results store."""
        return {
            "kind": self.kind,
            "message": self.summary(),
            "exit_code": self.exit_code,
            "log_path": str(self.log_path) if self.log_path else None,
            "log_tail": self.log_tail.splitlines()[-40:],
        }


def key_error_line(log_text: str) -> str | None:
    """The most telling error line of a server log: an OOM first, else the last error line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _OOM_PATTERN.search(line):
            return line[-300:]
    for line in reversed(lines):
        if _ERROR_LINE_PATTERN.search(line) and not _NOT_AN_ERROR_LEVEL.search(line):
            return line[-300:]
    return None


def redact(text: str, secrets: set[str]) -> str:
    """The text with every secret value replaced by [REDACTED]."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def looks_like_oom(log_text: str) -> bool:
    """True when the log names an out-of-memory death."""
    return bool(_OOM_PATTERN.search(log_text))


def read_from(path: Path, offset: int = 0, limit: int = 4 * 1024 * 1024) -> str:
    """A text file's first `limit` bytes from `offset` (empty when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def tail_file(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a text file (empty when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class Deployment:
    """A running server for one config; `teardown()` stops it (idempotent)."""

    config_name: str
    endpoint: Endpoint
    startup_seconds: float
    health_check_attempts: int
    log_path: Path | None
    describe: dict[str, Any] = field(default_factory=dict)
    _alive: Callable[[], str | None] = field(default=lambda: None, repr=False)
    _teardown: Callable[[], None] = field(default=lambda: None, repr=False)
    _log_tail: Callable[[], str] = field(default=lambda: "", repr=False)
    _startup_log: Callable[[], str] | None = field(default=None, repr=False)  # the log since this start
    torn_down: bool = False
    _http: httpx.Client | None = field(default=None, repr=False)

    def http(self) -> httpx.Client:
        """A kept-alive client for the server's control calls (/metrics, /tokenize, /version...), closed at
        teardown. One per call costs ~20 ms more each (a TLS context is built for every new httpx client),
        and a benchmark makes dozens."""
        if self._http is None:
            self._http = httpx.Client(headers=self.endpoint.headers(), timeout=30.0)
        return self._http

    def death_reason(self) -> str | None:
        """None while the server runs, else why it is gone (exit code, OOM...)."""
        return self._alive()

    def log_tail(self) -> str:
        """The server log's last lines."""
        return self._log_tail()

    def startup_log(self) -> str:
        """The server's log from its start (where vLLM prints its arguments), else its last lines."""
        return self._startup_log() if self._startup_log is not None else self._log_tail()

    def teardown(self) -> None:
        """Stop the server and release what was started; safe to call twice."""
        if self.torn_down:
            return
        self.torn_down = True
        if self._http is not None:
            self._http.close()
        self._teardown()


class Deployer(Protocol):
    """Brings one server per grid config up and down."""

    name: str

    def preflight(self, grid: Grid) -> None:
        """Check everything that can be checked before the first deploy (raise DeploymentError)."""

    def plan(self, config: ServerConfig) -> dict[str, Any]:
        """What deploy() would run for this config (dry run): command line or rendered files."""

    def deploy(self, config: ServerConfig, workdir: Path) -> Deployment:
        """Start the server for `config`, wait until ready, or raise DeploymentError."""
