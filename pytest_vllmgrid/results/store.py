"""Results store: one atomic JSON per config plus a run manifest; what reports and resume read."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import JsonValue

from pytest_vllmgrid.atomic import write_json_atomic
from pytest_vllmgrid.results.models import ConfigResult, ErrorLine, JsonObject, RunManifest, TestResult
from pytest_vllmgrid.results.schema import SchemaError, read_config_result, read_manifest

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


def new_config_result(name: str, config: JsonObject) -> ConfigResult:
    """The seeds' per-config schema, extended (status, hashes, argv, measurements)."""
    return ConfigResult(config_name=name, timestamp=now_iso(), config_hash=config.get("config_hash"),
                        config_params=config.get("params") or {}, config=config)


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

    def load_config(self, name: str) -> ConfigResult | None:
        """A config's stored result (any schema version, upgraded), or None."""
        path = self.config_path(name)
        data = _read_json(path)
        return read_config_result(data, str(path)) if isinstance(data, dict) else None

    def save(self, result: ConfigResult) -> None:
        """Write a config's result atomically: compact while the config runs, pretty once it is settled."""
        result.updated = now_iso()
        write_json_atomic(self.config_path(result.config_name), result.model_dump(mode="json"),
                          compact=result.status == "running")

    def update_config(self, name: str, change: Callable[[ConfigResult], None],
                      config: JsonObject | None = None) -> ConfigResult:
        """Read-modify-write a config's result atomically (created from `config` if missing)."""
        result = self.load_config(name) or new_config_result(name, config or {})
        change(result)
        self.save(result)
        return result

    def reset_config(self, name: str, config: JsonObject) -> ConfigResult:
        """Start a config's result afresh (a rerun replaces the old one)."""
        result = new_config_result(name, config)
        result.status = "running"
        self.save(result)
        return result

    def write_test(self, name: str, test_key: str, test: TestResult) -> None:
        """Store one test's whole record (measurement, verdicts, outcome) in a config's result, once."""
        def change(result: ConfigResult) -> None:
            result.tests[test_key] = test
        self.update_config(name, change)

    def add_error(self, name: str, message: str) -> None:
        """Append an error line to a config's result."""
        self.update_config(name, lambda r: r.errors.append(ErrorLine(time=now_iso(), message=message)))

    def all_configs(self) -> dict[str, ConfigResult]:
        """Every config result in the directory, by name (unreadable or foreign files are skipped)."""
        out = {}
        for path in sorted(self.root.glob("*.json")):
            if path.name == MANIFEST or path.name.startswith("report"):
                continue
            data = _read_json(path)
            if isinstance(data, dict) and "config_name" in data:
                try:
                    result = read_config_result(data, str(path))
                except SchemaError:
                    continue
                out[result.config_name] = result
        return out

    def manifest(self) -> RunManifest:
        """The run manifest (an empty one when absent)."""
        data = _read_json(self.root / MANIFEST)
        return read_manifest(data, str(self.root / MANIFEST)) if isinstance(data, dict) else RunManifest()

    def has_manifest(self) -> bool:
        """True when the run has written its manifest."""
        return (self.root / MANIFEST).is_file()

    def write_manifest(self, manifest: RunManifest) -> None:
        """Replace the run manifest atomically."""
        write_json_atomic(self.root / MANIFEST, manifest.model_dump(mode="json", exclude_none=False))

    def update_manifest(self, **fields: JsonValue) -> RunManifest:
        """Merge fields into the manifest."""
        data = self.manifest().model_dump(mode="json")
        data.update(fields)
        manifest = read_manifest(data)
        self.write_manifest(manifest)
        return manifest

    def completed_hashes(self) -> dict[str, str | None]:
        """Configs whose tests all ran: name -> config hash (for --resume; failed deploys are retried)."""
        return {name: result.config_hash for name, result in self.all_configs().items()
                if result.status == "complete"}


def _read_json(path: Path) -> JsonValue:
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
