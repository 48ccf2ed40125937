"""Shared helpers for the plugin's tests: grids that deploy tests/fake_vllm.py through the real process deployer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FAKE_VLLM = REPO / "tests" / "fake_vllm.py"


def fake_grid(configs: list[dict], **top) -> dict:
    """A grid served by the fake vLLM (a fault_server behind vLLM's argv)."""
    return {"model": "fake-model", "served_model_name": "tiny", "deployer": "process",
            "vllm_command": [sys.executable, str(FAKE_VLLM), "serve"], "startup_timeout_s": 30,
            "benchmarks": {"repetitions": 3, "warmup": 1, "max_tokens": 8},
            "configs": configs, **top}


@pytest.fixture
def write_grid(pytester: pytest.Pytester):
    """Write a grid dict as JSON (or YAML text as-is) into the pytester dir; returns its path."""
    def write(grid: dict | str, name: str = "grid.json") -> Path:
        path = pytester.path / name
        path.write_text(grid if isinstance(grid, str) else json.dumps(grid), encoding="utf-8")
        return path
    return write


@pytest.fixture
def events_file(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file the fake vLLM appends 'start NAME' / 'stop NAME' lines to."""
    path = pytester.path / "events.txt"
    monkeypatch.setenv("FAKE_VLLM_EVENTS", str(path))
    return path


def copy_run(recorded: Path, dest: Path):
    """A writable copy of a recorded results directory (tests/data/...), opened as a ResultsStore."""
    import shutil

    from pytest_vllmgrid.results import ResultsStore

    shutil.copytree(recorded, dest)
    return ResultsStore(dest)


def read_events(path: Path) -> list[str]:
    """The 'start X' / 'stop X' events in order (timestamps dropped)."""
    if not path.exists():
        return []
    return [" ".join(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]


def servers_using(events_path: Path) -> list[int]:
    """Pids of live fake vLLM servers started for this events file (there should be none left)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any("fake_vllm.py" in part for part in proc.info["cmdline"] or []) and \
                    proc.environ().get("FAKE_VLLM_EVENTS") == str(events_path):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def pytest_collection_modifyitems(items: list) -> None:
    """Run the tiny-model tests first: importing transformers/torch late in a long test process
    segfaulted in garbage collection twice in full CI runs (never alone or early)."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_tinymodel.py") else 1)
