"""Threshold files: absolute bounds and bounds relative to the baseline, judged with reasons."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import JsonValue

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pytest_vllmgrid.grid import document_problems, parse_yaml, suggest

# Metrics the shipped benchmarks produce: test -> metric names (threshold keys are "test.metric").
METRICS: dict[str, list[str]] = {
    "kv_cache": ["ttft_miss_ms", "ttft_hit_ms", "acceleration", "gain_pct", "server_hit_rate_pct",
                 "server_hits_during_miss", "server_hits_during_hit"],
    "ttft": ["ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "errors", "server_ttft_p50_ms", "server_ttft_mean_ms"],
    "throughput": ["output_tok_s", "request_rate", "ttft_ms", "tpot_ms", "e2e_ms", "goodput_pct", "goodput_req_s",
                   "errors", "server_ttft_p50_ms"],
    "long_conversation": ["ttft_ms", "tpot_ms", "e2e_ms", "first_turns_ttft_ms", "last_turns_ttft_ms",
                          "degradation_pct", "server_hit_rate_pct", "errors", "server_ttft_p50_ms"],
    "reasoning": ["ttft_ms", "answer_ttft_ms", "tpot_ms", "decode_tok_s", "server_decode_tok_s", "e2e_ms", "completion_tokens",
                  "reasoning_tokens", "content_tokens", "reasoning_share_pct", "errors", "server_ttft_p50_ms"],
    "tool_calling": ["success_rate_pct", "ttft_ms", "tpot_ms", "e2e_ms", "errors", "no_tool_call", "bad_json",
                     "unknown_function", "wrong_function", "schema_mismatch", "server_ttft_p50_ms"],
    "stability": ["ttft_ms", "ttft_short_ms", "ttft_long_ms", "tpot_ms", "e2e_ms", "degradation_pct",
                  "ttft_slope_pct_per_request", "errors", "timeouts", "server_ttft_p50_ms"],
    "greedy_outputs": ["exact_match_pct", "token_agreement_pct", "mismatched_prompts", "first_divergence_token",
                       "repeat_match_pct", "repeat_mismatched_prompts", "errors"],
    "structured_output": ["schema_valid_pct", "invalid_json", "schema_mismatch", "no_content", "truncated", "errors",
                          "ttft_ms", "tpot_ms", "e2e_ms", "server_ttft_p50_ms"],
    "tool_call_streaming": ["identical_pct", "differing_pairs", "pairs_without_calls", "errors", "ttft_ms",
                            "tpot_ms", "e2e_ms", "server_ttft_p50_ms"],
    "capacity": ["capacity_rate", "capacity_concurrency", "goodput_req_s", "goodput_pct", "request_rate",
                 "output_tok_s", "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "errors", "error_rate_pct",
                 "server_ttft_p50_ms"],
    "gpu": ["util_mean_pct", "vram_peak_pct", "temp_max_c", "power_mean_w"],
}
STATS = ("p50", "p90", "p95", "p99", "mean", "min", "max", "value")


class ThresholdError(Exception):
    """A thresholds-file mistake, naming the file, the metric, the field and what is allowed."""


class Bound(BaseModel):
    """Bounds on one metric; relative bounds are % vs the baseline config's value."""

    model_config = ConfigDict(extra="forbid")

    stat: Literal["p50", "p90", "p95", "p99", "mean", "min", "max", "value"] | None = None
    min: float | None = None
    max: float | None = None
    max_vs_baseline_pct: float | None = Field(None, description="value <= baseline * (1 + pct/100)")
    min_vs_baseline_pct: float | None = Field(None, description="value >= baseline * (1 + pct/100)")
    configs: list[str] = Field(default_factory=lambda: ["*"], description="config name globs it applies to")
    when: dict[str, JsonValue] = Field(default_factory=dict, description="only configs whose vLLM params equal these")
    skip_baseline: bool = True
    description: str = ""

    def applies_to(self, config: str, params: dict[str, JsonValue]) -> bool:
        """True for a config matching a name glob and every `when` parameter."""
        from pytest_vllmgrid.grid import canonical_param

        named = any(fnmatch.fnmatchcase(config, g) for g in self.configs)
        return named and all(params.get(canonical_param(k) or k) == v for k, v in self.when.items())

    @model_validator(mode="after")
    def _has_a_bound(self) -> Bound:
        if all(v is None for v in (self.min, self.max, self.max_vs_baseline_pct, self.min_vs_baseline_pct)):
            raise ValueError("give at least one of min, max, max_vs_baseline_pct, min_vs_baseline_pct")
        return self


class TelemetryRules(BaseModel):
    """GPU alert limits; `fail: true` turns alerts into failures."""

    model_config = ConfigDict(extra="forbid")

    vram_pct: float | None = 95.0
    temp_c: float | None = 85.0
    min_util_pct: float | None = 50.0  # checked only where a benchmark's load is meant to saturate the GPU
    fail: bool = False


class Slo(BaseModel):
    """The service-level objective the capacity search holds each load to (benchmarks/test_capacity.py)."""

    model_config = ConfigDict(extra="forbid")

    ttft_p95_ms: float | None = Field(None, gt=0, description="p95 time to first token, ms")
    itl_p95_ms: float | None = Field(None, gt=0, description="p95 inter-token latency (gap between token chunks), ms")
    max_error_rate_pct: float = Field(1.0, ge=0, le=100, description="failed requests, % of those sent")
    description: str = ""

    @model_validator(mode="after")
    def _has_a_latency(self) -> Slo:
        if self.ttft_p95_ms is None and self.itl_p95_ms is None:
            raise ValueError("give ttft_p95_ms, itl_p95_ms or both")
        return self

    def bounds(self) -> dict[str, Bound]:
        """The SLO as bounds on a load probe's metrics (metric name -> Bound), judged like any threshold."""
        out = {}
        if self.ttft_p95_ms is not None:
            out["ttft_ms"] = Bound(stat="p95", max=self.ttft_p95_ms)
        if self.itl_p95_ms is not None:
            out["itl_ms"] = Bound(stat="p95", max=self.itl_p95_ms)
        out["error_rate_pct"] = Bound(max=self.max_error_rate_pct)
        return out

    def text(self) -> str:
        """`p95 TTFT <= 500 ms, p95 ITL <= 100 ms, errors <= 1%`."""
        parts = [f"p95 TTFT <= {self.ttft_p95_ms:g} ms"] if self.ttft_p95_ms is not None else []
        parts += [f"p95 ITL <= {self.itl_p95_ms:g} ms"] if self.itl_p95_ms is not None else []
        return ", ".join(parts + [f"errors <= {self.max_error_rate_pct:g}%"])


def slo_problem(raw: object) -> str | None:
    """Why a thresholds file's `slo:` section is wrong, in one line naming the field (with a did-you-mean), or
    None."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return f"field 'slo' = {_short(raw)}: expected a mapping of {', '.join(Slo.model_fields)}"
    allowed = list(Slo.model_fields)
    for key in raw:
        if key not in allowed:
            return f"field 'slo.{key}': unknown SLO field{suggest(str(key), allowed)}; allowed: {', '.join(allowed)}"
    try:
        Slo.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(["slo", *map(str, err["loc"])])
        value = f" = {_short(err.get('input'))}" if err["loc"] else ""
        return f"field {where!r}{value}: {err['msg'].removeprefix('Value error, ')}"
    return None


class ThresholdsFile(BaseModel):
    """The whole thresholds file."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    thresholds: dict[str, Bound] = Field(default_factory=dict)
    goal: list[str] = Field(default_factory=list, description="metrics whose bounds all pass = goal met")
    profiles: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="use-case weights: profile name -> {test.metric: weight >= 0}; "
        "generic_production weighs the report's generic-production recommendation")
    telemetry: TelemetryRules = Field(default_factory=TelemetryRules)
    slo: Slo | None = Field(None, description="what the capacity search holds each load to")


@dataclass
class Thresholds:
    """A loaded thresholds file."""

    path: Path | None
    spec: ThresholdsFile

    def for_test(self, test_key: str, config: str, params: dict[str, JsonValue] | None = None) -> dict[str, Bound]:
        """Bounds on metrics of this test (key with or without its [params]) that apply to this config."""
        base = test_key.split("[", 1)[0]
        out = {}
        for key, bound in self.spec.thresholds.items():
            test, metric = key.rsplit(".", 1)
            if test in (test_key, base) and bound.applies_to(config, params or {}):
                out[metric] = bound
        return out


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Read and validate a thresholds file; unknown metrics and fields raise ThresholdError."""
    if path is None:
        return Thresholds(None, ThresholdsFile())
    path = Path(path)
    if not path.is_file():
        raise ThresholdError(f"thresholds file {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix.lower() == ".json" else parse_yaml(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, RecursionError) as exc:
        raise ThresholdError(f"thresholds file {path}: cannot parse: {str(exc).splitlines()[0][:200]}") from None
    if raw is None:
        raw = {}
    problems = document_problems(raw)
    if problems:
        raise ThresholdError(f"thresholds file {path}:\n  - " + "\n  - ".join(problems))
    if not isinstance(raw, dict):
        raise ThresholdError(f"thresholds file {path}: top level must be a mapping, got {type(raw).__name__}")
    if (problem := slo_problem(raw.get("slo"))) is not None:
        raise ThresholdError(f"thresholds file {path}: {problem}")
    try:
        spec = ThresholdsFile.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"field {loc!r} = {_short(err.get('input'))}: {err['msg']}")
        raise ThresholdError(f"thresholds file {path}:\n  - " + "\n  - ".join(lines)) from None
    problems = [p for key in list(spec.thresholds) + list(spec.goal) if (p := unknown_metric(key))]
    problems += profile_problems(spec.profiles)
    if problems:
        raise ThresholdError(f"thresholds file {path}:\n  - " + "\n  - ".join(problems))
    return Thresholds(path, spec)


def unknown_metric(key: str) -> str | None:
    """Why a `test.metric` key names nothing the benchmarks produce, or None."""
    if "." not in key:
        return f"metric {key!r}: expected TEST.METRIC, e.g. kv_cache.acceleration"
    test, metric = key.rsplit(".", 1)
    base = test.split("[", 1)[0]
    if base not in METRICS:
        return f"metric {key!r}: unknown benchmark {base!r}; allowed: {', '.join(METRICS)}{suggest(base, list(METRICS))}"
    if metric not in METRICS[base]:
        return (f"metric {key!r}: {base} has no metric {metric!r}; allowed: {', '.join(METRICS[base])}"
                f"{suggest(metric, METRICS[base])}")
    return None


def profile_problems(profiles: dict[str, dict[str, float]]) -> list[str]:
    """What is wrong in a `profiles:` section: unknown metrics (with a did-you-mean), negative or all-zero weights."""
    problems = []
    for name, weights in profiles.items():
        problems += [f"profiles.{name}: {p}" for key in weights if (p := unknown_metric(key))]
        problems += [f"profiles.{name}: weight of {key!r} = {w:g}: must be >= 0" for key, w in weights.items() if w < 0]
        if not any(w > 0 for w in weights.values()):
            problems.append(f"profiles.{name}: give at least one metric a weight above 0")
    return problems


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."
