"""Results store: one atomic JSON per config plus a run manifest; what reports and resume read."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pytest_vllmgrid.atomic import write_json_atomic

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def now_iso() -> str:
    """UTC time, ISO 8601 with a Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_results_dir(base: Path) -> Path:
    """`results/<timestamp>/` under `base`, unique even for two runs in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / "results" / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / "results" / f"{stamp}-{n}"
    return path


def new_config_result(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The seeds' per-config schema, extended (status, hashes, argv, measurements)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "config_name": name,
        "timestamp": now_iso(),
        "status": "pending",
        "config_hash": config.get("config_hash"),
        "config_params": config.get("params", {}),
        "config": config,
        "deployment": {"status": "pending", "startup_time_seconds": None, "health_check_attempts": None},
        "tests": {},
        "errors": [],
    }


@dataclass
class ResultsStore:
    """A results directory: `<config>.json` per config, `<config>/` for logs, `manifest.json`."""

    root: Path

    def config_path(self, name: str) -> Path:
        """Where a config's result JSON lives."""
        return self.root / f"{_SAFE.sub('-', name)}.json"

    def config_dir(self, name: str) -> Path:
        """Per-config folder for logs and rendered files."""
        path = self.root / _SAFE.sub("-", name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def load_config(self, name: str) -> dict[str, Any] | None:
        """A config's stored result, or None."""
        return _read_json(self.config_path(name))

    def update_config(self, name: str, change: Callable[[dict[str, Any]], None],
                      config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Read-modify-write a config's result atomically (created from `config` if missing). While the
        config runs (dozens of writes) the JSON is compact; once it is settled it is written pretty."""
        data = self.load_config(name) or new_config_result(name, config or {})
        change(data)
        data["updated"] = now_iso()
        write_json_atomic(self.config_path(name), data, compact=data.get("status") == "running")
        return data

    def reset_config(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Start a config's result afresh (a rerun replaces the old one)."""
        data = new_config_result(name, config)
        data["status"] = "running"
        write_json_atomic(self.config_path(name), data)
        return data

    def record_test(self, name: str, test_key: str, fields: dict[str, Any]) -> None:
        """Merge fields into tests[test_key] of a config."""
        def change(data: dict[str, Any]) -> None:
            data["tests"].setdefault(test_key, {}).update(fields)
        self.update_config(name, change)

    def add_error(self, name: str, message: str) -> None:
        """Append an error line to a config's result."""
        self.update_config(name, lambda data: data["errors"].append({"time": now_iso(), "message": message}))

    def all_configs(self) -> dict[str, dict[str, Any]]:
        """Every config result in the directory, by name (unreadable files are skipped)."""
        out = {}
        for path in sorted(self.root.glob("*.json")):
            if path.name == MANIFEST or path.name.startswith("report"):
                continue
            data = _read_json(path)
            if isinstance(data, dict) and "config_name" in data:
                out[data["config_name"]] = data
        return out

    def manifest(self) -> dict[str, Any]:
        """The run manifest (empty dict when absent)."""
        return _read_json(self.root / MANIFEST) or {}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the run manifest atomically."""
        write_json_atomic(self.root / MANIFEST, manifest)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into the manifest."""
        data = self.manifest()
        data.update(fields)
        self.write_manifest(data)
        return data

    def completed_hashes(self) -> dict[str, str]:
        """Configs whose tests all ran: name -> config hash (for --resume; failed deploys are retried)."""
        return {name: data.get("config_hash") for name, data in self.all_configs().items()
                if data.get("status") == "complete"}


def _read_json(path: Path) -> Any:
    """JSON from a file, or None when missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def elapsed_since(start: float) -> float:
    """Seconds since a monotonic start, rounded for storage."""
    return round(time.monotonic() - start, 3)


def result_key(item: Any) -> str:
    """The name a test's results are stored under: function name without test_, plus other params."""
    name = getattr(item, "originalname", item.name)
    name = name[5:] if name.startswith("test_") else name
    callspec = getattr(item, "callspec", None)
    others = [str(v) for k, v in callspec.params.items() if k != "vllm_config"] if callspec else []
    return f"{name}[{'-'.join(others)}]" if others else name
