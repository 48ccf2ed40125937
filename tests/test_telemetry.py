"""Tests of GPU telemetry: sampler (real NVML absent, fake NVML), device resolution, summaries,
alerts, the report section, and the replay of a series recorded on an H100."""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_vllmgrid import telemetry
from pytest_vllmgrid.bench import BenchContext, BenchSettings, saturates_gpu
from pytest_vllmgrid.endpoint import Endpoint
from pytest_vllmgrid.grid import ServerConfig
from pytest_vllmgrid.measurement import Measurement
from pytest_vllmgrid.report.telemetry import config_telemetry_markdown, telemetry_markdown, telemetry_plot_png
from pytest_vllmgrid.results import ConfigResult, TestResult
from pytest_vllmgrid.telemetry import (
    AlertThresholds,
    DeviceInfo,
    DeviceRef,
    GpuReading,
    Sample,
    TelemetryAlertError,
    TelemetrySampler,
    TelemetrySeries,
    TelemetryUnavailable,
    TelemetryWarning,
    check_alerts,
    emit_alerts,
    measurement_telemetry,
    resolve_devices,
    select_devices,
    summarize_series,
)

H100_DATA = Path(__file__).parent / "data" / "gpu_telemetry_h100.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIB = 1024**3

UUID_A = "GPU-1a2b3c4d-0000-1111-2222-333344445555"
UUID_B = "GPU-1a2bffff-6666-7777-8888-999900001111"
UUID_C = "GPU-9f00aa11-2222-3333-4444-555566667777"
POOL = [DeviceRef(0, UUID_A, "NVIDIA H100"), DeviceRef(1, UUID_B, "NVIDIA H100"), DeviceRef(2, UUID_C, "NVIDIA L4")]


def nvml_works() -> bool:
    """Whether a real NVML with a driver is present (only on a GPU machine)."""
    try:
        telemetry.list_devices()
    except TelemetryUnavailable:
        return False
    return True


# --------------------------------------------------------------------------- a fake pynvml


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError (carries `.value`)."""

    def __init__(self, value: int) -> None:
        super().__init__(f"fake NVML error {value}")
        self.value = value


class FakeNvml:
    """The pynvml functions the sampler calls, over scripted GPUs."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, uuids: list[str], init_error: int | None = None) -> None:
        self.uuids = uuids
        self.init_error = init_error
        self.failing: dict[str, int] = {}  # metric -> NVML error code raised on every call
        self.block: threading.Event | None = None  # when set, utilisation reads wait on it
        self.inits = self.shutdowns = 0
        self.calls = 0

    def _fail(self, metric: str) -> None:
        self.calls += 1
        if metric in self.failing:
            raise FakeNVMLError(self.failing[metric])

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return self.uuids[handle].encode()  # old bindings return bytes

    def nvmlDeviceGetName(self, handle: int) -> str:
        return f"Fake GPU {handle}"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if self.block is not None:
            self.block.wait(10)
        self._fail("util")
        return SimpleNamespace(gpu=10 * (handle + 1), memory=5)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self._fail("memory")
        return SimpleNamespace(used=(handle + 1) * GIB, total=80 * GIB, free=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        self._fail("temp")
        return 40 + handle

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._fail("power")
        return 123_456  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        self._fail("power_limit")
        return 700_000

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        self._fail("clock")
        return 1980


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """Two fake GPUs behind the sampler's NVML loader; CUDA_VISIBLE_DEVICES unset."""
    fake = FakeNvml([UUID_A, UUID_B])
    monkeypatch.setattr(telemetry, "_load_nvml", lambda: fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def sample_briefly(sampler: TelemetrySampler, seconds: float = 0.12) -> TelemetrySeries:
    """Run a sampler for a moment and return its series."""
    with sampler:
        time.sleep(seconds)
    assert sampler.series is not None
    return sampler.series


# --------------------------------------------------------------------------- unavailable paths


@pytest.mark.skipif(nvml_works(), reason="NVML works here; this checks a machine without a driver")
def test_sampler_without_nvidia_driver_records_unavailable_quickly() -> None:
    started = time.monotonic()
    with TelemetrySampler(interval_s=0.05) as sampler:
        time.sleep(0.1)
    series = sampler.series
    assert time.monotonic() - started < 2.0
    assert series is not None and series.available is False
    assert "NVML" in (series.reason or "") or "pynvml" in (series.reason or "")
    assert series.samples == []


@pytest.mark.skipif(nvml_works(), reason="NVML works here; this checks a machine without a driver")
def test_a_missing_nvml_library_is_remembered_and_later_samplers_start_no_thread() -> None:
    first = TelemetrySampler(interval_s=0.05).start()
    time.sleep(0.1)
    first_series = first.stop()
    later = TelemetrySampler(interval_s=0.05).start()
    assert later._thread is None  # decided at start(), no new attempt
    series = later.stop()
    assert series.available is False and series.reason == first_series.reason
    assert "NVML init failed" in (series.reason or "") and series.samples == []


def test_list_devices_without_driver_raises_telemetry_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_load_nvml", lambda: FakeNvml([], init_error=12))
    with pytest.raises(TelemetryUnavailable, match="NVML init failed"):
        resolve_devices("0")


def test_missing_nvidia_ml_py_is_recorded_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    series = sample_briefly(TelemetrySampler(interval_s=0.05))
    assert series.available is False
    assert "nvidia-ml-py" in (series.reason or "")


def test_nvml_init_error_is_recorded_with_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_load_nvml", lambda: FakeNvml([UUID_A], init_error=9))
    series = sample_briefly(TelemetrySampler(interval_s=0.05))
    assert series.available is False
    assert series.reason == "NVML init failed: fake NVML error 9"


def test_stop_without_start_returns_unavailable_series() -> None:
    series = TelemetrySampler().stop()
    assert series.available is False and "never started" in (series.reason or "")


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        TelemetrySampler(interval_s=0)


# --------------------------------------------------------------------------- sampling (fake NVML)


def test_sampler_records_all_visible_gpus_with_units_converted(fake_nvml: FakeNvml) -> None:
    series = sample_briefly(TelemetrySampler(interval_s=0.02))
    assert series.available is True
    assert [d.uuid for d in series.devices] == [UUID_A, UUID_B]
    assert series.devices[0].memory_total_mb == 80 * 1024
    assert series.devices[0].power_limit_w == 700.0
    assert len(series.samples) >= 2  # first sample at start, last at stop
    assert all(b.t > a.t for a, b in zip(series.samples, series.samples[1:]))
    assert series.samples[0].gpus[1] == GpuReading(
        util_pct=20, mem_used_mb=2048.0, mem_total_mb=81920.0, temp_c=41,
        power_w=123.5, power_limit_w=700.0, sm_clock_mhz=1980,
    )
    assert fake_nvml.inits == fake_nvml.shutdowns == 1


def test_sampler_thread_is_a_daemon(fake_nvml: FakeNvml) -> None:
    sampler = TelemetrySampler(interval_s=0.02).start()
    try:
        assert sampler._thread is not None and sampler._thread.daemon
    finally:
        sampler.stop()


def test_sampler_follows_cuda_visible_devices(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2bf")
    series = sample_briefly(TelemetrySampler(interval_s=0.05))
    assert [d.index for d in series.devices] == [1]
    assert all(len(s.gpus) == 1 for s in series.samples)


def test_sampler_takes_explicit_compose_device_list(fake_nvml: FakeNvml) -> None:
    series = sample_briefly(TelemetrySampler(interval_s=0.05, devices=[1, UUID_A]))
    assert [d.index for d in series.devices] == [1, 0]


def test_sampler_with_empty_cuda_visible_devices_is_unavailable(
    fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    series = sample_briefly(TelemetrySampler(interval_s=0.05))
    assert series.available is False
    assert series.reason is not None and series.reason.startswith("no GPU selected (CUDA_VISIBLE_DEVICES='')")


def test_unsupported_metric_is_missing_without_counting_an_error(fake_nvml: FakeNvml) -> None:
    fake_nvml.failing["power"] = FakeNvml.NVML_ERROR_NOT_SUPPORTED
    series = sample_briefly(TelemetrySampler(interval_s=0.05))
    assert series.available and series.errors == 0
    assert all(g.power_w is None and g.util_pct is not None for s in series.samples for g in s.gpus)


def test_failing_metric_is_counted_and_sampling_goes_on(fake_nvml: FakeNvml) -> None:
    fake_nvml.failing["temp"] = 999
    series = sample_briefly(TelemetrySampler(interval_s=0.02))
    assert series.available is True
    assert series.errors == 2 * len(series.samples)
    assert series.last_error == "fake NVML error 999"
    assert series.samples[-1].gpus[0].temp_c is None and series.samples[-1].gpus[0].util_pct == 10


def test_lost_gpu_on_every_reading_marks_series_unavailable(fake_nvml: FakeNvml) -> None:
    for metric in ("util", "memory", "temp", "power", "power_limit", "clock"):
        fake_nvml.failing[metric] = FakeNvml.NVML_ERROR_GPU_IS_LOST
    series = sample_briefly(TelemetrySampler(interval_s=0.05))
    assert series.available is False
    assert series.reason == "every NVML reading failed: fake NVML error 15"


def test_stop_is_bounded_when_nvml_hangs(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TelemetrySampler, "join_timeout_s", 0.2)
    fake_nvml.block = threading.Event()
    sampler = TelemetrySampler(interval_s=0.05).start()
    time.sleep(0.05)
    started = time.monotonic()
    series = sampler.stop()
    fake_nvml.block.set()  # let the thread finish
    assert time.monotonic() - started < 1.0
    assert any("did not stop" in note for note in series.notes)


def test_nvml_hanging_before_the_first_sample_gives_unavailable(
    fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TelemetrySampler, "join_timeout_s", 0.2)
    fake_nvml.block = threading.Event()
    series = sample_briefly(TelemetrySampler(interval_s=0.05), seconds=0.0)
    fake_nvml.block.set()
    assert series.available is False
    assert series.reason == "no sample was taken before stop() (NVML did not answer)"


# --------------------------------------------------------------------------- device resolution


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [0, 1, 2]),
        ("", []),
        ("1", [1]),
        ("2,0", [2, 0]),
        (" 1 , 2 ", [1, 2]),
        (UUID_C, [2]),
        ("GPU-9f00", [2]),
        ("gpu-1a2bFF", [1]),
        ("0,GPU-9f00aa11", [0, 2]),
        ("1,1", [1]),
    ],
    ids=["unset", "empty", "index", "reordered", "spaces", "uuid", "uuid-prefix", "prefix-any-case",
         "mixed", "duplicate"],
)
def test_resolve_devices_reads_cuda_visible_devices(spec: str | None, expected: list[int]) -> None:
    assert [d.index for d in resolve_devices(spec, POOL)] == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("0,7,1", [0]), ("1,foo,0", [1]), ("-1", []), ("GPU-1a2b", []), ("0,MIG-GPU-1a2b/0/0", [0]),
     ("GPU-ffff", [])],
    ids=["out-of-range", "garbage", "negative", "ambiguous-prefix", "mig", "unknown-uuid"],
)
def test_invalid_entry_hides_it_and_later_entries_like_cuda(spec: str, expected: list[int]) -> None:
    assert [d.index for d in resolve_devices(spec, POOL)] == expected


def test_select_devices_accepts_indices_and_uuids_from_compose() -> None:
    assert select_devices([2, "0", UUID_B], POOL) == [POOL[2], POOL[0], POOL[1]]


# --------------------------------------------------------------------------- series, summaries


def synthetic_series(
    util: list[float], mem_mb: list[float], temp: list[float], power: list[float],
    total_mb: float = 1000.0, devices: int = 1,
) -> TelemetrySeries:
    """A recorded-looking series: the same values on each of `devices` GPUs, 1 s apart."""
    infos = [DeviceInfo(i, f"GPU-{i:08d}", "Test GPU", total_mb, 300.0) for i in range(devices)]
    samples = [
        Sample(float(t), tuple(GpuReading(u, m, total_mb, c, p, 300.0, 1500) for _ in range(devices)))
        for t, (u, m, c, p) in enumerate(zip(util, mem_mb, temp, power))
    ]
    return TelemetrySeries(available=True, interval_s=1.0, started_at=1_700_000_000.0,
                           devices=infos, samples=samples)


def test_series_round_trips_through_compact_json() -> None:
    series = synthetic_series([10, 90], [100, 900], [40, 60], [100, 250], devices=2)
    series.samples[1] = Sample(1.0, (GpuReading(util_pct=None), series.samples[1].gpus[1]))
    data = json.loads(json.dumps(series.to_dict()))
    assert data["fields"][0] == "util_pct" and len(data["samples"][0]) == 3
    assert TelemetrySeries.from_dict(data) == series


def test_summary_of_one_device() -> None:
    summary = summarize_series(synthetic_series([20, 80, 50], [100, 960, 500], [40, 70, 60], [100, 300, 200]))
    dev = summary["devices"][0]
    assert (summary["n_samples"], summary["duration_s"]) == (3, 2.0)
    assert (dev["util_mean_pct"], dev["util_max_pct"]) == (50.0, 80.0)
    assert (dev["mem_start_mb"], dev["mem_peak_mb"], dev["mem_peak_pct"]) == (100.0, 960.0, 96.0)
    assert (dev["temp_max_c"], dev["power_mean_w"]) == (70.0, 200.0)


def test_overall_summary_adds_vram_and_power_across_devices() -> None:
    overall = summarize_series(synthetic_series([20, 80], [100, 400], [40, 70], [100, 300], devices=2))["overall"]
    assert overall["n_devices"] == 2
    assert (overall["mem_peak_mb"], overall["mem_total_mb"], overall["mem_peak_pct"]) == (800.0, 2000.0, 40.0)
    assert (overall["power_mean_w"], overall["util_max_pct"], overall["temp_max_c"]) == (400.0, 80.0, 70.0)


def test_window_keeps_only_samples_inside() -> None:
    series = synthetic_series([0, 10, 20, 30], [1, 2, 3, 4], [1, 1, 1, 1], [1, 1, 1, 1])
    assert [s.t for s in series.window(1.0, 2.0).samples] == [1.0, 2.0]


def test_summary_of_unavailable_series_keeps_the_reason() -> None:
    summary = summarize_series(TelemetrySeries.unavailable("no driver"))
    assert summary["available"] is False and summary["reason"] == "no driver" and summary["devices"] == []


# --------------------------------------------------------------------------- alerts


def test_alerts_for_vram_temperature_and_low_utilisation() -> None:
    series = synthetic_series([10, 30], [900, 960], [80, 90], [100, 100])
    alerts = check_alerts(series, AlertThresholds())
    assert [(a.kind, a.device, a.value, a.threshold) for a in alerts] == [
        ("vram", 0, 96.0, 95.0), ("temperature", 0, 90.0, 85.0), ("low_util", 0, 20.0, 50.0),
    ]
    assert "2 of 2 samples below" in alerts[2].message


def test_low_utilisation_is_not_an_alert_where_the_load_is_not_meant_to_saturate() -> None:
    series = synthetic_series([0, 0], [100, 100], [30, 30], [60, 60])
    assert check_alerts(series, saturating=False) == []


def test_values_at_the_threshold_do_not_alert() -> None:
    series = synthetic_series([50, 50], [950, 950], [85, 85], [100, 100])
    assert check_alerts(series) == []


def test_threshold_set_to_none_disables_that_alert() -> None:
    series = synthetic_series([10, 10], [990, 990], [99, 99], [100, 100])
    alerts = check_alerts(series, AlertThresholds(vram_pct=None, temp_c=None))
    assert [a.kind for a in alerts] == ["low_util"]


def test_unavailable_series_has_no_alerts() -> None:
    assert check_alerts(TelemetrySeries.unavailable("no driver")) == []


def test_thresholds_reject_unknown_keys_and_bad_values() -> None:
    assert AlertThresholds.from_mapping({"temp_c": 80}).temp_c == 80
    with pytest.raises(ValueError, match="allowed"):
        AlertThresholds.from_mapping({"vram": 90})
    with pytest.raises(ValueError, match="vram_pct"):
        AlertThresholds(vram_pct=150)


def test_alerts_are_warnings_unless_failing_is_asked() -> None:
    alerts = check_alerts(synthetic_series([10], [100], [30], [50]))
    with pytest.warns(TelemetryWarning, match="cfg-a: GPU 0"):
        emit_alerts(alerts, context="cfg-a")
    with pytest.warns(TelemetryWarning), pytest.raises(TelemetryAlertError):
        emit_alerts(alerts, fail=True)


def test_measurement_telemetry_is_json_safe() -> None:
    record = measurement_telemetry(synthetic_series([10], [100], [30], [50]), saturating=True)
    assert json.loads(json.dumps(record))["alerts"][0]["kind"] == "low_util"


def test_a_load_not_meant_to_saturate_reports_utilisation_and_alerts_only_heat_and_memory() -> None:
    # a sequential benchmark on a hot, full GPU at 12 % utilisation (the H200's eager-mode TTFT runs: 14-36 %)
    record = measurement_telemetry(synthetic_series([12, 12], [900, 960], [90, 90], [100, 100]), saturating=False)
    assert [a["kind"] for a in record["alerts"]] == ["vram", "temperature"]
    assert record["saturating"] is False
    assert record["summary"]["devices"][0]["util_mean_pct"] == 12.0


def test_a_load_meant_to_saturate_alerts_low_utilisation_with_the_reason_in_the_message() -> None:
    record = measurement_telemetry(synthetic_series([12, 12], [100, 100], [40, 40], [100, 100]), saturating=True)
    assert [a["kind"] for a in record["alerts"]] == ["low_util"] and record["saturating"] is True
    assert "under a load meant to saturate it (2 of 2 samples below)" in record["alerts"][0]["message"]


def test_alert_round_trips_through_its_dict() -> None:
    alert = check_alerts(synthetic_series([10], [100], [30], [50]))[0]
    assert telemetry.Alert.from_dict(json.loads(json.dumps(alert.to_dict()))) == alert


@pytest.mark.parametrize(("concurrency", "levels", "expected"), [
    (32, [1, 8, 32], True), (8, [1, 8, 32], False), (1, [1, 8, 32], False), (1, [1], False), (16, [16], True),
])
def test_only_the_highest_concurrency_level_above_one_is_meant_to_saturate(concurrency, levels, expected) -> None:
    assert saturates_gpu(concurrency, levels) is expected


def finished_bench(fake_nvml: FakeNvml, saturating: bool) -> tuple[list[TestResult], list[str]]:
    """A benchmark's finish() over a real sampler reading the fake GPUs (10 % / 20 % utilisation, 40 °C);
    returns what it recorded and the TelemetryWarning texts it raised."""
    recorded: list[TestResult] = []
    sampler = TelemetrySampler(interval_s=0.02).start()
    bench = BenchContext(endpoint=Endpoint("http://127.0.0.1:9", "m"), config=ServerConfig("cfg", 0, {}),
                         settings=BenchSettings(), record=recorded.append, sampler=sampler,
                         alert_thresholds=AlertThresholds(temp_c=39.0))
    time.sleep(0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bench.finish(Measurement(method="t"), saturating=saturating)
    return recorded, [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]


def test_a_sequential_benchmarks_finish_warns_of_heat_but_not_of_low_utilisation(fake_nvml: FakeNvml) -> None:
    recorded, warned = finished_bench(fake_nvml, saturating=False)
    tele = recorded[0].measurement.telemetry()
    assert {a["kind"] for a in tele["alerts"]} == {"temperature"} and tele["saturating"] is False
    assert tele["summary"]["overall"]["util_mean_pct"] == 15.0  # reported all the same
    assert warned and not any("utilisation" in w for w in warned)
    assert not any("utilisation" in w for w in recorded[0].measurement.warnings)


def test_a_saturating_benchmarks_finish_warns_of_low_utilisation(fake_nvml: FakeNvml) -> None:
    recorded, warned = finished_bench(fake_nvml, saturating=True)
    kinds = [a["kind"] for a in recorded[0].measurement.telemetry()["alerts"]]
    assert kinds.count("low_util") == 2 and kinds.count("temperature") == 2  # both fake GPUs
    assert sum("cfg: GPU" in w and "mean utilisation" in w for w in warned) == 2


# --------------------------------------------------------------------------- report section


def test_markdown_has_a_row_per_config_and_gpu_and_lists_alerts() -> None:
    md = telemetry_markdown({
        "tp2": synthetic_series([60, 90], [500, 970], [50, 60], [200, 300], devices=2),
        "cpu|only": TelemetrySeries.unavailable("NVML init failed: NVML Shared Library Not Found"),
    }, AlertThresholds())
    assert md.startswith("## GPU telemetry")
    assert "| tp2 | 0 · Test GPU | 2 | 1.0 | 75.0 | 90.0 | 500.0 | 970.0 | 97.0 | 60.0 | 250.0 |" in md
    assert "| tp2 | 1 · Test GPU |" in md
    assert "- `cpu|only`: telemetry unavailable: NVML init failed: NVML Shared Library Not Found" in md
    assert md.count("⚠ `tp2` vram") == 2


def test_markdown_without_any_series_says_so() -> None:
    assert "No GPU telemetry was recorded." in telemetry_markdown({}, AlertThresholds())


def test_plot_is_a_png() -> None:
    pytest.importorskip("matplotlib")
    png = telemetry_plot_png({"a": synthetic_series([10, 90], [100, 900], [40, 60], [100, 250], devices=2)})
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5000


def test_plot_of_unavailable_telemetry_is_still_a_png() -> None:
    pytest.importorskip("matplotlib")
    assert telemetry_plot_png({"a": TelemetrySeries.unavailable("no GPU")}).startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- H100 recording replay


@pytest.fixture(scope="module")
def h100() -> dict:
    """The series recorded on an H100 by perf/gpu_telemetry_proof.py, with its phase windows."""
    record = json.loads(H100_DATA.read_text())
    record["series"] = TelemetrySeries.from_dict(record["series"])
    return record


def phase(h100: dict, name: str) -> TelemetrySeries:
    """The recorded series cut to one phase: idle_before, load or idle_after."""
    return h100["series"].window(*h100["phases"][name])


def test_h100_recording_is_one_h100_sampled_well(h100: dict) -> None:
    series = h100["series"]
    assert series.available and series.errors == 0
    assert [d.name for d in series.devices] == ["NVIDIA H100 80GB HBM3"]
    assert 40 <= len(series.samples) <= 200


def test_h100_utilisation_rises_above_half_under_load(h100: dict) -> None:
    idle = summarize_series(phase(h100, "idle_before"))["devices"][0]
    load = summarize_series(phase(h100, "load"))["devices"][0]
    assert idle["util_max_pct"] < 50 < load["util_mean_pct"]
    assert load["util_max_pct"] >= 90


def test_h100_vram_peak_is_far_above_idle(h100: dict) -> None:
    idle = summarize_series(phase(h100, "idle_before"))["devices"][0]
    whole = summarize_series(h100["series"])["devices"][0]
    assert whole["mem_peak_mb"] > idle["mem_peak_mb"] + 20 * 1024  # the load holds +2 GiB a second


def test_h100_power_and_temperature_rise_under_load(h100: dict) -> None:
    idle = summarize_series(phase(h100, "idle_before"))["devices"][0]
    load = summarize_series(phase(h100, "load"))["devices"][0]
    assert load["power_mean_w"] > 2 * idle["power_mean_w"]
    assert load["temp_max_c"] > idle["temp_max_c"]


def test_h100_idle_phase_alerts_low_utilisation_only_where_meant_to_saturate(h100: dict) -> None:
    idle = phase(h100, "idle_before")
    assert [a.kind for a in check_alerts(idle, saturating=True)] == ["low_util"]
    assert check_alerts(idle, saturating=False) == []


def test_h100_load_phase_raises_no_alert_at_default_thresholds(h100: dict) -> None:
    assert check_alerts(phase(h100, "load")) == []


def test_h100_vram_alert_fires_with_a_lower_threshold(h100: dict) -> None:
    alerts = check_alerts(h100["series"], AlertThresholds(vram_pct=20.0, min_util_pct=None))
    assert [a.kind for a in alerts] == ["vram"]


def test_h100_replay_through_the_report_section(h100: dict) -> None:
    md = telemetry_markdown(
        {"h100-load": phase(h100, "load"), "h100-idle": phase(h100, "idle_before"),
         "cpu": TelemetrySeries.unavailable("NVML init failed: NVML Shared Library Not Found")},
        AlertThresholds(),
    )
    assert "| h100-load | 0 · NVIDIA H100 80GB HBM3 |" in md
    assert "| h100-idle | 0 · NVIDIA H100 80GB HBM3 |" in md
    assert "⚠ `h100-idle` low_util" in md and "⚠ `h100-load`" not in md
    assert "`cpu`: telemetry unavailable" in md


def test_report_section_lists_low_utilisation_only_from_benchmarks_meant_to_saturate(h100: dict) -> None:
    idle = phase(h100, "idle_before")  # mean utilisation far below 50 %
    tests = {key: TestResult(measurement=Measurement(method="t", info={"telemetry": measurement_telemetry(
        idle, saturating=saturating)}, telemetry_series=idle.to_dict())) for key, saturating in
        (("ttft[short]", False), ("throughput[32]", True))}
    results = {"gpu": ConfigResult(config_name="gpu", timestamp="2026-12-01T00:00:00Z", tests=tests)}
    md = config_telemetry_markdown({"gpu": idle}, results)
    assert md.count("low_util") == 1 and "⚠ `gpu · throughput[32]` low_util" in md
    assert "in a benchmark whose load is meant to saturate the GPU" in md


def test_h100_replay_plot_is_a_png(h100: dict) -> None:
    pytest.importorskip("matplotlib")
    assert telemetry_plot_png({"h100": h100["series"]}).startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- real GPU (device only)


@pytest.mark.skipif(not nvml_works(), reason="needs an NVIDIA GPU and driver")
def test_real_gpu_is_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    series = sample_briefly(TelemetrySampler(interval_s=0.1), seconds=0.5)
    assert series.available and series.errors == 0 and len(series.samples) >= 4
    reading = series.samples[-1].gpus[0]
    assert reading.mem_total_mb and reading.temp_c is not None and reading.power_w is not None


def test_recorded_h100_grid_run_replays_into_the_reports_telemetry_section(tmp_path):
    """A real H100 run through the plugin (tests/data/h100_grid_run): the report shows each config's GPU load."""
    import shutil

    from pytest_vllmgrid.report import write_reports
    from pytest_vllmgrid.results import ResultsStore

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "h100_grid_run", run)
    paths = write_reports(ResultsStore(run))
    markdown = paths["markdown"].read_text()
    section = markdown.split("## GPU telemetry", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| gpu_")]
    assert [row.split("|")[1].strip() for row in rows] == ["gpu_a", "gpu_b"]
    assert all("H100" in row for row in rows)
    util_means = [float(row.split("|")[5]) for row in rows]
    assert min(util_means) > 50
    assert "data:image/png;base64," in paths["html"].read_text()


def test_report_says_why_telemetry_was_unavailable(tmp_path):
    from pytest_vllmgrid.report import write_reports
    from pytest_vllmgrid.results import Measurement, ResultsStore, TestResult

    store = ResultsStore(tmp_path)
    store.reset_config("cpu", {"params": {}})
    store.write_test("cpu", "ttft", TestResult(measurement=Measurement(method="m", info={"telemetry": {
        "unavailable": "NVML init failed: NVML Shared Library Not Found"}})))
    markdown = write_reports(store)["markdown"].read_text()
    assert "`cpu`: telemetry unavailable: NVML init failed: NVML Shared Library Not Found" in markdown


def test_recorded_two_gpu_xdist_run_shows_each_worker_on_its_own_gpu(tmp_path):
    """Issue 11's proof, replayed (tests/data/h100x2_xdist_run): `pytest perf/multigpu -n 2
    --vllm-gpus-per-config 1` on 2 H100s, each config's server a torch matmul stand-in on its worker's GPU;
    apps.csv is `nvidia-smi --query-compute-apps` polled every 0.5 s during the run."""
    import csv
    import shutil

    from pytest_vllmgrid.report import write_reports
    from pytest_vllmgrid.results import ResultsStore

    data = Path(__file__).parent / "data" / "h100x2_xdist_run"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("gpu_a.json", "gpu_b.json", "manifest.json"):
        shutil.copy(data / name, run / name)
    store = ResultsStore(run)
    configs = store.all_configs()
    assert sorted(configs) == ["gpu_a", "gpu_b"]
    gpu_of, uuid_of, pid_of = {}, {}, {}
    for name, result in configs.items():
        deployment = result.deployment.model_dump()
        telemetry = result.tests["gpu_window"].measurement.telemetry()["summary"]
        [device] = telemetry["devices"]  # the config's telemetry covers its own GPU only
        assert str(device["index"]) == "".join(deployment["gpu_devices"])
        assert device["util_mean_pct"] > 50 and device["mem_peak_mb"] > device["mem_start_mb"] + 4000
        gpu_of[name], uuid_of[name], pid_of[name] = deployment["worker"], device["uuid"], deployment["pid"]
    assert sorted(gpu_of.values()) == ["gw0", "gw1"]  # one worker per config
    assert len(set(uuid_of.values())) == 2  # ... on two different GPUs
    with open(data / "apps.csv", newline="") as fh:
        apps = {(row[1].strip(), int(row[2])) for row in csv.reader(fh)}
    # nvidia-smi saw exactly one compute process per GPU: the config's own server, never the other's
    assert apps == {(uuid_of[name], pid_of[name]) for name in configs}
    paths = write_reports(store)
    section = paths["markdown"].read_text().split("## GPU telemetry", 1)[1]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| gpu_")]
    assert sorted((row[1].strip(), row[2].strip()[0]) for row in rows) == [("gpu_a", "0"), ("gpu_b", "1")]
    report = json.loads(paths["json"].read_text())
    assert {c["name"] for c in report["configs"]} == {"gpu_a", "gpu_b"}


H200_RUN = Path(__file__).parent / "data" / "h200_run"


def h200_series(config: str, test: str) -> TelemetrySeries:
    stored = json.loads((H200_RUN / f"{config}.json").read_text())["tests"][test]["measurement"]
    return TelemetrySeries.from_dict(stored["telemetry_series"])


def test_vram_that_grew_past_the_bound_during_a_benchmark_alerts_with_the_growth() -> None:
    """The H200 run: prefix_caching's memory rose from 132,042 to 137,110 MiB (95.4 %) under 256 requests."""
    alerts = check_alerts(h200_series("prefix_caching", "throughput[256]"), saturating=True)
    vram = [a for a in alerts if a.kind == "vram"]
    assert len(vram) == 1 and vram[0].value == 95.4 and "+5068 MiB during this benchmark" in vram[0].message


def test_vram_held_flat_above_the_bound_is_the_preallocation_not_an_alert() -> None:
    """The same server's later benchmarks started and stayed at 137,110 MiB: the H200 run alerted on each
    (12 tool-calling tests and both TTFT tests); the level is in the summary, and no alert repeats it."""
    series = h200_series("prefix_caching", "ttft[short]")
    record = measurement_telemetry(series, saturating=False)
    assert record["summary"]["devices"][0]["mem_peak_pct"] == 95.4
    assert record["alerts"] == []


def test_sequential_benchmarks_of_the_h200_run_raise_no_low_utilisation_alert() -> None:
    """baseline's kv_cache[4000] read a mean of 43.7 % and alerted (< 50 %) on the H200; a sequential benchmark
    cannot saturate the GPU, so the same series gives no alert now, while its utilisation is still reported."""
    record = measurement_telemetry(h200_series("baseline", "kv_cache[4000]"), saturating=False)
    assert record["alerts"] == []
    assert record["summary"]["devices"][0]["util_mean_pct"] < 50
