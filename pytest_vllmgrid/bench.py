"""What a benchmark test gets from the `vllm_bench` fixture: settings, a client, metric windows, recording."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pytest_vllmgrid.client import ChatClient
from pytest_vllmgrid.deploy.base import Endpoint
from pytest_vllmgrid.grid import ServerConfig
from pytest_vllmgrid.load import run_event_loop
from pytest_vllmgrid.measurement import Measurement
from pytest_vllmgrid.server_metrics import MetricsUnavailable, diff, fetch_metrics
from pytest_vllmgrid.thresholds import Thresholds, Verdict, judge
from pytest_vllmgrid.telemetry import AlertThresholds, TelemetrySampler, TelemetrySeries, measurement_telemetry

T = TypeVar("T")


class BenchSettings(BaseModel):
    """Benchmark sizes and repetitions: defaults < grid `benchmarks:` < ini/CLI (`--vllm-bench k=v`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    repetitions: int = Field(10, ge=1, le=100_000, description="measured requests per metric")
    warmup: int = Field(2, ge=0, le=1000, description="requests sent first and discarded")
    request_timeout_s: float = Field(120.0, gt=0, le=7200)
    seed: int = 0
    # TTFT / latency
    short_prompt_tokens: int = Field(32, ge=1)
    long_prompt_tokens: int = Field(1024, ge=1)
    max_tokens: int = Field(32, ge=1)
    # KV cache
    prefix_tokens: int = Field(1300, ge=16)
    kv_repetitions: int = Field(8, ge=2)
    kv_max_tokens: int = Field(4, ge=1)
    # throughput
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16])
    throughput_requests: int = Field(32, ge=1)
    throughput_max_duration_s: float = Field(120.0, gt=0)
    throughput_max_tokens: int = Field(64, ge=1)
    slo_ttft_ms: float = Field(1000.0, gt=0)
    slo_tpot_ms: float = Field(100.0, gt=0)
    # long conversation
    conversation_turns: int = Field(15, ge=2)
    conversations: int = Field(2, ge=1)
    conversation_max_tokens: int = Field(32, ge=1)
    # reasoning
    reasoning_tasks: int = Field(3, ge=1)
    reasoning_max_tokens: int = Field(256, ge=1)
    # tool calling
    tool_repetitions: int = Field(3, ge=1)
    tool_max_tokens: int = Field(96, ge=1)
    # stability
    stability_requests: int = Field(20, ge=2)
    stability_max_tokens: int = Field(64, ge=1)
    # telemetry
    telemetry_interval_s: float = Field(1.0, gt=0, le=60)


def build_settings(grid_section: dict[str, Any] | None, overrides: dict[str, Any], source: str) -> BenchSettings:
    """Merge the grid's `benchmarks:` section and command-line overrides; errors name the key."""
    try:
        return BenchSettings.model_validate({**(grid_section or {}), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))} = {e.get('input')!r}: {e['msg']}" for e in exc.errors())
        allowed = ", ".join(BenchSettings.model_fields)
        raise ValueError(f"{source}: invalid benchmark settings: {problems} (allowed keys: {allowed})") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings (values as YAML scalars/lists) to a dict."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--vllm-bench {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


@dataclass
class MetricsWindow:
    """Server /metrics deltas over a block of requests (filled when the block ends)."""

    delta: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class BenchContext:
    """One benchmark's view of the server under test."""

    endpoint: Endpoint
    config: ServerConfig
    settings: BenchSettings
    record: Callable[..., None]
    sampler: TelemetrySampler | None = None
    alert_thresholds: AlertThresholds | None = None
    thresholds: Thresholds | None = None
    test_key: str = ""
    baseline_metrics: Callable[[], dict[str, Any] | None] = lambda: None
    fail_on_gpu_alerts: bool = False
    _token_cache: dict[str, int] = field(default_factory=dict)
    _stored: dict[str, Any] | None = None

    def client(self) -> ChatClient:
        """A streaming client for this server (use as `async with`)."""
        return ChatClient(self.endpoint.base_url, self.endpoint.model, self.endpoint.api_key,
                          timeout=self.settings.request_timeout_s)

    def run(self, main: Callable[[ChatClient], Awaitable[T]]) -> T:
        """Run `main(client)` on a fresh event loop (uvloop when available)."""
        async def wrapper() -> T:
            async with self.client() as client:
                return await main(client)
        return run_event_loop(wrapper())

    @contextlib.contextmanager
    def server_window(self) -> Iterator[MetricsWindow]:
        """Snapshot /metrics before and after the block; the delta lands in the yielded window."""
        window = MetricsWindow()
        try:
            before = fetch_metrics(self.endpoint.metrics_url, api_key=self.endpoint.api_key)
        except MetricsUnavailable as exc:
            window.error = str(exc)
            before = None
        yield window
        if before is None:
            return
        time.sleep(0.05)  # vLLM publishes stats on the engine's logging tick; let the last request land
        try:
            after = fetch_metrics(self.endpoint.metrics_url, api_key=self.endpoint.api_key)
            window.delta = diff(before, after).to_dict()
        except MetricsUnavailable as exc:
            window.error = str(exc)

    def reset_prefix_cache(self) -> bool:
        """POST /reset_prefix_cache (needs VLLM_SERVER_DEV_MODE=1 on the server); True when it worked."""
        try:
            resp = httpx.post(f"{self.endpoint.base_url}/reset_prefix_cache", headers=self.endpoint.headers(),
                              timeout=30)
            return resp.status_code == 200
        except httpx.HTTPError:
            return False

    def count_tokens(self, text: str) -> int:
        """Tokens the server's tokenizer makes of `text` (POST /tokenize), cached."""
        if text not in self._token_cache:
            resp = httpx.post(f"{self.endpoint.base_url}/tokenize", headers=self.endpoint.headers(), timeout=30,
                              json={"model": self.endpoint.model, "prompt": text, "add_special_tokens": False})
            resp.raise_for_status()
            self._token_cache[text] = int(resp.json()["count"])
        return self._token_cache[text]

    def finish(self, measurement: Measurement, window: MetricsWindow | None = None,
               legacy: dict[str, Any] | None = None) -> dict[str, Any]:
        """Attach server deltas and GPU telemetry, store the measurement (+ seed-schema fields)."""
        if window is not None:
            measurement.server = window.delta
            if window.error:
                measurement.warnings.append(f"server /metrics unavailable: {window.error}")
        series = self.stop_telemetry()
        if series is not None:
            tele = measurement_telemetry(series, self.alert_thresholds)
            measurement.info["telemetry"] = tele
            if not series.available:
                measurement.info["telemetry"]["unavailable"] = series.reason
            measurement.warnings += [f"GPU alert: {a['message']}" for a in tele["alerts"]]
        data = measurement.to_dict()
        data["settings"] = self.settings.model_dump()
        if series is not None and series.available:
            data["telemetry_series"] = series.to_dict()
        self.record(data, **(legacy or {}))
        self._stored = data
        return data

    def check_thresholds(self) -> list[Verdict]:
        """Judge the stored measurement against the thresholds file; fail with every broken bound."""
        assert self._stored is not None, "call finish() before check_thresholds()"
        verdicts: list[Verdict] = []
        if self.thresholds is not None:
            base = self.baseline_metrics() or {}
            for metric_name, bound in self.thresholds.for_test(self.test_key, self.config.name, self.config.params).items():
                verdicts += judge(f"{self.test_key}.{metric_name}", bound, self._stored["metrics"].get(metric_name),
                                  base.get(metric_name), self.config.name, self.config.is_baseline)
        self.record(self._stored, thresholds=[v.to_dict() for v in verdicts])
        failed = [v.message for v in verdicts if v.passed is False]
        gpu_alerts = [w for w in self._stored.get("warnings", []) if w.startswith("GPU alert")]
        if self.fail_on_gpu_alerts:
            failed += gpu_alerts
        if failed:
            raise AssertionError(f"{self.config.name}: " + "; ".join(failed))
        return verdicts

    def stop_telemetry(self) -> TelemetrySeries | None:
        """Stop the GPU sampler (idempotent); its series covers this benchmark's window."""
        if self.sampler is None:
            return None
        sampler, self.sampler = self.sampler, None
        return sampler.stop()
