"""Recommendations per use case (seed 002's four scenarios) and the recommended config's deployment checklist.

Each use case weighs a few figures (weight 0: shown, not scored); a config is scored only on valid figures, the
best-scored one is named with the figures behind it, and "to validate" says which of them were invalid, not
conclusive or failed. Generic production is the thresholds file's `profiles.generic_production` (a default
when it sets none); every other profile there is one more use case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from pytest_vllmgrid.numbers import fmt_number as _fmt
from pytest_vllmgrid.results import HIGHER, LOWER, ConfigResult, Metric
from pytest_vllmgrid.thresholds import METRICS

PASSED, FAILED, NOT_CONCLUSIVE = {"passed"}, {"failed", "error"}, {"inconclusive", "xfailed"}
GENERIC = "generic_production"


@dataclass(frozen=True)
class Criterion:
    """One figure of a use case: `test.metric` (every parametrized test of it, or one `test[id].metric`)."""

    pattern: str
    weight: float = 1.0
    better: str | None = None  # overrides the metric's own direction (a hit rate is stored without one)
    floor: float | None = None  # below it the pick is still "to validate", however it ranks (no bound needed)


TOOL_SUCCESS_FLOOR_PCT = 80.0  # an agent whose calls fail more than 1 in 5 is not deployable, whatever ranks first
USE_CASES: list[tuple[str, str, list[Criterion]]] = [
    ("conversational", "Conversational agents", [
        Criterion("long_conversation.ttft_ms"), Criterion("long_conversation.server_hit_rate_pct", 1.0, HIGHER),
        Criterion("long_conversation.last_turns_ttft_ms", 0.0)]),
    ("long_reasoning", "Long reasoning", [Criterion("reasoning.decode_tok_s"), Criterion("reasoning.answer_ttft_ms")]),
    ("tool_calling", "Tool calling", [Criterion("tool_calling.success_rate_pct", 2.0, HIGHER, TOOL_SUCCESS_FLOOR_PCT),
                                      Criterion("tool_calling.e2e_ms")]),
]
DEFAULT_GENERIC = {"throughput.output_tok_s": 1.0, "ttft.ttft_ms": 1.0}  # plus the run's primary metric


class _Outcome(Protocol):
    status: str
    message: str | None


class _Row(Protocol):
    """What a report row offers (report.model.ConfigRow)."""

    name: str
    failure: str | None
    metrics: Mapping[str, Metric]
    tests: Mapping[str, _Outcome]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UseCase(_Model):
    """One use case: the config it recommends (None: none has valid figures), the figures behind it, and what is
    still to validate."""

    key: str
    title: str
    config: str | None = None
    score: float | None = None  # 1.0 = best on every weighted figure
    figures: list[str] = Field(default_factory=list)
    to_validate: list[str] = Field(default_factory=list)
    weights: dict[str, float] = Field(default_factory=dict)
    note: str = ""  # why nothing is named, or where the weights came from

    def line(self) -> str:
        """`Title: config (figures); to validate: ...` in one line."""
        who = self.config or "to validate"
        text = f"{self.title}: {who}"
        text += f" ({'; '.join(self.figures)})" if self.figures else ""
        text += f" — to validate: {'; '.join(self.to_validate)}" if self.to_validate else ""
        return text + (f" [{self.note}]" if self.note else "")


class ChecklistItem(_Model):
    """One benchmark family (or GPU telemetry) on the recommended config."""

    family: str
    done: bool
    state: str  # passed on valid figures | failed | not conclusive | figures not valid | skipped | not run | ...

    def line(self) -> str:
        return f"[{'x' if self.done else ' '}] {self.family}: {self.state}"


class Checklist(_Model):
    """The deployment checklist of the recommended config."""

    config: str
    items: list[ChecklistItem] = Field(default_factory=list)


def _keys(row: _Row, pattern: str) -> list[str]:
    """The row's metric keys a pattern names: `test.metric` matches every `test[...]`."""
    test, _, metric = pattern.rpartition(".")
    return [k for k in row.metrics if k == pattern or ("[" not in test and k.startswith(test + "[")
                                                       and k.endswith("]." + metric))]


def _test_key(metric_key: str) -> str:
    return metric_key.rpartition(".")[0]


def _relative(value: float, best: float, better: str) -> float:
    """value's share of the best (1.0 = best) in the metric's direction."""
    if better == HIGHER:
        return value / best if best else 1.0
    return best / value if value else 1.0


def _figure_text(pattern: str, metrics: list[Metric]) -> str:
    """`reasoning.decode_tok_s 120 tok/s [95% CI 118–121]`, or a mean over a pattern's several tests."""
    values = [v for m in metrics if (v := m.point()) is not None]
    unit = metrics[0].unit
    if len(values) > 1:
        mean = sum(values) / len(values)
        return f"{pattern} mean {_fmt(mean)} {unit} ({len(values)} tests, {_fmt(min(values))}–{_fmt(max(values))})"
    text = f"{pattern} {_fmt(values[0]) if values else '–'} {unit}".rstrip()
    ci = metrics[0].ci
    return text + (f" [95% CI {_fmt(ci[0])}–{_fmt(ci[1])}]" if ci is not None else "")


def choose(key: str, title: str, criteria: list[Criterion], rows: Sequence[_Row], note: str = "") -> UseCase:
    """The best-scored config on valid figures, its figures, and what is still to validate."""
    weights = {c.pattern: c.weight for c in criteria}
    case = UseCase(key=key, title=title, weights=weights, note=note)
    scored = [c for c in criteria if c.weight > 0]
    candidates = [r for r in rows if not r.failure and all(_keys(r, c.pattern) for c in scored)]
    if not candidates:
        case.note = "; ".join(filter(None, [f"not measured in this run ({', '.join(c.pattern for c in scored)})",
                                            note]))
        return case
    valid = [r for r in candidates if all(r.metrics[k].validity == "valid" and r.metrics[k].point() is not None
                                          for c in scored for k in _keys(r, c.pattern))]
    if not valid:
        first = candidates[0]
        case.to_validate = [f"{first.name}: {k} {first.metrics[k].validity}: {first.metrics[k].validity_reason}"
                            for c in scored for k in _keys(first, c.pattern) if first.metrics[k].validity != "valid"]
        case.to_validate.insert(0, "no config has valid figures for it")
        return case
    scores = {r.name: _score(r, scored, valid) for r in valid}
    best = max(valid, key=lambda r: scores[r.name])
    case.config, case.score = best.name, round(scores[best.name], 3)
    for c in criteria:
        keys = _keys(best, c.pattern)
        if keys:
            case.figures.append(_figure_text(c.pattern, [best.metrics[k] for k in keys]))
    case.to_validate = _to_validate(best, [k for c in criteria for k in _keys(best, c.pattern)])
    for c in criteria:
        low = [k for k in _keys(best, c.pattern) if c.floor is not None
               and (v := best.metrics[k].point()) is not None and v < c.floor]
        if low:
            worst = min(best.metrics[k].point() or 0.0 for k in low)
            case.to_validate.append(f"{c.pattern} below {_fmt(c.floor)} {best.metrics[low[0]].unit} on {len(low)} of "
                                    f"{len(_keys(best, c.pattern))} tests (lowest {_fmt(worst)}): the best measured "
                                    "is not good enough")
    return case


def _score(row: _Row, criteria: list[Criterion], rows: list[_Row]) -> float:
    """Weighted mean over criteria of the row's share of the best value, averaged over each criterion's tests."""
    total = weight = 0.0
    for c in criteria:
        better = c.better or row.metrics[_keys(row, c.pattern)[0]].better
        if better not in (HIGHER, LOWER):
            continue
        shares = []
        for k in _keys(row, c.pattern):
            values = [v for r in rows if k in r.metrics and (v := r.metrics[k].point()) is not None]
            pick = max if better == HIGHER else min
            shares.append(_relative(row.metrics[k].point() or 0.0, pick(values), better))
        total += c.weight * sum(shares) / len(shares)
        weight += c.weight
    return total / weight if weight else 0.0


def _to_validate(row: _Row, metric_keys: list[str]) -> list[str]:
    """The figures behind a pick that are not valid, and their tests that failed or were not conclusive."""
    out = [f"{k} {row.metrics[k].validity}: {row.metrics[k].validity_reason}" for k in metric_keys
           if row.metrics[k].validity != "valid"]
    for test in dict.fromkeys(_test_key(k) for k in metric_keys):
        outcome = row.tests.get(test)
        if outcome is not None and outcome.status in FAILED | NOT_CONCLUSIVE:
            word = "failed" if outcome.status in FAILED else "not conclusive"
            out.append(f"{test} {word}: {_short(outcome.message, row.name)}")
    return out


def _short(message: str | None, config: str = "") -> str:
    """A test's message without pytest's exception prefix and the config's name, cut to one readable clause."""
    text = (message or "").split("\n", 1)[0]
    for prefix in ("AssertionError: ", "_pytest.outcomes.XFailed: ", "Failed: ", "not conclusive: ", f"{config}: "):
        text = text.removeprefix(prefix) if prefix != ": " else text
    return text if len(text) <= 200 else text[:197] + "..."


def use_cases(rows: Sequence[_Row], primary: str | None, profiles: Mapping[str, Mapping[str, float]]) -> list[UseCase]:
    """Seed 002's use cases, then generic production and any other profile of the thresholds file."""
    out = [choose(key, title, criteria, rows) for key, title, criteria in USE_CASES]
    generic = profiles.get(GENERIC)
    note = "weights from the thresholds file's profiles.generic_production"
    if not generic:
        generic = {**({primary: 1.0} if primary else {}), **DEFAULT_GENERIC}
        note = "default weights; set profiles.generic_production in the thresholds file"
    out.append(choose(GENERIC, "Generic production", [Criterion(m, w) for m, w in generic.items()], rows, note))
    for name, weights in profiles.items():
        if name != GENERIC:
            out.append(choose(name, f"Profile {name}", [Criterion(m, w) for m, w in weights.items()], rows,
                              "weights from the thresholds file"))
    return out


def checklist(row: _Row, rows: Sequence[_Row], result: ConfigResult | None) -> Checklist:
    """Per benchmark family on this config: passed on valid figures, failed, not conclusive or not run; and
    whether GPU telemetry was recorded."""
    families = list(dict.fromkeys([_family(k) for r in rows for k in r.tests] + [f for f in METRICS if f != "gpu"]))
    items = [_family_item(row, family, rows) for family in families]
    items.append(_telemetry_item(result))
    return Checklist(config=row.name, items=items)


def _family(test_key: str) -> str:
    return test_key.split("[", 1)[0]


def _family_item(row: _Row, family: str, rows: Sequence[_Row]) -> ChecklistItem:
    keys = [k for k in row.tests if _family(k) == family]
    if not keys:
        elsewhere = [r.name for r in rows if any(_family(k) == family for k in r.tests)]
        where = f"not run on this config (ran on {', '.join(elsewhere)})" if elsewhere else "not run in this run"
        return ChecklistItem(family=family, done=False, state=where)
    statuses = {k: row.tests[k].status for k in keys}
    failed = [k for k, s in statuses.items() if s in FAILED]
    if failed:
        return ChecklistItem(family=family, done=False, state="failed: " + "; ".join(
            f"{k}: {_short(row.tests[k].message, row.name)}" for k in failed))
    unsure = [k for k, s in statuses.items() if s in NOT_CONCLUSIVE]
    if unsure:
        return ChecklistItem(family=family, done=False, state="not conclusive: " + "; ".join(
            f"{k}: {_short(row.tests[k].message, row.name)}" for k in unsure))
    skipped = [k for k, s in statuses.items() if s not in PASSED]
    if skipped:
        return ChecklistItem(family=family, done=False, state=f"{statuses[skipped[0]]}: " + "; ".join(
            f"{k}: {_short(row.tests[k].message, row.name)}" for k in skipped))
    invalid = [k for k, m in row.metrics.items() if _test_key(k) in keys and m.headline and m.validity != "valid"]
    if invalid:
        return ChecklistItem(family=family, done=False, state="passed, but figures not valid: " + ", ".join(invalid))
    return ChecklistItem(family=family, done=True, state=f"passed on valid figures ({len(keys)} test"
                                                         f"{'s' if len(keys) > 1 else ''})")


def _telemetry_item(result: ConfigResult | None) -> ChecklistItem:
    """GPU telemetry: recorded (with its alert count) or why not."""
    reasons: list[str] = []
    recorded = alerts = 0
    for test in (result.tests.values() if result else []):
        tele = test.measurement.telemetry() if test.measurement is not None else {}
        summary = tele.get("summary")
        if isinstance(summary, dict) and summary.get("available"):
            recorded += 1
            alerts += len(tele.get("alerts") or [])
        elif why := tele.get("unavailable") or (summary.get("reason") if isinstance(summary, dict) else None):
            reasons.append(str(why))
    if recorded:
        return ChecklistItem(family="GPU telemetry", done=True,
                             state=f"recorded on {recorded} tests, {alerts} alert{'s' if alerts != 1 else ''}")
    why = "; ".join(dict.fromkeys(reasons)) or "no test sampled the GPU"
    return ChecklistItem(family="GPU telemetry", done=False, state=f"not run: {why}")
