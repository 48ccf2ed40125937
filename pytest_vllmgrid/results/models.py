"""The typed result model: what a run stores, what the judge fills in and what reports and the gate read.

One `ConfigResult` per config (`<config>.json`), holding one `TestResult` per benchmark, each with its
`Measurement` (metrics with unit, direction, CI and validity; raw samples; the server's /metrics delta;
free-form context) and the `Verdict`s the judge gave it. The JSON on disk is these models' dump; older
files are read through `results.schema.upgrade`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from pytest_vllmgrid.numbers import fmt_cell, fmt_number
from pytest_vllmgrid.stats import RatioEstimate, summarize

SCHEMA_VERSION = 2
LOWER = "lower"
HIGHER = "higher"
Better = Literal["lower", "higher"]
Validity = Literal["valid", "inconclusive", "invalid"]
COUNT_UNITS = ("requests", "tokens")
JsonObject = dict[str, JsonValue]
"""Free-form, JSON-safe context (server windows, telemetry, settings) that no judge reads by key."""


def json_object(data: Mapping[str, object]) -> JsonObject:
    """A mapping as plain JSON values (tuples become lists, dataclass dumps stay as they are)."""
    return json.loads(json.dumps(data))


_SUMMARY_FIELDS = ("n", "mean", "stdev", "min", "max", "p50", "p90", "p95", "p99", "ci_low", "ci_high", "method")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class Metric(_Model):
    """One figure of a measurement: a summarised sample (`kind="sample"`) or a derived value."""

    kind: Literal["sample", "value"]
    unit: str = ""
    better: Better | None = None
    headline: bool = False
    n: int | None = Field(None, description="the units the figure rests on (requests, pairs, windows...)")
    value: float | None = Field(None, description="a derived number's value (kind value only)")
    mean: float | None = None
    stdev: float | None = Field(None, description="sample standard deviation (ddof=1)")
    min: float | None = None
    max: float | None = None
    p50: float | None = Field(None, description="median: what a sample is ranked and judged by")
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    ci_low: float | None = Field(None, description="95% CI of the median (sample) or of the value")
    ci_high: float | None = None
    method: str = ""
    exact: bool = False  # a count or a server counter: no sampling interval to carry
    validity: Validity = "valid"
    validity_reason: str | None = None

    def point(self, stat: str = "p50") -> float | None:
        """The number a metric is ranked and compared by: a sample's `stat` (p50 by default), else its value."""
        if self.kind == "sample":
            return self.p50 if stat == "value" else getattr(self, stat, None)
        own = getattr(self, stat, None) if stat in _SUMMARY_FIELDS and stat not in ("p50", "method") else None
        return own if isinstance(own, (int, float)) else self.value

    @property
    def ci(self) -> tuple[float, float] | None:
        """The 95 % CI of the point (median or value), when it has one."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low, self.ci_high


VerdictStatus = Literal["pass", "fail", "inconclusive", "invalid", "not judged"]


class Verdict(_Model):
    """One bound judged on one config's metric: pass and fail are decided by the figure's CI, not its point;
    inconclusive when the CI straddles the bound, invalid when the figure's method failed."""

    metric: str
    config: str
    passed: bool | None  # True only for pass, False only for fail
    message: str
    status: VerdictStatus | None = None  # None in schema-1 files: derived from `passed`
    value: float | None = None
    bound: float | None = None
    baseline_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @model_validator(mode="after")
    def _status_from_passed(self) -> Verdict:
        if self.status is None:
            self.status = "pass" if self.passed is True else "fail" if self.passed is False else "not judged"
        return self


class GeneratedOutput(_Model):
    """One prompt's generated answer, kept so another config's answers can be compared with it (correctness.py)."""

    prompt_id: str  # digest of the request (messages, max_tokens): the same prompt across configs and runs
    text: str = ""  # reasoning and content as the server returned them, joined
    token_ids: list[int] | None = None  # the generated token ids (None: the server did not return them)
    finish_reason: str | None = None
    error: str | None = None  # why no answer came (the request failed)


class Measurement(_Model):
    """What one benchmark measured on one config."""

    method: str
    metrics: dict[str, Metric] = Field(default_factory=dict)
    samples: dict[str, list[float]] = Field(default_factory=dict)
    server: JsonObject | None = None
    info: JsonObject = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    settings: JsonObject | None = None
    telemetry_series: JsonObject | None = None
    outputs: list[GeneratedOutput] = Field(default_factory=list)  # answers other configs are compared with

    def metric(self, name: str) -> Metric | None:
        """A metric by name, or None."""
        return self.metrics.get(name)

    def add_sample(self, name: str, values: Sequence[float | None], unit: str, better: Better | None, *,
                   headline: bool = False) -> Metric:
        """Summarise a sample (n, mean, percentiles, median CI) and keep its raw values (the gate reads them)."""
        clean = [float(v) for v in values if v is not None]
        self.samples[name] = [round(v, 6) for v in clean]
        summary = summarize(clean)
        self.metrics[name] = Metric(kind="sample", unit=unit, better=better, headline=headline,
                                    **{f: getattr(summary, f) for f in _SUMMARY_FIELDS})
        return self.metrics[name]

    def add_value(self, name: str, value: float | None, unit: str, better: Better | None = None, *,
                  headline: bool = False, ci: tuple[float, float] | None = None, method: str = "",
                  n: int | None = None, exact: bool | None = None) -> Metric:
        """Add a derived number (rate, ratio, percentage), with its CI when it has one. Counts (unit requests or
        tokens) are exact unless said otherwise; a server counter's figure is passed `exact=True`."""
        self.metrics[name] = Metric(kind="value", value=value, unit=unit, better=better, headline=headline,
                                    ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None, method=method,
                                    n=n, exact=unit in COUNT_UNITS if exact is None else exact)
        return self.metrics[name]

    def add_ratio(self, name: str, estimate: RatioEstimate, unit: str, better: Better | None, *,
                  headline: bool = False) -> Metric:
        """A bootstrap ratio estimate as a metric."""
        return self.add_value(name, estimate.value, unit, better, headline=headline,
                              ci=(estimate.ci_low, estimate.ci_high), method=estimate.method,
                              n=min(estimate.n_numerator, estimate.n_denominator))

    def telemetry(self) -> JsonObject:
        """This benchmark's telemetry summary and alerts (empty when none was sampled)."""
        tele = self.info.get("telemetry")
        return tele if isinstance(tele, dict) else {}


class GateVerdict(_Model):
    """One metric of one config judged OLD -> NEW by the regression gate (gate.py computes it)."""

    config: str
    metric: str  # TEST.METRIC as stored
    statistic: str
    status: str  # regression | ok | not judged | missing | info; only regression fails
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
    machines: str = ""  # OLD and NEW measured on different machines: which ran where (results.placement_note)
    spec: str | None = None
    runs_old: int = 1  # stored runs judged on each side (several: runs as the unit)
    runs_new: int = 1
    method: str = ""  # how the change and its CI were computed (stats.Comparison.method)

    @property
    def failed(self) -> bool:
        """True when this verdict fails the gate."""
        return self.status == "regression"

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
        if self.status == "regression":
            return "REGRESSION"
        if self.status in ("not judged", "missing"):
            return f"{self.status}: {self.note}"
        worse = self.change_pct is not None and (self.change_pct < 0) == self.higher_is_better
        trend = ("no significant change" if not self.significant
                 else "significantly worse" if worse else "significantly better")
        if self.status != "ok":
            return trend
        return f"ok, {trend} (within {self.allowed_text()})" if self.significant and worse else f"ok, {trend}"

    def message(self) -> str:
        """One line: metric, old, new, change with its CI, allowed change, verdict."""
        values = ""
        if self.old is not None and self.new is not None:
            values = f" {fmt_number(self.old)} -> {fmt_cell(self.new, self.unit)}"
        change = f" ({self.change_text()})" if self.change_pct is not None else ""
        allowed = f", allowed {self.allowed_text()}" if self.allowed_pct is not None else ""
        machines = f" ({self.machines})" if self.machines else ""
        return (f"{self.config}: {self.metric} {self.statistic}{values}{change}{allowed}: {self.verdict_text()}"
                f"{machines}")


def gate_machine_notes(verdicts: Sequence[GateVerdict]) -> list[str]:
    """One line per config whose OLD and NEW runs were measured on different machines."""
    return list(dict.fromkeys(f"{v.config}: {v.machines}" for v in verdicts if v.machines))


class GateRecord(_Model):
    """The regression gate's verdicts on one test (or, in the manifest, on the whole run)."""

    compared_with: str
    verdicts: list[GateVerdict] = Field(default_factory=list)
    compared_runs: list[str] = Field(default_factory=list)
    specs: list[str] = Field(default_factory=list)
    failed: int | None = None


class TestResult(_Model):
    """One benchmark test of one config: its outcome, measurement, verdicts and the seeds' flat fields."""

    __test__ = False  # not a pytest test class
    status: str = "unknown"  # passed | failed | error | skipped | xfailed ... (pytest's outcome)
    message: str | None = None
    duration_s: float | None = None
    measurement: Measurement | None = None
    regression_gate: GateRecord | None = None
    thresholds: list[Verdict] = Field(default_factory=list)
    # the seeds' schema (002): KV-cache figures at the test's top level
    ttft_cache_miss_ms: float | None = Field(None, description="seeds' name of kv_cache.ttft_miss_ms p50")
    ttft_cache_hit_ms: float | None = Field(None, description="seeds' name of kv_cache.ttft_hit_ms p50")
    cache_acceleration: float | None = Field(None, description="seeds' name of kv_cache.acceleration")
    gain_percentage: float | None = Field(None, description="seeds' name of kv_cache.gain_pct")

    def metric(self, name: str) -> Metric | None:
        """A metric of this test's measurement, or None."""
        return self.measurement.metrics.get(name) if self.measurement else None

    def warnings(self) -> list[str]:
        """The measurement's warnings (none without a measurement)."""
        return self.measurement.warnings if self.measurement else []


class ErrorLine(_Model):
    """An error recorded against a config, with when it happened."""

    time: str
    message: str


EFFECTIVE_SOURCES = {"log": "startup log", "metrics": "/metrics", "models": "/v1/models"}
FlagStatus = Literal["confirmed", "mismatch", "not_verifiable", "seen"]


def flag_value_text(value: JsonValue) -> str:
    """A flag's value as a grid spells it: true/false, numbers, bare strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


class FlagCheck(_Model):
    """One vLLM flag: the grid's value (None: not stated) and what each source showed the server runs."""

    flag: str
    requested: JsonValue = None
    seen: dict[str, JsonValue] = Field(default_factory=dict)  # source (EFFECTIVE_SOURCES) -> value it showed
    status: FlagStatus

    def seen_text(self) -> str:
        """`false (startup log, /metrics)`; sources that disagree are listed value by value."""
        by_value: dict[str, list[str]] = {}
        for source, value in self.seen.items():
            by_value.setdefault(flag_value_text(value), []).append(EFFECTIVE_SOURCES.get(source, source))
        return "; ".join(f"{value} ({', '.join(sources)})" for value, sources in by_value.items())

    def text(self) -> str:
        """`enable_prefix_caching requested true, seen false (startup log, /metrics)` or `block_size=16 (/metrics)`."""
        if self.status == "mismatch":
            return f"{self.flag} requested {flag_value_text(self.requested)}, seen {self.seen_text()}"
        if self.status == "not_verifiable":
            return self.flag
        return f"{self.flag}={self.seen_text()}"


class EffectiveConfig(_Model):
    """What the server showed it runs after readiness, per source, and each flag checked against the grid."""

    sources: dict[str, JsonObject] = Field(default_factory=dict)  # source -> what it showed
    unavailable: dict[str, str] = Field(default_factory=dict)  # source -> why it showed nothing
    checks: list[FlagCheck] = Field(default_factory=list)

    def with_status(self, status: str) -> list[FlagCheck]:
        """The checks of one status, in grid order."""
        return [c for c in self.checks if c.status == status]

    def summary(self) -> str:
        """One line: mismatches, confirmations, stated flags no source shows, unstated flags seen, missing sources."""
        parts = []
        for status, label in (("mismatch", "MISMATCH"), ("confirmed", "confirmed"),
                              ("not_verifiable", "not verifiable"), ("seen", "not stated, seen")):
            checks = self.with_status(status)
            if checks:
                parts.append(f"{label}: " + ", ".join(c.text() for c in checks))
        if self.unavailable:
            parts.append("not read: " + ", ".join(f"{EFFECTIVE_SOURCES.get(s, s)} ({why})"
                                                  for s, why in self.unavailable.items()))
        return "; ".join(parts) or "nothing seen"


class DeploymentRecord(BaseModel):
    """How a config was deployed; deployers add their own facts (pid, port, container, command...)."""

    model_config = ConfigDict(extra="allow")
    status: str = "pending"  # pending | success | failed
    startup_time_seconds: float | None = None
    health_check_attempts: int | None = None
    log_path: str | None = None
    error: JsonObject | None = None
    died: JsonObject | None = None
    teardown_seconds: float | None = None
    worker: str | None = None
    gpu_devices: list[str] | None = None
    host: str | None = None  # the machine the server ran on; None in results from before it was recorded
    gpu_uuids: list[str] | None = None  # NVML UUIDs of the GPUs the server was given; None where NVML was not read
    effective: EffectiveConfig | None = None  # what the server showed it runs; None in results from before it was read

    def extra_facts(self) -> JsonObject:
        """The deployer-specific fields."""
        return dict(self.model_extra or {})

    def machine(self) -> Machine | None:
        """Where the config was measured, or None when the result does not say (older runs)."""
        return Machine(host=self.host, gpu_uuids=self.gpu_uuids) if self.host else None


class Machine(_Model):
    """A host and the GPUs (by NVML UUID) a server ran on: two figures measured on different ones also compare
    the machines."""

    host: str
    gpu_uuids: list[str] | None = None

    def key(self) -> tuple[str, tuple[str, ...]]:
        """What makes two machines the same: the host and the set of GPU UUIDs."""
        return self.host, tuple(sorted(self.gpu_uuids or []))

    def text(self) -> str:
        """`h200-a (GPU-8c3f5e1a)`; `h200-a (GPU UUIDs not read)` without NVML."""
        gpus = ", ".join(uuid[:12] for uuid in self.gpu_uuids) if self.gpu_uuids else "GPU UUIDs not read"
        return f"{self.host} ({gpus})"


def placement_note(machines: Mapping[str, Machine | None]) -> str:
    """'' when every config whose machine is known ran on the same one; else which configs ran where (the
    configs whose machine was not recorded named too), for a report or a gate to show beside the comparison."""
    known = {name: m for name, m in machines.items() if m is not None}
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for name, machine in known.items():
        groups.setdefault(machine.key(), []).append(name)
    unknown = [name for name, m in machines.items() if m is None]
    if len(groups) > 1:
        where = "; ".join(f"{', '.join(names)} on {known[names[0]].text()}" for names in groups.values())
        missing = f"; {', '.join(unknown)}: machine not recorded" if unknown else ""
        return f"measured on different machines: {where}{missing}: the comparison crosses machines"
    if groups and unknown:
        return (f"{', '.join(unknown)}: machine not recorded (an older result), so whether the comparison with "
                f"{next(iter(known.values())).text()} crosses machines cannot be told")
    return ""


class ConfigResult(_Model):
    """One config's stored result (the seeds' schema, extended)."""

    schema_version: int = SCHEMA_VERSION
    config_name: str
    timestamp: str
    status: str = "pending"  # pending | running | complete | failed | interrupted | skipped
    config_hash: str | None = None
    config_params: JsonObject = Field(default_factory=dict)
    config: JsonObject = Field(default_factory=dict)
    deployment: DeploymentRecord = Field(default_factory=DeploymentRecord)
    tests: dict[str, TestResult] = Field(default_factory=dict)
    errors: list[ErrorLine] = Field(default_factory=list)
    server_version: str | None = None
    updated: str | None = None
    wall_seconds: float | None = None
    skip_reason: str | None = None

    @property
    def settled(self) -> bool:
        """True once the config will not change any more (complete, failed, interrupted or skipped)."""
        return self.status in ("complete", "failed", "interrupted", "skipped")

    def failure(self) -> str | None:
        """Why this config's figures must not be ranked or recommended, or None."""
        if self.deployment.status == "failed":
            message = (self.deployment.error or {}).get("message", "unknown reason")
            return f"deployment failed: {message}"
        if self.deployment.died:  # its numbers cover part of the benchmarks only
            return f"server died during the benchmarks ({self.deployment.died.get('reason')})"
        if self.status == "interrupted":
            return "interrupted before it finished"
        return None

    def verdicts(self) -> list[Verdict]:
        """Every threshold verdict of every test."""
        return [v for test in self.tests.values() for v in test.thresholds]


class ResumeRecord(BaseModel):
    """One --resume of a run: when it started, its command line (secrets masked), the configs it ran again."""

    model_config = ConfigDict(extra="allow")
    time: str
    argv: list[str] = Field(default_factory=list)
    configs: list[str] = Field(default_factory=list)


class RunManifest(BaseModel):
    """The run as a whole: grid, versions, hardware, times and status (`started`/`argv`: the first session's)."""

    model_config = ConfigDict(extra="allow")
    schema_version: int = SCHEMA_VERSION
    status: str | None = None  # running | complete | interrupted | failed
    started: str | None = None
    ended: str | None = None
    grid_file: str | None = None
    grid_hash: str | None = None
    grid_name: str | None = None
    baseline: str | None = None
    deployer: str | None = None
    model: str | None = None
    primary_metric: str | None = None  # the grid's, so a report rebuilt from the directory ranks the same
    configs: dict[str, JsonObject] = Field(default_factory=dict)
    package_version: str | None = None
    vllm_version: str | None = None
    python: str | None = None
    hardware: JsonObject = Field(default_factory=dict)
    argv: list[str] = Field(default_factory=list)
    goal: list[str] = Field(default_factory=list)  # the thresholds file's goal metrics (the report judges them)
    profiles: dict[str, dict[str, float]] = Field(default_factory=dict)  # the thresholds file's use-case weights
    noise_from: list[str] = Field(default_factory=list)  # --vllm-noise-from: stored runs that measured the noise
    regression_gate: GateRecord | None = None
    resumes: list[ResumeRecord] = Field(default_factory=list)  # each --resume of the run, in order
