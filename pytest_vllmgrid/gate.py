"""Regression gate: `METRIC:PCT` specs judged on stored runs' raw samples.

A spec fails a config only when the stored metric got worse by more than PCT *and* the CI of the
relative change excludes zero on the bad side. One run per side: bootstrap of the requests
(stats.compare; blind to run-to-run variance). Several runs on a side: the run is the unit
(stats.compare_runs_level, a t interval on the log of each run's statistic). Pure functions return
verdicts; the pytest glue (configure_gate, check_regression...) lives in plugin.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pytest_vllmgrid.grid import suggest
from pytest_vllmgrid.numbers import fmt_cell, fmt_number
from pytest_vllmgrid.results import (HIGHER, ConfigResult, GateRecord, GateVerdict, Machine, Measurement, ResultsStore,
                                     TestResult, gate_machine_notes, placement_note)
from pytest_vllmgrid.stats import MIN_SAMPLES_FOR_SIGNIFICANCE, STATISTICS, Comparison, compare_runs_level
from pytest_vllmgrid.thresholds import METRICS, unknown_metric

# Short names for the metrics a CI gate usually watches: alias -> TEST.METRIC[:STAT].
ALIASES: dict[str, str] = {
    "ttft_p50": "ttft[short].ttft_ms:p50",
    "ttft_p90": "ttft[short].ttft_ms:p90",
    "ttft_p95": "ttft[short].ttft_ms:p95",
    "ttft_p99": "ttft[short].ttft_ms:p99",
    "ttft_long_p50": "ttft[long].ttft_ms:p50",
    "ttft_long_p95": "ttft[long].ttft_ms:p95",
    "e2e_p50": "ttft[short].e2e_ms:p50",
    "tpot_p50": "ttft[short].tpot_ms:p50",
    "itl_p50": "ttft[short].itl_ms:p50",
    "ttft_miss": "kv_cache.ttft_miss_ms:p50",
    "ttft_hit": "kv_cache.ttft_hit_ms:p50",
    "throughput": "throughput.output_tok_s",
    "conversation_ttft_p50": "long_conversation.ttft_ms:p50",
    "last_turns_ttft_p50": "long_conversation.last_turns_ttft_ms:p50",
}
# Rates stored as one value per run are judged through the raw samples they follow from: in a closed
# loop at fixed concurrency and output length, rate = concurrency x tokens / mean(e2e) (Little's law).
RATE_PROXIES: dict[str, str] = {"throughput.output_tok_s": "e2e_ms", "throughput.request_rate": "e2e_ms"}
DEFAULT_STATISTIC = "p50"
# Verdict statuses; only REGRESSION fails.
REGRESSION, OK, NOT_JUDGED, MISSING, INFO = "regression", "ok", "not judged", "missing", "info"


class GateError(ValueError):
    """A gate spec or run directory the user got wrong; the message says what is allowed."""


@dataclass(frozen=True)
class GateSpec:
    """One `--vllm-compare-fail` spec: which stored metrics, which statistic, how much worse is allowed."""

    text: str
    test: str  # "ttft[short]", "throughput[*]" or a bare benchmark name matching every parameter
    metric: str
    statistic: str | None
    allowed_pct: float

    def matches(self, test_key: str, metric: str) -> bool:
        """True for a stored `test_key` / metric this spec names."""
        if metric != self.metric:
            return False
        if "[" not in self.test:
            return test_key.split("[", 1)[0] == self.test
        pattern = "".join(".*" if ch == "*" else re.escape(ch) for ch in self.test)
        return re.fullmatch(pattern, test_key) is not None


def allowed_metric_names() -> list[str]:
    """Every name a spec may use: the aliases, then TEST.METRIC of the shipped benchmarks."""
    return list(ALIASES) + [f"{test}.{metric}" for test, metrics in METRICS.items() for metric in metrics]


def parse_spec(text: str) -> GateSpec:
    """`METRIC:PCT` with METRIC an alias or `TEST.METRIC[:STAT]`, PCT like `10%` or `10`."""
    head, sep, pct_text = text.strip().rpartition(":")
    if not sep or not head:
        raise GateError(f"regression gate spec {text!r}: expected METRIC:PCT, e.g. ttft_p50:10% or "
                        "ttft[long].ttft_ms:p95:15%")
    try:
        allowed = float(pct_text.strip().rstrip("%"))
    except ValueError:
        raise GateError(f"regression gate spec {text!r}: {pct_text!r} is not a percentage (e.g. 10%)") from None
    if not allowed >= 0:
        raise GateError(f"regression gate spec {text!r}: the allowed percentage must be >= 0")
    name = ALIASES.get(head, head)
    statistic = None
    first, colon, last = name.rpartition(":")
    if colon:
        name, statistic = first, last
        if statistic not in STATISTICS:
            raise GateError(f"regression gate spec {text!r}: unknown statistic {statistic!r}; allowed: "
                            f"{', '.join(STATISTICS)}")
    problem = unknown_metric(name) if "." in name else f"unknown metric {name!r}"
    if problem:
        names = allowed_metric_names()
        raise GateError(f"regression gate spec {text!r}: {problem}{suggest(head, names)}; allowed metric names: "
                        f"{', '.join(names)} (a TEST.METRIC may add :STAT, one of {', '.join(STATISTICS)})")
    test, metric = name.rsplit(".", 1)
    return GateSpec(text=text.strip(), test=test, metric=metric, statistic=statistic, allowed_pct=allowed)


def parse_specs(values: Iterable[str] | str | None) -> list[GateSpec]:
    """Specs from repeated options or one ini string (whitespace- or comma-separated)."""
    if isinstance(values, str):
        values = [values]
    return [parse_spec(part) for value in values or [] for part in re.split(r"[\s,]+", value) if part]


Tests = TestResult | Sequence[TestResult | None] | None
"""One config's stored test on one side: a test, None, or one per stored run (None where absent)."""


def judge_metric(config: str, metric_key: str, old_test: Tests, new_test: Tests,
                 allowed_pct: float | None, statistic: str | None = None, spec: str | None = None) -> GateVerdict:
    """Judge one stored metric of one config on its raw samples; several runs on a side: runs as the unit."""
    name = metric_key.rsplit(".", 1)[1]
    old_runs, new_runs = _measurements(old_test), _measurements(new_test)
    meta = next((m.metrics[name] for m in new_runs + old_runs if name in m.metrics), None)
    stat = statistic or DEFAULT_STATISTIC
    verdict = GateVerdict(config=config, metric=metric_key, statistic=stat, status=MISSING, allowed_pct=allowed_pct,
                          unit=meta.unit if meta else "", higher_is_better=meta is not None and meta.better == HIGHER,
                          spec=spec)
    old_values, new_values = _run_samples(old_runs, name), _run_samples(new_runs, name)
    benchmark = metric_key.rsplit(".", 1)[0].split("[", 1)[0]
    proxy = RATE_PROXIES.get(f"{benchmark}.{name}") if old_values is None or new_values is None else None
    if proxy and _run_samples(old_runs, proxy, non_empty=True) and _run_samples(new_runs, proxy, non_empty=True):
        return _judge_rate(verdict, old_runs, new_runs, name, proxy)
    if meta is None:
        verdict.note = "not measured in either run"
    elif old_values is None or new_values is None:
        side, runs = ("OLD", old_runs) if old_values is None else ("NEW", new_runs)
        has_value = any(name in m.metrics for m in runs)
        verdict.status = NOT_JUDGED if has_value else MISSING
        verdict.note = (f"no raw samples stored in {side} (a single value cannot be tested)" if has_value
                        else f"not measured in {side}")
    elif not all(old_values) or not all(new_values):
        verdict.status, verdict.note = NOT_JUDGED, "an empty sample (every request failed?)"
    else:
        try:
            result = compare_runs_level(old_values, new_values, statistic=stat,
                                        higher_is_better=verdict.higher_is_better, allowed_pct=allowed_pct or 0.0)
        except ValueError as exc:  # a zero baseline statistic, NaN in a sample
            verdict.status, verdict.note = NOT_JUDGED, str(exc)
            return verdict
        verdict.old, verdict.new = result.old, result.new
        _settle(verdict, result, result.change_pct, result.ci_low_pct, result.ci_high_pct, old_values, new_values)
    return verdict


def _judge_rate(verdict: GateVerdict, old_runs: list[Measurement], new_runs: list[Measurement], name: str,
                proxy: str) -> GateVerdict:
    """A rate without raw samples, judged as 1 / mean(proxy samples): a drop of a% is a rise of a/(100-a)%."""
    allowed = verdict.allowed_pct or 0.0
    allowed_rise = allowed / (100.0 - allowed) * 100.0 if allowed < 100 else float("inf")
    old_runs = [m for m in old_runs if _samples(m, proxy)]
    new_runs = [m for m in new_runs if _samples(m, proxy)]
    old_values = [_samples(m, proxy) or [] for m in old_runs]
    new_values = [_samples(m, proxy) or [] for m in new_runs]
    result = compare_runs_level(old_values, new_values, statistic="mean", higher_is_better=False,
                                allowed_pct=allowed_rise)

    def inverse(pct: float) -> float:
        return 100.0 / (1.0 + pct / 100.0) - 100.0
    verdict.statistic = f"via 1/mean({proxy})"
    verdict.old, verdict.new = _stored_value(old_runs, name), _stored_value(new_runs, name)
    return _settle(verdict, result, inverse(result.change_pct), inverse(result.ci_high_pct),
                   inverse(result.ci_low_pct), old_values, new_values)


def _settle(verdict: GateVerdict, result: Comparison, change: float, ci_low: float, ci_high: float,
            old_values: list[list[float]], new_values: list[list[float]]) -> GateVerdict:
    """Copy a comparison's change, CI and sizes into the verdict and decide its status."""
    verdict.change_pct, verdict.ci_low_pct, verdict.ci_high_pct = change, ci_low, ci_high
    verdict.n_old, verdict.n_new, verdict.significant = result.n_old, result.n_new, result.significant
    verdict.runs_old, verdict.runs_new, verdict.method = len(old_values), len(new_values), result.method
    smallest = min(len(values) for values in old_values + new_values)
    if smallest < MIN_SAMPLES_FOR_SIGNIFICANCE:
        verdict.status = NOT_JUDGED
        verdict.note = (f"n={result.n_old}/{result.n_new}: fewer than {MIN_SAMPLES_FOR_SIGNIFICANCE} samples "
                        "on one side (raise --vllm-repetitions)" if len(old_values) == len(new_values) == 1 else
                        f"a run with n={smallest}: fewer than {MIN_SAMPLES_FOR_SIGNIFICANCE} samples in a run "
                        "(raise --vllm-repetitions)")
    elif verdict.allowed_pct is None:
        verdict.status = INFO
    else:
        verdict.status = REGRESSION if result.regression else OK
    return verdict


def judge_test(config: str, test_key: str, old_test: Tests, new_test: Tests,
               specs: list[GateSpec]) -> list[GateVerdict]:
    """Verdicts for one config's test; without specs, every headline sample metric, shown not gated."""
    tests = [*_tests(new_test), *_tests(old_test)]
    names = list(dict.fromkeys(name for test in tests if test.measurement for name in test.measurement.metrics))
    verdicts = []
    for name in names:
        key = f"{test_key}.{name}"
        if specs:
            verdicts += [judge_metric(config, key, old_test, new_test, s.allowed_pct, s.statistic, s.text)
                         for s in specs if s.matches(test_key, name)]
        elif any(_is_headline_sample(test, name) for test in tests):
            verdicts.append(judge_metric(config, key, old_test, new_test, None))
    return verdicts


Runs = ResultsStore | Sequence[ResultsStore]
"""One side of a comparison: one stored run, or several runs of the same configs."""


def compare_runs(old: Runs, new: Runs, specs: list[GateSpec]) -> list[GateVerdict]:
    """Every config of NEW that OLD has too (matched by name), every test, judged by the specs.

    With several runs on a side, each config/test is judged over the runs that hold it (runs as the unit)."""
    old_results, new_results = [s.all_configs() for s in _stores(old)], [s.all_configs() for s in _stores(new)]
    verdicts = []
    for config in dict.fromkeys(name for results in new_results for name in results):
        old_data = [results[config] for results in old_results if config in results]
        if not old_data:
            continue
        new_data = [results[config] for results in new_results if config in results]
        old_tests, new_tests = ([d.tests for d in data] for data in (old_data, new_data))
        machines = machines_note(old_data, new_data)
        for test_key in dict.fromkeys([*(k for t in new_tests for k in t), *(k for t in old_tests for k in t)]):
            found = judge_test(config, test_key, [t.get(test_key) for t in old_tests],
                               [t.get(test_key) for t in new_tests], specs)
            for verdict in found:
                verdict.machines = machines
            verdicts += found
    return verdicts


def machines_note(old: Sequence[ConfigResult | None], new: Sequence[ConfigResult | None]) -> str:
    """'' when a config's OLD and NEW runs were measured on the same machine (host and GPU UUIDs) or where they
    ran is not recorded; else which run ran where (results.placement_note)."""
    def side(label: str, results: Sequence[ConfigResult | None]) -> dict[str, Machine | None]:
        named = [r for r in results if r is not None]
        return {label if len(named) == 1 else f"{label} {i}": r.deployment.machine() for i, r in enumerate(named, 1)}
    machines = {**side("OLD", old), **side("NEW", new)}
    if len({m.key() for m in machines.values() if m is not None}) < 2:  # one machine, or none recorded
        return ""
    return placement_note(machines)


def unmatched_specs(specs: list[GateSpec], verdicts: list[GateVerdict]) -> list[GateSpec]:
    """Specs that judged nothing (a gate that watches nothing must not pass silently)."""
    used = {v.spec for v in verdicts if v.status in (REGRESSION, OK)}
    return [s for s in specs if s.text not in used]


def unmatched_configs(old: Runs, new: Runs) -> tuple[list[str], list[str]]:
    """Config names only in OLD, and only in NEW (in no run of the other side)."""
    old_names, new_names = ({name for store in _stores(side) for name in store.all_configs()} for side in (old, new))
    return sorted(old_names - new_names), sorted(new_names - old_names)


def open_runs(paths: Sequence[str | Path], what: str = "run") -> list[ResultsStore]:
    """Several stored results directories for one side; each at most once (a copy is not another run)."""
    if not paths:
        raise GateError(f"{what}: no results directory given")
    seen: dict[Path, str] = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise GateError(f"{what} {path}: given twice (as {seen[resolved]}); each run counts once")
        seen[resolved] = str(path)
    return [open_run(path, what) for path in paths]


def runs_label(paths: Sequence[str | Path] | str | Path) -> str:
    """`old` for one run, `a, b, c` for several."""
    return str(paths) if isinstance(paths, (str, Path)) else ", ".join(str(p) for p in paths)


def open_run(path: str | Path, what: str = "run") -> ResultsStore:
    """A stored results directory that holds at least one config result."""
    store = ResultsStore(Path(path))
    if not store.root.is_dir():
        raise GateError(f"{what} {path}: no such results directory")
    if not store.all_configs():
        raise GateError(f"{what} {path}: no config results (<config>.json) in this directory")
    return store


def render_table(verdicts: list[GateVerdict]) -> list[str]:
    """The comparison as aligned text lines (terminal summary and `vllmgrid compare`)."""
    header = ["config", "metric", "stat", "old", "new", "change [95% CI]", "allowed", "verdict"]
    rows = [[v.config, v.metric, v.statistic, fmt_cell(v.old, v.unit), fmt_cell(v.new, v.unit), v.change_text(),
             v.allowed_text() or "-", v.verdict_text()] for v in verdicts]
    if any((v.runs_old, v.runs_new) != (1, 1) for v in verdicts):  # several runs: say how many were judged
        header.insert(3, "runs")
        for row, v in zip(rows, verdicts):
            row.insert(3, f"{v.runs_old}/{v.runs_new}" if v.change_pct is not None else "-")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in [header, *rows]]


def summary_lines(verdicts: list[GateVerdict], specs: list[GateSpec], old_root: Path | str) -> list[tuple[str, bool]]:
    """(line, is_bad) pairs: the table, any spec that judged nothing, and the outcome."""
    lines = [(f"compared with {old_root}", False)]
    judged = [v for v in verdicts if v.change_pct is not None]
    if judged and all((v.runs_old, v.runs_new) == (1, 1) for v in judged):
        lines.append(("one run per side: the CI covers request-to-request noise only, not run-to-run variance "
                      "(compare several runs per side; docs/regression-gate.md)", False))
    elif judged:
        lines.append(("runs as the unit: t interval on the log of each run's statistic (column runs: OLD/NEW runs "
                      "judged)", False))
    lines += [(f"CAUTION: {note}", True) for note in gate_machine_notes(verdicts)]
    lines += [(line, "REGRESSION" in line) for line in render_table(verdicts)] if verdicts else [
        ("(no config/test in common)", True)]
    lines += [(f"WARNING: {s.text} judged nothing: no metric it names has >= {MIN_SAMPLES_FOR_SIGNIFICANCE} raw "
               "samples in both runs", True) for s in unmatched_specs(specs, verdicts)]
    failed = sum(v.failed for v in verdicts)
    if specs:
        lines.append((f"regression gate: {failed} regression(s) in {len(verdicts)} comparison(s)", True) if failed
                     else (f"regression gate: passed ({len(verdicts)} comparison(s))", False))
    return lines


def _tests(test: Tests) -> list[TestResult]:
    """One side's stored tests, one per run that holds the test."""
    return [t for t in (test if isinstance(test, (list, tuple)) else [test]) if t is not None]


def _measurements(test: Tests) -> list[Measurement]:
    return [t.measurement for t in _tests(test) if t.measurement is not None]


def _run_samples(runs: list[Measurement], name: str, non_empty: bool = False) -> list[list[float]] | None:
    """The raw samples of `name` of every run that stored them (None when no run did)."""
    found = [values for values in (_samples(m, name) for m in runs) if values is not None and (values or not non_empty)]
    return found or None


def _stored_value(runs: list[Measurement], name: str) -> float | None:
    """The stored value of one run; the geometric mean over several (None when a run lacks a positive one)."""
    values = [m.metrics[name].value if name in m.metrics else None for m in runs]
    if len(values) == 1:
        return values[0]
    if not values or any(not isinstance(v, (int, float)) or v <= 0 for v in values):
        return None
    return float(np.exp(np.mean(np.log(values))))


def _stores(runs: Runs) -> list[ResultsStore]:
    return [runs] if isinstance(runs, ResultsStore) else list(runs)


def _samples(measurement: Measurement, name: str) -> list[float] | None:
    values = measurement.samples.get(name)
    return None if values is None else [float(v) for v in values]


def _is_headline_sample(test: TestResult, name: str) -> bool:
    metric = test.metric(name)
    return metric is not None and metric.headline and metric.kind == "sample"


# ---- the run's gate (plugin.py holds it on the session) -------------------------------------------

@dataclass
class RegressionGate:
    """--vllm-compare's stored run(s) and --vllm-compare-fail's specs, for this pytest run."""

    olds: list[ResultsStore]
    specs: list[GateSpec]

    @property
    def label(self) -> str:
        """The compared run directories, as the messages name them."""
        return runs_label([store.root for store in self.olds])

    def check(self, new_test: TestResult, config: str, test_key: str,
              new_result: ConfigResult | None = None) -> list[GateVerdict]:
        """Judge one test just measured against the OLD runs' same config/test; the verdicts go on its record.
        `new_result`: this run's stored config (its deployment says where it ran)."""
        old_results = [old.load_config(config) for old in self.olds]
        old_tests = [r.tests.get(test_key) if r else None for r in old_results]
        verdicts = judge_test(config, test_key, old_tests, new_test, self.specs)
        machines = machines_note(old_results, [new_result]) if new_result is not None else ""
        for verdict in verdicts:
            verdict.machines = machines
        if verdicts:
            new_test.regression_gate = GateRecord(compared_with=self.label, verdicts=verdicts)
        return verdicts

    def manifest_entry(self, new: ResultsStore) -> GateRecord:
        """What the run manifest keeps of the comparison (the reports show it)."""
        verdicts = compare_runs(self.olds, new, self.specs)
        return GateRecord(compared_with=self.label, compared_runs=[str(old.root) for old in self.olds],
                          specs=[s.text for s in self.specs], failed=sum(v.failed for v in verdicts),
                          verdicts=verdicts)


def run_dirs(values: Iterable[str] | str | None) -> list[str]:
    """--vllm-compare values: repeated options, each maybe comma-separated; the ini key also splits on spaces."""
    if isinstance(values, str):
        return [part for part in re.split(r"[\s,]+", values) if part]
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]

