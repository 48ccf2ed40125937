"""Live progress lines: "[3/12] prefix_only_092: ready in 41.2 s ... kv_cache ✓ ttft ✗ — ETA 12 min".

Driven by report hooks that run where the terminal is (the controller under pytest-xdist): every
line is written whole, so output stays readable in CI logs and with several workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

MARKS = {"passed": "✓", "failed": "✗", "error": "E", "skipped": "s", "inconclusive": "?"}


def config_of_nodeid(nodeid: str, names: list[str]) -> str | None:
    """The grid config a test id runs against (ids carry the config name among their params)."""
    nodeid = nodeid.split("@", 1)[0]  # a user's own xdist_group marks may suffix "@group"
    if "[" not in nodeid:
        return None
    params = nodeid.rsplit("[", 1)[1].rstrip("]")
    for name in sorted(names, key=len, reverse=True):
        if params == name or params.startswith(name + "-") or params.endswith("-" + name) or f"-{name}-" in params:
            return name
    return None


def short_test_name(nodeid: str, config: str) -> str:
    """`test_ttft[baseline-short]` -> `ttft[short]`."""
    func = nodeid.split("@", 1)[0].split("::")[-1]
    base, _, params = func.partition("[")
    base = base[5:] if base.startswith("test_") else base
    rest = [p for p in params.rstrip("]").replace(config, "", 1).split("-") if p]
    return f"{base}[{'-'.join(rest)}]" if rest else base


def fmt_duration(seconds: float) -> str:
    """`45 s`, `3 min 10 s`, `1 h 05 min`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


@dataclass
class ConfigProgress:
    """What has been seen of one config."""

    index: int
    started: float = field(default_factory=time.monotonic)
    marks: list[str] = field(default_factory=list)
    remaining_tests: int = 0
    ready_s: float | None = None


@dataclass
class Progress:
    """Tracks configs in run order and writes progress lines through a writer callable."""

    names: list[str]
    tests_per_config: dict[str, int]
    write: Any  # callable(str) -> None
    verbosity: int = 0
    workers: int = 1
    seen: dict[str, ConfigProgress] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Configs that have tests selected."""
        return len([n for n in self.names if self.tests_per_config.get(n)])

    def test_started(self, nodeid: str) -> None:
        """First test of a config: its server is being deployed."""
        name = config_of_nodeid(nodeid, self.names)
        if name is None or name in self.seen:
            return
        self.seen[name] = ConfigProgress(len(self.seen) + 1, remaining_tests=self.tests_per_config.get(name, 0))
        if self.verbosity >= 0:
            self.write(f"[{self.seen[name].index}/{self.total}] {name}: deploying…")

    def test_finished(self, nodeid: str, when: str, outcome: str, deploy: dict[str, Any] | None,
                      headline: str | None = None) -> None:
        """A test's setup/call/teardown report arrived."""
        name = config_of_nodeid(nodeid, self.names)
        state = self.seen.get(name) if name else None
        if state is None:
            return
        if deploy and state.ready_s is None and deploy.get("startup_time_seconds") is not None:
            state.ready_s = deploy["startup_time_seconds"]
            if self.verbosity >= 0:
                self.write(f"[{state.index}/{self.total}] {name}: ready in {state.ready_s:.1f} s")
        done = (when == "call") or (when == "setup" and outcome != "passed")
        if not done:
            return
        mark = f"{short_test_name(nodeid, name)} {MARKS.get(outcome, '?')}"
        state.marks.append(mark)
        state.remaining_tests -= 1
        if self.verbosity > 0:
            self.write(f"[{state.index}/{self.total}] {name}: {mark}" + (f" {headline}" if headline else ""))
        if state.remaining_tests <= 0:
            elapsed = time.monotonic() - state.started
            self.durations.append(elapsed)
            if self.verbosity >= 0:
                self.write(f"[{state.index}/{self.total}] {name}: done in {fmt_duration(elapsed)}: "
                           f"{' '.join(state.marks)}{self.eta()}")

    def eta(self) -> str:
        """` — ETA …` from the mean config duration so far (divided among workers)."""
        left = self.total - len(self.durations)
        if left <= 0 or not self.durations:
            return ""
        mean = sum(self.durations) / len(self.durations)
        return f" — {left} config(s) left, ETA {fmt_duration(mean * left / max(1, self.workers))}"
