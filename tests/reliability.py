"""The reliability ledger: each fault case the suite tries, with its expected and observed behaviour.

A test wraps a case in `with reliability_case(group, name, expected) as case:` and notes what it saw
(`case.observe(...)`, `case.check_results(dir)`, `case.check_processes(pids)`); on exit one JSON line is appended
to the ledger, whether the test passed or not. `scripts/reliability_table.py` turns the ledger into the table of
docs/reliability.md. Ledger: $VLLMGRID_RELIABILITY_LEDGER; without it cases are not recorded, so a plain test run
writes nothing into the repo's results/ (`scripts/reliability_table.py --run` sets it to results/reliability/).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent
LEDGER_ENV = "VLLMGRID_RELIABILITY_LEDGER"


DEFAULT_LEDGER = REPO / "results" / "reliability" / "ledger.jsonl"


def ledger_path() -> Path:
    """The ledger the table is made from: $VLLMGRID_RELIABILITY_LEDGER, else results/reliability/ledger.jsonl."""
    return Path(os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER)


@dataclass
class Case:
    """One fault tried: what should happen, what did, and what it cost."""

    group: str
    name: str
    expected: str
    observed: list[str] = field(default_factory=list)
    survived: bool = False
    results_checked: int = 0
    results_lost: int = 0
    processes_left: int = 0
    seconds: float = 0.0
    test: str = ""
    failure: str | None = None

    def observe(self, text: str) -> None:
        """Note one observed fact (kept short: it goes into a table cell)."""
        self.observed.append(" ".join(text.split()))

    def check_results(self, results_dir: Path, expect_configs: Iterable[str] = ()) -> list[str]:
        """Parse every JSON file under `results_dir`; unreadable files and missing configs count as lost."""
        problems = []
        files = sorted(p for p in results_dir.rglob("*.json")) if results_dir.is_dir() else []
        for path in files:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                problems.append(f"{path.name}: {type(exc).__name__}")
                continue
            if path.name not in ("manifest.json",) and not path.name.startswith("report") and path.parent == \
                    results_dir and not (isinstance(data, dict) and "config_name" in data and "tests" in data):
                problems.append(f"{path.name}: not a config result")
        for name in expect_configs:
            if not (results_dir / f"{name}.json").is_file():
                problems.append(f"{name}.json missing")
        self.results_checked += len(files)
        self.results_lost += len(problems)
        return problems

    def check_processes(self, pids: Iterable[int]) -> list[int]:
        """Record server processes still alive that should not be."""
        left = list(pids)
        self.processes_left += len(left)
        return left


@contextlib.contextmanager
def reliability_case(group: str, name: str, expected: str) -> Iterator[Case]:
    """Run one case and append it to the ledger; it survived when the block passed with nothing lost or left."""
    case = Case(group=group, name=name, expected=expected,
                test=os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0])
    start = time.monotonic()
    try:
        yield case
    except BaseException as exc:
        case.failure = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise
    else:
        case.survived = case.results_lost == 0 and case.processes_left == 0
    finally:
        case.seconds = round(time.monotonic() - start, 1)
        _append(case)


def _append(case: Case) -> None:
    """One JSON line, written with a single append (safe with pytest-xdist workers); only into a ledger asked for."""
    if not os.environ.get(LEDGER_ENV):
        return
    path = Path(os.environ[LEDGER_ENV])
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps({**asdict(case), "recorded_at": time.time()}, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_ledger(path: Path | None = None) -> list[dict]:
    """The latest record of each case (group, name), in the order cases were first tried."""
    path = path or ledger_path()
    latest: dict[tuple[str, str], dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            latest[(rec["group"], rec["name"])] = rec
    return list(latest.values())
