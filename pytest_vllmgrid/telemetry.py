"""GPU telemetry: an NVML sampler thread, its recorded series, summaries and alerts.

Nothing here may stop a benchmark: without nvidia-ml-py, a driver or a GPU, the series is
recorded as unavailable with the reason. Only stdlib at import time; `pynvml` is loaded lazily.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: nothing but the stdlib is imported at run time
    from pydantic import JsonValue

SCHEMA_VERSION = 1
MIB = 1024 * 1024

# Order of the values in one device's reading, as stored in the compact JSON form.
READING_FIELDS = (
    "util_pct",
    "mem_used_mb",
    "mem_total_mb",
    "temp_c",
    "power_w",
    "power_limit_w",
    "sm_clock_mhz",
)


class TelemetryUnavailable(Exception):
    """NVML cannot be used here; the message is the reason recorded in the series."""


class TelemetryWarning(UserWarning):
    """A telemetry alert (VRAM, temperature, low utilisation) reported as a pytest warning."""


class TelemetryAlertError(AssertionError):
    """Raised by `emit_alerts(..., fail=True)` when alerts must fail the test."""

    def __init__(self, alerts: Sequence[Alert]) -> None:
        self.alerts = list(alerts)
        super().__init__("GPU telemetry alerts: " + "; ".join(a.message for a in self.alerts))


@dataclass(frozen=True)
class DeviceRef:
    """One GPU as NVML enumerates it: NVML index, UUID ('GPU-...') and product name."""

    index: int
    uuid: str
    name: str


@dataclass(frozen=True)
class DeviceInfo(DeviceRef):
    """A sampled GPU with the static facts read when sampling started."""

    memory_total_mb: float | None = None
    power_limit_w: float | None = None


@dataclass(frozen=True)
class GpuReading:
    """One device's values at one sample; None where NVML does not support or failed a metric."""

    util_pct: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None

    def to_row(self) -> list[float | None]:
        """Values in READING_FIELDS order."""
        return [getattr(self, name) for name in READING_FIELDS]

    @classmethod
    def from_row(cls, row: Sequence[float | None]) -> GpuReading:
        """Inverse of to_row."""
        return cls(**dict(zip(READING_FIELDS, row)))


@dataclass(frozen=True)
class Sample:
    """Readings of all sampled devices at `t` seconds (monotonic) after the series started."""

    t: float
    gpus: tuple[GpuReading, ...]


@dataclass
class TelemetrySeries:
    """A recorded telemetry series, or the reason there is none."""

    available: bool
    reason: str | None = None
    interval_s: float = 1.0
    started_at: float | None = None  # wall clock (epoch seconds) of t = 0
    devices: list[DeviceInfo] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0  # device readings in which at least one metric failed
    last_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def unavailable(cls, reason: str, interval_s: float = 1.0, **extra: Any) -> TelemetrySeries:
        """A series that records why telemetry could not be taken."""
        return cls(available=False, reason=reason, interval_s=interval_s, **extra)

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last sample."""
        return self.samples[-1].t - self.samples[0].t if len(self.samples) > 1 else 0.0

    def values(self, position: int, name: str) -> list[tuple[float, float]]:
        """(t, value) pairs of one metric of the device at `position`, skipping missing values."""
        out = []
        for sample in self.samples:
            value = getattr(sample.gpus[position], name) if position < len(sample.gpus) else None
            if value is not None:
                out.append((sample.t, value))
        return out

    def window(self, start_s: float, end_s: float) -> TelemetrySeries:
        """The same series restricted to samples with start_s <= t <= end_s (t kept as is)."""
        kept = [s for s in self.samples if start_s <= s.t <= end_s]
        return replace(self, samples=kept, notes=list(self.notes))

    def to_dict(self) -> dict[str, JsonValue]:
        """Compact JSON-safe form: one row per sample, `[t, [device 0 values], ...]`."""
        started_iso = (
            datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(timespec="milliseconds")
            if self.started_at is not None
            else None
        )
        return {
            "schema": SCHEMA_VERSION,
            "available": self.available,
            "reason": self.reason,
            "interval_s": self.interval_s,
            "started_at": self.started_at,
            "started_at_iso": started_iso,
            "devices": [asdict(d) for d in self.devices],
            "fields": list(READING_FIELDS),
            "samples": [[s.t, *[g.to_row() for g in s.gpus]] for s in self.samples],
            "errors": self.errors,
            "last_error": self.last_error,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TelemetrySeries:
        """Rebuild a series from `to_dict` output (fields named in the data, so order may change)."""
        names = list(data.get("fields") or READING_FIELDS)
        unknown = set(names) - set(READING_FIELDS)
        if unknown:
            raise ValueError(f"telemetry series: unknown reading fields {sorted(unknown)}")
        samples = [
            Sample(
                t=float(row[0]),
                gpus=tuple(GpuReading(**dict(zip(names, values))) for values in row[1:]),
            )
            for row in data.get("samples", [])
        ]
        return cls(
            available=bool(data["available"]),
            reason=data.get("reason"),
            interval_s=float(data.get("interval_s", 1.0)),
            started_at=data.get("started_at"),
            devices=[DeviceInfo(**d) for d in data.get("devices", [])],
            samples=samples,
            errors=int(data.get("errors", 0)),
            last_error=data.get("last_error"),
            notes=list(data.get("notes", [])),
        )


# --------------------------------------------------------------------------- device selection


def _load_nvml() -> ModuleType:
    """Import nvidia-ml-py's `pynvml`, or say why not."""
    try:
        import pynvml
    except Exception as exc:  # ImportError, or a broken install
        raise TelemetryUnavailable(f"nvidia-ml-py (pynvml) cannot be imported: {exc}") from exc
    return pynvml


# Per NVML binding: why it can never work in this process (its library is missing), once seen; later
# samplers report it without a thread or a new attempt (~30 ms per benchmark on a machine without a GPU).
_NVML_ABSENT: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _text(value: str | bytes) -> str:
    """NVML strings come back as bytes from older bindings."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _enumerate(nvml: ModuleType) -> tuple[list[tuple[DeviceRef, Any]], list[str]]:
    """All GPUs NVML sees, with their handles; devices that cannot be opened become notes."""
    found: list[tuple[DeviceRef, Any]] = []
    notes: list[str] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            ref = DeviceRef(
                index=index,
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
            )
        except nvml.NVMLError as exc:
            notes.append(f"GPU {index} skipped: {exc}")
            continue
        found.append((ref, handle))
    return found, notes


def _match_entry(entry: str, available: Sequence[DeviceRef]) -> tuple[DeviceRef | None, str]:
    """One CUDA_VISIBLE_DEVICES entry (index or 'GPU-' UUID prefix) to a device, or why not."""
    if entry.isdigit():
        matches = [d for d in available if d.index == int(entry)]
        return (matches[0], "") if matches else (None, f"no GPU with index {entry}")
    if entry.upper().startswith("MIG-"):
        return None, f"MIG device {entry!r} is not supported"
    if entry.upper().startswith("GPU-"):
        matches = [d for d in available if d.uuid.upper().startswith(entry.upper())]
        if len(matches) == 1:
            return matches[0], ""
        if not matches:
            return None, f"no GPU with UUID {entry!r}"
        return None, f"UUID prefix {entry!r} is ambiguous ({len(matches)} GPUs)"
    return None, f"{entry!r} is neither a GPU index nor a 'GPU-' UUID"


def _match_devices(
    entries: Iterable[str | int], available: Sequence[DeviceRef]
) -> tuple[list[DeviceRef], list[str]]:
    """Entries to devices with CUDA's rule: an invalid entry hides it and every later entry."""
    selected: list[DeviceRef] = []
    notes: list[str] = []
    for raw in entries:
        entry = str(raw).strip()
        device, why = _match_entry(entry, available)
        if device is None:
            notes.append(f"device list stops at {entry!r}: {why}")
            break
        if device in selected:
            notes.append(f"GPU {device.index} listed twice; sampled once")
            continue
        selected.append(device)
    return selected, notes


def split_visible_devices(spec: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES text to entries: None (unset) means all GPUs, '' means none."""
    if spec is None:
        return None
    return [part for part in (p.strip() for p in spec.split(",")) if part]


def list_devices() -> list[DeviceRef]:
    """Every GPU NVML sees; raises TelemetryUnavailable when NVML cannot be used."""
    nvml = _load_nvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise TelemetryUnavailable(f"NVML init failed: {exc}") from exc
    try:
        return [ref for ref, _ in _enumerate(nvml)[0]]
    except nvml.NVMLError as exc:
        raise TelemetryUnavailable(f"NVML device listing failed: {exc}") from exc
    finally:
        _shutdown(nvml)


def select_devices(
    entries: Sequence[str | int], available: Sequence[DeviceRef] | None = None
) -> list[DeviceRef]:
    """Devices named by indices or 'GPU-' UUID (prefixes), e.g. a compose service's device_ids."""
    return _match_devices(entries, list_devices() if available is None else available)[0]


def resolve_devices(
    cuda_visible_devices: str | None, available: Sequence[DeviceRef] | None = None
) -> list[DeviceRef]:
    """Devices a process with this CUDA_VISIBLE_DEVICES value sees (None: all of NVML's list)."""
    pool = list_devices() if available is None else list(available)
    entries = split_visible_devices(cuda_visible_devices)
    return pool if entries is None else _match_devices(entries, pool)[0]


def _shutdown(nvml: ModuleType) -> None:
    """nvmlShutdown that never raises (NVML counts init/shutdown pairs)."""
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


# --------------------------------------------------------------------------- sampling


class _Reader:
    """Reads one device's metrics, turning NVML errors into None and an error count."""

    def __init__(self, nvml: ModuleType) -> None:
        self.nvml = nvml
        self.last_error: str | None = None

    def _call(self, read: Callable[[], float], failed: list[str]) -> float | None:
        """One metric; NotSupported is silent, any other failure is recorded."""
        try:
            return read()
        except self.nvml.NVMLError as exc:
            if getattr(exc, "value", None) != self.nvml.NVML_ERROR_NOT_SUPPORTED:
                failed.append(str(exc))
        except Exception as exc:  # a binding bug must not kill the sampler
            failed.append(f"{type(exc).__name__}: {exc}")
        return None

    def read(self, handle: Any) -> tuple[GpuReading, bool]:
        """A reading of `handle` and whether any metric failed."""
        nvml = self.nvml
        failed: list[str] = []
        memory = self._call(lambda: nvml.nvmlDeviceGetMemoryInfo(handle), failed)
        power = self._call(lambda: nvml.nvmlDeviceGetPowerUsage(handle), failed)
        limit = self._call(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle), failed)
        reading = GpuReading(
            util_pct=self._call(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu, failed),
            mem_used_mb=round(memory.used / MIB, 1) if memory is not None else None,
            mem_total_mb=round(memory.total / MIB, 1) if memory is not None else None,
            temp_c=self._call(
                lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU), failed
            ),
            power_w=round(power / 1000.0, 1) if power is not None else None,
            power_limit_w=round(limit / 1000.0, 1) if limit is not None else None,
            sm_clock_mhz=self._call(
                lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM), failed
            ),
        )
        if failed:
            self.last_error = failed[-1]
        return reading, bool(failed)


class TelemetrySampler:
    """Samples NVML metrics of the selected GPUs in a daemon thread between start() and stop()."""

    def __init__(
        self, interval_s: float = 1.0, devices: Sequence[str | int] | str | None = None
    ) -> None:
        """devices: None = this process's CUDA_VISIBLE_DEVICES; a str = such a value; a list = indices/UUIDs."""
        if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"telemetry interval_s must be a positive number of seconds, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.devices = devices
        self.series: TelemetrySeries | None = None  # the result, once stopped
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: TelemetrySeries | None = None
        self._t0 = 0.0

    # The bound on stop(): a hung NVML call must not hang the test session.
    @property
    def join_timeout_s(self) -> float:
        """How long stop() waits for the thread."""
        return max(5.0, 2 * self.interval_s)

    def elapsed_s(self) -> float:
        """Seconds since start(), on the series' time axis (for marking measurement windows)."""
        return time.monotonic() - self._t0 if self._thread is not None else 0.0

    def start(self) -> TelemetrySampler:
        """Start sampling (returns at once; NVML is opened in the thread)."""
        if self._thread is not None:
            return self
        self._t0 = time.monotonic()
        self._live = TelemetrySeries(available=True, interval_s=self.interval_s, started_at=time.time())
        try:
            absent = _NVML_ABSENT.get(_load_nvml())
        except TelemetryUnavailable as exc:
            absent = str(exc)
        if absent is not None:
            self._mark_unavailable(absent)
            self.series = self._live
            return self
        self._thread = threading.Thread(target=self._run, name="vllmgrid-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> TelemetrySeries:
        """Stop sampling and return the series; never raises, waits at most join_timeout_s."""
        if self.series is not None:
            return self.series
        if self._thread is None or self._live is None:
            self.series = TelemetrySeries.unavailable("telemetry sampler was never started", self.interval_s)
            return self.series
        self._stop.set()
        self._thread.join(self.join_timeout_s)
        with self._lock:
            series = replace(self._live, samples=list(self._live.samples), notes=list(self._live.notes))
        if self._thread.is_alive():
            series.notes.append(f"sampler thread did not stop within {self.join_timeout_s:g} s")
        if series.available and not series.samples:
            series.available = False
            series.reason = "no sample was taken before stop()" + (
                " (NVML did not answer)" if self._thread.is_alive() else "")
        elif series.available and series.errors and not _has_values(series):
            series.available = False
            series.reason = f"every NVML reading failed: {series.last_error}"
        self.series = series
        return series

    def __enter__(self) -> TelemetrySampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _mark_unavailable(self, reason: str) -> None:
        """Record why telemetry is unavailable (first reason wins)."""
        with self._lock:
            assert self._live is not None
            if self._live.available:
                self._live.available = False
                self._live.reason = reason

    def _run(self) -> None:
        """Thread body: open NVML, sample until stopped, close NVML; records failures, never raises."""
        try:
            nvml = _load_nvml()
        except TelemetryUnavailable as exc:
            self._mark_unavailable(str(exc))
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:
            if isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ())):
                _NVML_ABSENT[nvml] = f"NVML init failed: {exc}"
            self._mark_unavailable(f"NVML init failed: {exc}")
            return
        try:
            handles = self._open(nvml)
            if handles:
                self._loop(_Reader(nvml), handles)
        except Exception as exc:
            self._mark_unavailable(f"telemetry failed: {type(exc).__name__}: {exc}")
        finally:
            _shutdown(nvml)

    def _open(self, nvml: ModuleType) -> list[Any]:
        """Resolve the devices to sample and record their static facts; [] if none."""
        found, notes = _enumerate(nvml)
        handle_of = {ref: handle for ref, handle in found}
        pool = [ref for ref, _ in found]
        if self.devices is None or isinstance(self.devices, str):
            spec = os.environ.get("CUDA_VISIBLE_DEVICES") if self.devices is None else self.devices
            entries = split_visible_devices(spec)
            origin = f"CUDA_VISIBLE_DEVICES={spec!r}"
        else:
            entries = list(self.devices)
            origin = f"devices={entries!r}"
        selected, match_notes = (pool, []) if entries is None else _match_devices(entries, pool)
        reader = _Reader(nvml)
        infos = []
        for ref in selected:
            reading, _ = reader.read(handle_of[ref])
            infos.append(DeviceInfo(**asdict(ref), memory_total_mb=reading.mem_total_mb,
                                    power_limit_w=reading.power_limit_w))
        with self._lock:
            assert self._live is not None
            self._live.devices = infos
            self._live.notes.extend(notes + match_notes)
        if not selected:
            detail = "; ".join(match_notes) or f"NVML sees {len(pool)} GPU(s)"
            self._mark_unavailable(f"no GPU selected ({origin}): {detail}")
        return [handle_of[ref] for ref in selected]

    def _sample(self, reader: _Reader, handles: Sequence[Any]) -> None:
        """Take one sample of every handle."""
        t = time.monotonic() - self._t0
        readings, failures = [], 0
        for handle in handles:
            reading, failed = reader.read(handle)
            readings.append(reading)
            failures += failed
        with self._lock:
            assert self._live is not None
            self._live.samples.append(Sample(t=round(t, 3), gpus=tuple(readings)))
            self._live.errors += failures
            if failures:
                self._live.last_error = reader.last_error

    def _loop(self, reader: _Reader, handles: Sequence[Any]) -> None:
        """Sample at a steady cadence until stop; a last sample at stop if the previous is stale."""
        next_at = time.monotonic()
        last_at = next_at
        while True:
            last_at = time.monotonic()
            self._sample(reader, handles)
            next_at += self.interval_s
            now = time.monotonic()
            if next_at < now:  # fell behind (slow NVML): keep the cadence from now on
                next_at = now + self.interval_s
            if self._stop.wait(next_at - now):
                break
        if time.monotonic() - last_at > self.interval_s / 2:
            self._sample(reader, handles)


def _has_values(series: TelemetrySeries) -> bool:
    """Whether any reading in the series holds any value."""
    return any(v is not None for s in series.samples for g in s.gpus for v in g.to_row())


# --------------------------------------------------------------------------- summaries


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _max(values: Sequence[float]) -> float | None:
    return max(values) if values else None


def _r(value: float | None, digits: int = 1) -> float | None:
    return round(float(value), digits) if value is not None else None


def _device_summary(series: TelemetrySeries, position: int) -> dict[str, JsonValue]:
    """Summary of one device of the series."""
    device = series.devices[position]
    pick = lambda name: [v for _, v in series.values(position, name)]  # noqa: E731
    util, mem, temp, power = pick("util_pct"), pick("mem_used_mb"), pick("temp_c"), pick("power_w")
    total = _max(pick("mem_total_mb")) or device.memory_total_mb
    peak = _max(mem)
    return {
        "index": device.index,
        "uuid": device.uuid,
        "name": device.name,
        "n_samples": len(series.samples),
        "util_mean_pct": _r(_mean(util)),
        "util_max_pct": _r(_max(util)),
        "mem_start_mb": _r(mem[0]) if mem else None,
        "mem_peak_mb": _r(peak),
        "mem_total_mb": _r(total),
        "mem_peak_pct": _r(100.0 * peak / total) if peak is not None and total else None,
        "temp_max_c": _r(_max(temp)),
        "power_mean_w": _r(_mean(power)),
        "power_max_w": _r(_max(power)),
        "power_limit_w": device.power_limit_w,
        "sm_clock_max_mhz": _r(_max(pick("sm_clock_mhz"))),
    }


def summarize_series(series: TelemetrySeries) -> dict[str, JsonValue]:
    """Per-device and overall summary: util mean/max, peak VRAM MiB and %, max temp, mean power."""
    head = {
        "available": series.available,
        "reason": series.reason,
        "interval_s": series.interval_s,
        "n_samples": len(series.samples),
        "duration_s": round(series.duration_s, 3),
        "errors": series.errors,
    }
    if not series.available:
        return {**head, "devices": [], "overall": {}}
    devices = [_device_summary(series, pos) for pos in range(len(series.devices))]
    # Overall VRAM/power: per-sample sums across devices (a config's footprint), then peak/mean.
    mem_sums = [sum(g.mem_used_mb for g in s.gpus if g.mem_used_mb is not None)
                for s in series.samples if any(g.mem_used_mb is not None for g in s.gpus)]
    total = sum(d["mem_total_mb"] or 0.0 for d in devices)
    peak = _max(mem_sums)
    utils = [v for pos in range(len(series.devices)) for _, v in series.values(pos, "util_pct")]
    overall = {
        "n_devices": len(devices),
        "util_mean_pct": _r(_mean(utils)),
        "util_max_pct": _r(_max(utils)),
        "mem_peak_mb": _r(peak),
        "mem_total_mb": _r(total) if total else None,
        "mem_peak_pct": _r(100.0 * peak / total) if peak is not None and total else None,
        "temp_max_c": _max([d["temp_max_c"] for d in devices if d["temp_max_c"] is not None]),
        "power_mean_w": _r(sum(d["power_mean_w"] for d in devices if d["power_mean_w"] is not None))
        if any(d["power_mean_w"] is not None for d in devices) else None,
    }
    return {**head, "devices": devices, "overall": overall}


# --------------------------------------------------------------------------- alerts


@dataclass(frozen=True)
class AlertThresholds:
    """Alert limits; None disables one. Defaults from the seeds: VRAM 95 %, 85 °C, util 50 %."""

    vram_pct: float | None = 95.0
    temp_c: float | None = 85.0
    min_util_pct: float | None = 50.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"telemetry threshold {f.name}={value!r}: expected a number or None")
            if f.name != "temp_c" and not 0 <= value <= 100:
                raise ValueError(f"telemetry threshold {f.name}={value!r}: expected a percentage 0..100")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AlertThresholds:
        """From a config mapping; unknown keys are an error naming the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"unknown telemetry threshold(s) {unknown}; allowed: {allowed}")
        return cls(**dict(data))


@dataclass(frozen=True)
class Alert:
    """One threshold crossed on one device."""

    kind: str  # "vram" | "temperature" | "low_util"
    device: int  # NVML index
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, JsonValue]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """Inverse of to_dict."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


VRAM_GROWTH_PCT = 1.0  # of the GPU's memory: growth within one benchmark below this is no VRAM alert


def _mem_growth_mb(summary: Mapping[str, Any]) -> float | None:
    """How much a device's memory grew within the window (peak - start), when both were read."""
    start, peak = summary.get("mem_start_mb"), summary.get("mem_peak_mb")
    return None if start is None or peak is None else peak - start


def check_alerts(
    series: TelemetrySeries, thresholds: AlertThresholds | None = None, *, saturating: bool = True
) -> list[Alert]:
    """Alerts for the series: peak VRAM % where the memory grew within the window, max temperature, and mean
    utilisation where the load was meant to saturate the GPU (`saturating`): a single sequential request cannot,
    so there a low mean is no alert. vLLM takes its `gpu_memory_utilization` share at start-up and keeps it: a
    high but flat VRAM level is the pre-allocation the config asked for (reported in the summary), not news at
    every benchmark; memory growing past the bound during one (CUDA graphs, sampler buffers under a large
    batch, another process) is."""
    if not series.available:
        return []
    thresholds = thresholds or AlertThresholds()
    alerts = []
    for pos, summary in enumerate(summarize_series(series)["devices"]):
        label = f"GPU {summary['index']} ({summary['name']})"
        index = summary["index"]
        peak_pct = summary["mem_peak_pct"]
        growth = _mem_growth_mb(summary)
        if thresholds.vram_pct is not None and peak_pct is not None and peak_pct > thresholds.vram_pct \
                and growth is not None and growth > VRAM_GROWTH_PCT / 100 * summary["mem_total_mb"]:
            alerts.append(Alert("vram", index, peak_pct, thresholds.vram_pct,
                                f"{label}: peak VRAM {peak_pct:g} % > {thresholds.vram_pct:g} % "
                                f"({summary['mem_peak_mb']:g} of {summary['mem_total_mb']:g} MiB; "
                                f"+{growth:.0f} MiB during this benchmark)"))
        temp = summary["temp_max_c"]
        if thresholds.temp_c is not None and temp is not None and temp > thresholds.temp_c:
            alerts.append(Alert("temperature", index, temp, thresholds.temp_c,
                                f"{label}: temperature {temp:g} °C > {thresholds.temp_c:g} °C"))
        util = summary["util_mean_pct"]
        if saturating and thresholds.min_util_pct is not None and util is not None \
                and util < thresholds.min_util_pct:
            values = [v for _, v in series.values(pos, "util_pct")]
            below = sum(v < thresholds.min_util_pct for v in values)
            alerts.append(Alert("low_util", index, util, thresholds.min_util_pct,
                                f"{label}: mean utilisation {util:g} % < {thresholds.min_util_pct:g} % "
                                f"under a load meant to saturate it ({below} of {len(values)} samples below)"))
    return alerts


def emit_alerts(alerts: Sequence[Alert], *, fail: bool = False, context: str = "") -> None:
    """Report alerts as TelemetryWarning; with fail=True raise TelemetryAlertError if any."""
    prefix = f"{context}: " if context else ""
    for alert in alerts:
        warnings.warn(TelemetryWarning(prefix + alert.message), stacklevel=2)
    if fail and alerts:
        raise TelemetryAlertError(alerts)


def measurement_telemetry(
    series: TelemetrySeries, thresholds: AlertThresholds | None = None, *, saturating: bool
) -> dict[str, JsonValue]:
    """What a Measurement carries for its window: the summary (utilisation reported always), whether its load
    was meant to saturate the GPU, and the alerts (low utilisation only where it was) (JSON-safe)."""
    return {
        "summary": summarize_series(series),
        "saturating": saturating,
        "alerts": [a.to_dict() for a in check_alerts(series, thresholds, saturating=saturating)],
    }
