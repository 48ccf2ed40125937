"""Regression-gate experiment on the real tiny CPU vLLM: false-alarm rate (A/A) and detection rate.

    .venv/bin/python perf/gate_experiment.py --out /tmp/gate-exp            # runs, then analyses
    .venv/bin/python perf/gate_experiment.py --out /tmp/gate-exp --analyze-only

Runs, one after the other (each is a full pytest session: deploy, benchmark, tear down):
  * A runs: the embedded grid's `baseline` config, benchmarks/test_ttft.py (short and long prompts);
  * slow runs: the same config name with chunked prefill in tiny chunks (max_num_batched_tokens 64),
    which makes the ~1,000-token prompts' TTFT slower and leaves the ~40-token prompts alone.
Every run after the first A run is a real `pytest --vllm-compare A1 --vllm-compare-fail ...` (its exit
status is recorded). The rates then come from the stored raw samples:
  * between-run A/A: every ordered pair (A_i, A_j), i != j, judged as OLD=A_i, NEW=A_j;
  * within-run A/A: each A run's samples split at random into two halves, several times per run;
  * detection: every pair (A_i, S_j);
each for allowed percentages from 0 to 50 %. Then, with several runs per side, the gate's own multi-run
judge (gate.judge_test with one stored test per run: runs as the unit, stats.compare_runs_level):
  * 3 vs 1: every A triple as OLD against each remaining A run (A/A) and against each slow run;
  * 3 vs 3: every 3+3 split of the A runs (A/A) and every A triple against the slow runs;
and, for contrast, 3 vs 3 with the runs' samples pooled into one run (request-level bootstrap).
Pairs share runs, so trials are not independent: the rates describe these runs, with that caveat.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pytest_vllmgrid.gate import GateSpec, judge_test, parse_specs
from pytest_vllmgrid.results import ResultsStore

REPO = Path(__file__).resolve().parent.parent
CONFIG = "baseline"
SPECS = ["ttft_p50:10%", "ttft_long_p50:10%"]
SLOW_PARAMS = {"description": "baseline made slow: chunked prefill in 64-token chunks",
               "enable_chunked_prefill": True, "max_num_batched_tokens": 64, "max_num_seqs": 16}
SPLITS_PER_RUN = 20
SWEEP_PCT = (0, 5, 10, 20, 30, 50)
RUNS_PER_SIDE, RUN_LEVEL_PCT = 3, 10.0


def write_grid(out: Path, name: str, extra_params: dict[str, Any]) -> Path:
    """The embedded CPU grid reduced to its baseline config (plus `extra_params`), thresholds left out."""
    source = Path(str(resources.files("pytest_vllmgrid").joinpath("data/cpu-tiny.yaml")))
    grid = yaml.safe_load(source.read_text())
    grid.pop("thresholds", None)
    grid["configs"] = [{**next(c for c in grid["configs"] if c["name"] == CONFIG), **extra_params}]
    path = out / f"grid-{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def run_pytest(grid: Path, results: Path, repetitions: int, compare_with: Path | None) -> dict[str, Any]:
    """One pytest session of the TTFT benchmark; returns its exit status and duration."""
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_ttft.py", "--grid", str(grid), "--results-dir",
           str(results), "--vllm-repetitions", str(repetitions), "-p", "no:cacheprovider", "-q"]
    if compare_with is not None:
        cmd += ["--vllm-compare", str(compare_with)] + [arg for s in SPECS for arg in ("--vllm-compare-fail", s)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    (results / "pytest.log").write_text(proc.stdout + proc.stderr)
    return {"dir": str(results), "exit": proc.returncode, "seconds": round(time.monotonic() - started, 1)}


def run_all(out: Path, a_runs: int, slow_runs: int, repetitions: int) -> None:
    """A runs then slow runs, sequentially; each later run also gates itself against A1 inside pytest."""
    out.mkdir(parents=True, exist_ok=True)
    grids = {"A": write_grid(out, "A", {}), "S": write_grid(out, "S", SLOW_PARAMS)}
    log = []
    for kind, count in (("A", a_runs), ("S", slow_runs)):
        for i in range(1, count + 1):
            results = out / f"{kind}{i}"
            first = out / "A1"
            entry = run_pytest(grids[kind], results, repetitions, None if results == first else first)
            log.append({"run": f"{kind}{i}", **entry})
            print(f"{kind}{i}: pytest exit {entry['exit']} in {entry['seconds']} s", flush=True)
    (out / "runs.json").write_text(json.dumps(log, indent=1))


def load_tests(out: Path, kind: str) -> list[dict[str, dict]]:
    """The stored tests of the `baseline` config of every run of one kind, in run order."""
    runs = sorted((p for p in out.glob(f"{kind}[0-9]*") if p.is_dir()), key=lambda p: int(p.name[1:]))
    tests = [(ResultsStore(p).load_config(CONFIG) or {}).get("tests") or {} for p in runs]
    return [t for t in tests if t]


Side = dict[str, dict] | list[dict[str, dict]]


def judge_pair(old: Side, new: Side, specs: list[GateSpec]) -> dict[str, bool]:
    """spec text -> regression? for one OLD/NEW pair: a stored run's tests, or a list of runs (runs as the unit)."""
    flagged = {s.text: False for s in specs}
    for key in ("ttft[short]", "ttft[long]"):
        old_test = [run.get(key) for run in old] if isinstance(old, list) else old.get(key)
        new_test = [run.get(key) for run in new] if isinstance(new, list) else new.get(key)
        for verdict in judge_test(CONFIG, key, old_test, new_test, specs):
            flagged[verdict.spec] |= verdict.failed
    return flagged


def split_halves(tests: dict[str, dict], rng: np.random.Generator) -> tuple[dict[str, dict], dict[str, dict]]:
    """Two pseudo-runs from one run: each sample's values shuffled and cut in half."""
    halves: tuple[dict[str, dict], dict[str, dict]] = ({}, {})
    for key, test in tests.items():
        measurement = test.get("measurement") or {}
        parts = ({}, {})
        for name, values in (measurement.get("samples") or {}).items():
            shuffled = list(rng.permutation(values))
            parts[0][name], parts[1][name] = shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2:]
        for half, samples in zip(halves, parts):
            half[key] = {"measurement": {**measurement, "samples": samples}}
    return halves


def rate(trials: list[dict[str, bool]], spec: str | None = None) -> list[int]:
    """[flagged, total] over trials, for one spec or for any spec."""
    return [sum(any(t.values()) if spec is None else t[spec] for t in trials), len(trials)]


def with_allowed(pct: float) -> list[GateSpec]:
    """SPECS with their allowed percentage replaced."""
    return parse_specs([f"{s.rsplit(':', 1)[0]}:{pct:g}%" for s in SPECS])


def pooled(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Several runs' tests as one run: raw samples concatenated (what a multi-run OLD/NEW would give stats.compare)."""
    out: dict[str, dict] = {}
    for key in runs[0]:
        first = runs[0][key].get("measurement") or {}
        samples = {name: [v for run in runs for v in (run.get(key, {}).get("measurement") or {}).get(
            "samples", {}).get(name, [])] for name in first.get("samples") or {}}
        out[key] = {"measurement": {**first, "samples": samples}}
    return out


def run_level_trials(a_runs: list[dict[str, dict]], s_runs: list[dict[str, dict]], per_side: int,
                     allowed_pct: float) -> dict[str, dict[str, list[int]]]:
    """Through the gate's judge with several runs per side: 3 vs 1, 3 vs 3, and 3 vs 3 pooled into one run each.

    A/A: every group of `per_side` A runs as OLD against each remaining A run (vs 1) or the remaining group
    (vs `per_side`); detection: every A group against each slow run (vs 1) or all of them (vs `per_side`)."""
    specs = with_allowed(allowed_pct)
    groups = [list(g) for g in itertools.combinations(range(len(a_runs)), per_side)]
    rest = [[i for i in range(len(a_runs)) if i not in g] for g in groups]
    olds = [[a_runs[i] for i in g] for g in groups]
    n = per_side
    trials = {
        f"A/A {n} vs 1": [(old, a_runs[j]) for old, r in zip(olds, rest) for j in r],
        f"slow vs A {n} vs 1": [(old, s) for old in olds for s in s_runs],
        f"A/A {n} vs {n}": [(old, [a_runs[j] for j in r[:n]]) for old, r in zip(olds, rest)],
        f"slow vs A {n} vs {n}": [(old, s_runs[:n]) for old in olds],
        f"A/A {n} vs {n}, samples pooled": [(pooled(old), pooled([a_runs[j] for j in r[:n]]))
                                             for old, r in zip(olds, rest)],
        f"slow vs A {n} vs {n}, samples pooled": [(pooled(old), pooled(s_runs[:n])) for old in olds],
    }
    out: dict[str, dict[str, list[int]]] = {}
    for name, pairs in trials.items():
        judged = [judge_pair(old, new, specs) for old, new in pairs]
        out[name] = {"any": rate(judged), **{spec.text.rsplit(":", 1)[0]: rate(judged, spec.text) for spec in specs}}
    return out


def analyze(out: Path) -> dict[str, Any]:
    """False-alarm and detection rates for several allowed percentages; printed and written to summary.json."""
    a_runs, s_runs = load_tests(out, "A"), load_tests(out, "S")
    pairs = [(a, b) for i, a in enumerate(a_runs) for j, b in enumerate(a_runs) if i != j]
    rng = np.random.default_rng(0)
    splits = [split_halves(run, rng) for run in a_runs for _ in range(SPLITS_PER_RUN)]
    slow_pairs = [(a, s) for a in a_runs for s in s_runs]
    groups = {"A/A between runs": pairs, "A/A within a run (random halves)": splits, "slow vs A": slow_pairs}
    summary: dict[str, Any] = {"specs": SPECS, "a_runs": len(a_runs), "slow_runs": len(s_runs),
                               "slow_params": SLOW_PARAMS, "splits_per_run": SPLITS_PER_RUN, "sweep": {}}
    for pct in SWEEP_PCT:
        specs = with_allowed(pct)
        summary["sweep"][f"{pct:g}%"] = {
            name: {"any": rate(trials), **{spec.text.rsplit(":", 1)[0]: rate(trials, spec.text) for spec in specs}}
            for name, trials in ((n, [judge_pair(a, b, specs) for a, b in group]) for n, group in groups.items())}
    if len(a_runs) >= 2 * RUNS_PER_SIDE and len(s_runs) >= 2:
        summary["runs_as_unit"] = {"per_side": RUNS_PER_SIDE, "allowed_pct": RUN_LEVEL_PCT,
                                   **run_level_trials(a_runs, s_runs[:RUNS_PER_SIDE], RUNS_PER_SIDE, RUN_LEVEL_PCT)}
    summary["medians_ms"] = {
        kind: {key: [round(float(np.median(run[key]["measurement"]["samples"]["ttft_ms"])), 1) for run in runs]
               for key in ("ttft[short]", "ttft[long]")} for kind, runs in (("A", a_runs), ("S", s_runs))}
    runs_log = out / "runs.json"
    if runs_log.exists():
        summary["pytest_exit_codes"] = {r["run"]: r["exit"] for r in json.loads(runs_log.read_text())}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The figures as a small table: flagged/trials per group, spec and allowed percentage."""
    print(f"A runs {summary['a_runs']}, slow runs {summary['slow_runs']} ({summary['slow_params']})")
    for kind, medians in summary["medians_ms"].items():
        print(f"  {kind} run medians, ms: " + "; ".join(f"{k} {v}" for k, v in medians.items()))
    for pct, groups in summary["sweep"].items():
        print(f"allowed {pct}:")
        for name, figures in groups.items():
            cells = [f"{label} {flagged}/{total}" + (f" ({flagged / total:.0%})" if total else "")
                     for label, (flagged, total) in figures.items()]
            print(f"  {name:34s} " + " | ".join(cells))
    if "runs_as_unit" in summary:
        unit = summary["runs_as_unit"]
        print(f"several runs per side (gate.judge_test on a list of runs: runs as the unit, "
              f"stats.compare_runs_level; pooled: one run of the concatenated samples), allowed "
              f"{unit['allowed_pct']:g}%:")
        for name in [n for n in unit if n.startswith(("A/A", "slow"))]:
            cells = [f"{label} {f}/{t} ({f / t:.0%})" for label, (f, t) in unit[name].items()]
            print(f"  {name:34s} " + " | ".join(cells))
    if "pytest_exit_codes" in summary:
        print("pytest exit codes (--vllm-compare A1, " + ", ".join(SPECS) + "): " + ", ".join(
            f"{run}={code}" for run, code in summary["pytest_exit_codes"].items()))


def main() -> None:
    """Run the experiment (unless --analyze-only), then analyse it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="experiment directory (one results dir per run)")
    parser.add_argument("--a-runs", type=int, default=6, help="runs of the unchanged config (>= 5 gives >= 20 pairs)")
    parser.add_argument("--slow-runs", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=20, help="requests per TTFT sample")
    parser.add_argument("--analyze-only", action="store_true")
    args = parser.parse_args()
    if not args.analyze_only:
        run_all(args.out, args.a_runs, args.slow_runs, args.repetitions)
    analyze(args.out)


if __name__ == "__main__":
    main()
