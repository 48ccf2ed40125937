"""The reliability ledger is written only where it was asked for: a plain test run leaves the repo's results/ alone."""

from __future__ import annotations

import json
from pathlib import Path

import reliability
from reliability import LEDGER_ENV, reliability_case


def test_a_case_is_not_recorded_without_a_ledger_asked_for(monkeypatch, tmp_path: Path):
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    monkeypatch.setattr(reliability, "REPO", tmp_path)  # where the default ledger (the repo's results/) would be
    with reliability_case("interruption", "nothing", "nothing written"):
        pass
    assert list(tmp_path.rglob("*")) == []


def test_a_case_is_recorded_in_the_ledger_asked_for(monkeypatch, tmp_path: Path):
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv(LEDGER_ENV, str(ledger))
    with reliability_case("interruption", "recorded", "one line") as case:
        case.observe("seen")
    assert [json.loads(line)["name"] for line in ledger.read_text().splitlines()] == ["recorded"]
