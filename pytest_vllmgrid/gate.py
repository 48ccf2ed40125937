"""Regression gate: `METRIC:PCT` specs judged on two runs' raw samples (bootstrap of the change).

A spec fails a config only when the stored metric got worse by more than PCT *and* the bootstrap
CI of the relative change excludes zero on the bad side (stats.compare). Pure functions return
verdicts; `configure_gate` / `check_regression` are the thin pytest glue plugin.py calls.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import pytest

from pytest_vllmgrid.grid import suggest
from pytest_vllmgrid.measurement import HIGHER
from pytest_vllmgrid.report.model import _fmt as fmt_number
from pytest_vllmgrid.results import ResultsStore
from pytest_vllmgrid.stats import MIN_SAMPLES_FOR_SIGNIFICANCE, STATISTICS, Comparison, compare
from pytest_vllmgrid.thresholds import METRICS, _unknown_metric

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
    problem = _unknown_metric(name) if "." in name else f"unknown metric {name!r}"
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


@dataclass
class GateVerdict:
    """One metric of one config judged OLD -> NEW."""

    config: str
    metric: str  # TEST.METRIC as stored
    statistic: str
    status: str
    allowed_pct: float | None = None  # None: shown, not gated
    unit: str = ""
    higher_is_better: bool = False
    old: float | None = None
    new: float | None = None
    change_pct: float | None = None
    ci_low_pct: float | None = None
    ci_high_pct: float | None = None
    n_old: int = 0
    n_new: int = 0
    significant: bool = False
    note: str = ""
    spec: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (stored in the results and the manifest)."""
        return asdict(self)

    @property
    def failed(self) -> bool:
        """True when this verdict fails the gate."""
        return self.status == REGRESSION

    def allowed_text(self) -> str:
        """`+10%` (lower is better) or `-5%` (higher is better); '' when not gated."""
        if self.allowed_pct is None:
            return ""
        return f"{'-' if self.higher_is_better else '+'}{self.allowed_pct:g}%"

    def change_text(self) -> str:
        """`+30.3% [95% CI +21.0% .. +40.2%]`, or ''."""
        if self.change_pct is None:
            return ""
        ci = "" if self.ci_low_pct is None else f" [95% CI {self.ci_low_pct:+.1f}% .. {self.ci_high_pct:+.1f}%]"
        return f"{self.change_pct:+.1f}%{ci}"

    def verdict_text(self) -> str:
        """The status in words, with its reason when nothing could be judged."""
        if self.status == REGRESSION:
            return "REGRESSION"
        if self.status in (NOT_JUDGED, MISSING):
            return f"{self.status}: {self.note}"
        worse = self.change_pct is not None and (self.change_pct < 0) == self.higher_is_better
        trend = ("no significant change" if not self.significant
                 else "significantly worse" if worse else "significantly better")
        if self.status != OK:
            return trend
        return f"ok, {trend} (within {self.allowed_text()})" if self.significant and worse else f"ok, {trend}"

    def message(self) -> str:
        """One line: metric, old, new, change with its CI, allowed change, verdict."""
        values = ""
        if self.old is not None and self.new is not None:
            values = f" {fmt_number(self.old)} -> {_cell(self.new, self.unit)}"
        change = f" ({self.change_text()})" if self.change_pct is not None else ""
        allowed = f", allowed {self.allowed_text()}" if self.allowed_pct is not None else ""
        return f"{self.config}: {self.metric} {self.statistic}{values}{change}{allowed}: {self.verdict_text()}"


def judge_metric(config: str, metric_key: str, old_test: dict[str, Any] | None, new_test: dict[str, Any] | None,
                 allowed_pct: float | None, statistic: str | None = None, spec: str | None = None) -> GateVerdict:
    """Judge one stored metric of one config: bootstrap of the relative change of its raw samples."""
    name = metric_key.rsplit(".", 1)[1]
    old_meas, new_meas = _measurement(old_test), _measurement(new_test)
    meta = (new_meas.get("metrics") or {}).get(name) or (old_meas.get("metrics") or {}).get(name) or {}
    stat = statistic or DEFAULT_STATISTIC
    verdict = GateVerdict(config=config, metric=metric_key, statistic=stat, status=MISSING, allowed_pct=allowed_pct,
                          unit=meta.get("unit", ""), higher_is_better=meta.get("better") == HIGHER, spec=spec)
    old_values, new_values = _samples(old_meas, name), _samples(new_meas, name)
    benchmark = metric_key.rsplit(".", 1)[0].split("[", 1)[0]
    proxy = RATE_PROXIES.get(f"{benchmark}.{name}") if old_values is None or new_values is None else None
    if proxy and _samples(old_meas, proxy) and _samples(new_meas, proxy):
        return _judge_rate(verdict, old_meas, new_meas, name, proxy)
    if not meta:
        verdict.note = "not measured in either run"
    elif old_values is None or new_values is None:
        side = "OLD" if old_values is None else "NEW"
        has_value = name in ((old_meas if side == "OLD" else new_meas).get("metrics") or {})
        verdict.status = NOT_JUDGED if has_value else MISSING
        verdict.note = (f"no raw samples stored in {side} (a single value cannot be tested)" if has_value
                        else f"not measured in {side}")
    elif not old_values or not new_values:
        verdict.status, verdict.note = NOT_JUDGED, "an empty sample (every request failed?)"
    else:
        try:
            result = compare(old_values, new_values, statistic=stat, higher_is_better=verdict.higher_is_better,
                             allowed_pct=allowed_pct or 0.0)
        except ValueError as exc:  # a zero baseline statistic, NaN in a sample
            verdict.status, verdict.note = NOT_JUDGED, str(exc)
            return verdict
        verdict.old, verdict.new = result.old, result.new
        _settle(verdict, result, result.change_pct, result.ci_low_pct, result.ci_high_pct)
    return verdict


def _judge_rate(verdict: GateVerdict, old_meas: dict[str, Any], new_meas: dict[str, Any], name: str,
                proxy: str) -> GateVerdict:
    """A rate without raw samples, judged as 1 / mean(proxy samples): a drop of a% is a rise of a/(100-a)%."""
    allowed = verdict.allowed_pct or 0.0
    allowed_rise = allowed / (100.0 - allowed) * 100.0 if allowed < 100 else float("inf")
    result = compare(_samples(old_meas, proxy), _samples(new_meas, proxy), statistic="mean",
                     higher_is_better=False, allowed_pct=allowed_rise)

    def inverse(pct: float) -> float:
        return 100.0 / (1.0 + pct / 100.0) - 100.0
    verdict.statistic = f"via 1/mean({proxy})"
    verdict.old = (old_meas.get("metrics") or {}).get(name, {}).get("value")
    verdict.new = (new_meas.get("metrics") or {}).get(name, {}).get("value")
    return _settle(verdict, result, inverse(result.change_pct), inverse(result.ci_high_pct),
                   inverse(result.ci_low_pct))


def _settle(verdict: GateVerdict, result: Comparison, change: float, ci_low: float, ci_high: float) -> GateVerdict:
    """Copy a comparison's change, CI and sizes into the verdict and decide its status."""
    verdict.change_pct, verdict.ci_low_pct, verdict.ci_high_pct = change, ci_low, ci_high
    verdict.n_old, verdict.n_new, verdict.significant = result.n_old, result.n_new, result.significant
    if min(result.n_old, result.n_new) < MIN_SAMPLES_FOR_SIGNIFICANCE:
        verdict.status = NOT_JUDGED
        verdict.note = (f"n={result.n_old}/{result.n_new}: fewer than {MIN_SAMPLES_FOR_SIGNIFICANCE} samples "
                        "on one side (raise --vllm-repetitions)")
    elif verdict.allowed_pct is None:
        verdict.status = INFO
    else:
        verdict.status = REGRESSION if result.regression else OK
    return verdict


def judge_test(config: str, test_key: str, old_test: dict[str, Any] | None, new_test: dict[str, Any] | None,
               specs: list[GateSpec]) -> list[GateVerdict]:
    """Verdicts for one config's test; without specs, every headline sample metric, shown not gated."""
    names = list(dict.fromkeys([*(_measurement(new_test).get("metrics") or {}),
                                *(_measurement(old_test).get("metrics") or {})]))
    verdicts = []
    for name in names:
        key = f"{test_key}.{name}"
        if specs:
            verdicts += [judge_metric(config, key, old_test, new_test, s.allowed_pct, s.statistic, s.text)
                         for s in specs if s.matches(test_key, name)]
        elif _is_headline_sample(new_test, name) or _is_headline_sample(old_test, name):
            verdicts.append(judge_metric(config, key, old_test, new_test, None))
    return verdicts


def compare_runs(old: ResultsStore, new: ResultsStore, specs: list[GateSpec]) -> list[GateVerdict]:
    """Every config of NEW that OLD has too (matched by name), every test, judged by the specs."""
    old_results = old.all_configs()
    verdicts = []
    for config, new_data in new.all_configs().items():
        old_data = old_results.get(config)
        if old_data is None:
            continue
        old_tests, new_tests = old_data.get("tests") or {}, new_data.get("tests") or {}
        for test_key in dict.fromkeys([*new_tests, *old_tests]):
            verdicts += judge_test(config, test_key, old_tests.get(test_key), new_tests.get(test_key), specs)
    return verdicts


def unmatched_specs(specs: list[GateSpec], verdicts: list[GateVerdict]) -> list[GateSpec]:
    """Specs that judged nothing (a gate that watches nothing must not pass silently)."""
    used = {v.spec for v in verdicts if v.status in (REGRESSION, OK)}
    return [s for s in specs if s.text not in used]


def unmatched_configs(old: ResultsStore, new: ResultsStore) -> tuple[list[str], list[str]]:
    """Config names only in OLD, and only in NEW."""
    old_names, new_names = set(old.all_configs()), set(new.all_configs())
    return sorted(old_names - new_names), sorted(new_names - old_names)


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
    rows = [[v.config, v.metric, v.statistic, _cell(v.old, v.unit), _cell(v.new, v.unit), v.change_text(),
             v.allowed_text() or "-", v.verdict_text()] for v in verdicts]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in [header, *rows]]


def summary_lines(verdicts: list[GateVerdict], specs: list[GateSpec], old_root: Path) -> list[tuple[str, bool]]:
    """(line, is_bad) pairs: the table, any spec that judged nothing, and the outcome."""
    lines = [(f"compared with {old_root}", False)]
    lines += [(line, "REGRESSION" in line) for line in render_table(verdicts)] if verdicts else [
        ("(no config/test in common)", True)]
    lines += [(f"WARNING: {s.text} judged nothing: no metric it names has >= {MIN_SAMPLES_FOR_SIGNIFICANCE} raw "
               "samples in both runs", True) for s in unmatched_specs(specs, verdicts)]
    failed = sum(v.failed for v in verdicts)
    if specs:
        lines.append((f"regression gate: {failed} regression(s) in {len(verdicts)} comparison(s)", True) if failed
                     else (f"regression gate: passed ({len(verdicts)} comparison(s))", False))
    return lines


def _measurement(test: dict[str, Any] | None) -> dict[str, Any]:
    return (test or {}).get("measurement") or {}


def _samples(measurement: dict[str, Any], name: str) -> list[float] | None:
    values = (measurement.get("samples") or {}).get(name)
    return None if values is None else [float(v) for v in values]


def _is_headline_sample(test: dict[str, Any] | None, name: str) -> bool:
    metric = (_measurement(test).get("metrics") or {}).get(name) or {}
    return bool(metric.get("headline")) and metric.get("kind") == "sample"


def _cell(value: float | None, unit: str = "") -> str:
    """A number with the report's precision and its unit, '-' when absent."""
    return "-" if value is None else f"{fmt_number(value)} {unit}".strip()


# ---- pytest glue (plugin.py calls these) -------------------------------------------------------

@dataclass
class RegressionGate:
    """--vllm-compare's old run and --vllm-compare-fail's specs, for this pytest run."""

    old: ResultsStore
    specs: list[GateSpec]

    def check(self, new: ResultsStore, config: str, test_key: str) -> list[GateVerdict]:
        """Judge one test just stored in NEW against OLD's same config/test; store the verdicts."""
        new_data = new.load_config(config) or {}
        new_test = (new_data.get("tests") or {}).get(test_key)
        if new_test is None:
            return []
        old_test = ((self.old.load_config(config) or {}).get("tests") or {}).get(test_key)
        verdicts = judge_test(config, test_key, old_test, new_test, self.specs)
        if verdicts:
            new.record_test(config, test_key, {"regression_gate": {
                "compared_with": str(self.old.root), "verdicts": [v.to_dict() for v in verdicts]}})
        return verdicts

    def manifest_entry(self, new: ResultsStore) -> dict[str, Any]:
        """What the run manifest keeps of the comparison (the reports show it)."""
        verdicts = compare_runs(self.old, new, self.specs)
        return {"compared_with": str(self.old.root), "specs": [s.text for s in self.specs],
                "failed": sum(v.failed for v in verdicts), "verdicts": [v.to_dict() for v in verdicts]}


GATE_KEY = pytest.StashKey[RegressionGate]()


def configure_gate(config: pytest.Config) -> None:
    """Read --vllm-compare / --vllm-compare-fail; mistakes are UsageErrors."""
    run_dir = config.getoption("vllm_compare", None)
    raw_specs = config.getoption("vllm_compare_fail", None)
    try:
        specs = parse_specs(raw_specs)
        if specs and not run_dir:
            raise GateError("--vllm-compare-fail needs --vllm-compare RUN_DIR (the stored run to compare with)")
        if run_dir:
            config.stash[GATE_KEY] = RegressionGate(open_run(run_dir, "--vllm-compare"), specs)
    except GateError as exc:
        raise pytest.UsageError(str(exc)) from None


def check_regression(config: pytest.Config, store: ResultsStore | None, cfg_name: str, test_key: str) -> None:
    """Fail the running test when its stored measurement regressed against the compared run."""
    gate = config.stash.get(GATE_KEY, None)
    if gate is None or store is None:
        return
    failed = [v for v in gate.check(store, cfg_name, test_key) if v.failed]
    if failed:
        pytest.fail(f"regression vs {gate.old.root}: " + "; ".join(v.message() for v in failed), pytrace=False)


def record_run(config: pytest.Config, store: ResultsStore) -> None:
    """Keep the whole comparison in the run manifest (the reports and the terminal summary show it)."""
    gate = config.stash.get(GATE_KEY, None)
    if gate is not None:
        store.update_manifest(regression_gate=gate.manifest_entry(store))


def terminal_lines(config: pytest.Config, store: ResultsStore | None) -> list[tuple[str, bool]]:
    """The comparison table for the terminal summary ([] without --vllm-compare)."""
    gate = config.stash.get(GATE_KEY, None)
    if gate is None or store is None:
        return []
    entry = store.manifest().get("regression_gate") or gate.manifest_entry(store)
    return summary_lines([GateVerdict(**v) for v in entry["verdicts"]], gate.specs, gate.old.root)
