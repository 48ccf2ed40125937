"""Anomalies grouped: a config's benchmark warnings by kind, one group per (kind, config) with its count."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

# (pattern on the warning text, kind): the warnings the benchmarks repeat test after test.
KNOWN_KINDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^client TTFT .* vs the engine's"), "client TTFT above the engine's (time outside the engine)"),
    (re.compile(r"responses arrived in one burst"), "responses arrived in one burst (TPOT left out)"),
    (re.compile(r"^span cut by"), "throughput span cut by its time limit"),
    (re.compile(r"CI half-width still above"), "CI wider than its target when the benchmark stopped"),
    (re.compile(r"^GPU alert: .*peak VRAM"), "GPU alert: peak VRAM above its bound"),
    (re.compile(r"^GPU alert: .*temperature"), "GPU alert: temperature above its bound"),
    (re.compile(r"^GPU alert: .*utili[sz]ation"), "GPU alert: low utilisation under a saturating load"),
]
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


KIND_CHARS = 100  # an unknown warning's kind: its first clause, at most this long


class AnomalyGroup(BaseModel):
    """Warnings of one kind on one config: how many, on which tests, and each full text."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    config: str
    count: int
    tests: list[str] = Field(default_factory=list)
    details: list[str] = Field(default_factory=list)  # "test: full warning", in run order

    def line(self) -> str:
        """`config: kind: N× (test, test, ...)`: the group in one line."""
        tests = list(dict.fromkeys(self.tests))
        shown = ", ".join(tests[:4]) + (f", and {len(tests) - 4} more" if len(tests) > 4 else "")
        return f"{self.config}: {self.kind}: {self.count}× ({shown})"


def warning_kind(text: str) -> str:
    """The kind of one warning: a known kind's name, else its first clause with the numbers blanked."""
    for pattern, kind in KNOWN_KINDS:
        if pattern.search(text):
            return kind
    head = _NUMBER.sub("N", re.split(r"[:(;]", text, maxsplit=1)[0].strip() or text.strip())
    if len(head) <= KIND_CHARS:
        return head
    return head[:KIND_CHARS].rsplit(" ", 1)[0] + "…"  # cut between words, and say so


def group_warnings(config: str, warnings: list[str]) -> list[AnomalyGroup]:
    """A config's `test: warning` lines grouped by kind, in order of first appearance."""
    groups: dict[str, AnomalyGroup] = {}
    for line in warnings:
        test, _, text = line.partition(": ")
        if not text:
            test, text = "", line
        kind = warning_kind(text)
        group = groups.setdefault(kind, AnomalyGroup(kind=kind, config=config, count=0))
        group.count += 1
        group.tests.append(test)
        group.details.append(line)
    return list(groups.values())
