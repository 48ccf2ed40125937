"""GPU proof of the telemetry sampler: idle, a growing torch matmul load, idle; series to JSON.

Run on a machine with an NVIDIA GPU, torch and nvidia-ml-py:
    python3 perf/gpu_telemetry_proof.py --out "$OUT"
It selects GPU 0 through CUDA_VISIBLE_DEVICES set to a UUID prefix (as a grid config would),
prints the sampled series, its summary and alerts, and writes gpu_telemetry_h100.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_telemetry() -> ModuleType:
    """The telemetry module, even if the package's other modules' dependencies are missing here."""
    sys.path.insert(0, str(ROOT))
    try:
        from pytest_vllmgrid import telemetry
        return telemetry
    except ImportError:
        spec = importlib.util.spec_from_file_location("vllmgrid_telemetry", ROOT / "pytest_vllmgrid/telemetry.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


def check_resolution(tm: ModuleType) -> tuple[str, list[dict]]:
    """Resolve CUDA_VISIBLE_DEVICES spellings against the real device list; return GPU 0's UUID."""
    devices = tm.list_devices()
    uuid = devices[0].uuid
    cases = [
        ("unset", None, [d.index for d in devices]),
        ("index '0'", "0", [0]),
        ("full UUID", uuid, [0]),
        ("UUID prefix", uuid[:12], [0]),
        ("lower-case prefix", uuid[:12].lower(), [0]),
        ("empty string", "", []),
        ("unknown UUID", "GPU-00000000-dead", []),
        ("'0,MIG-x' stops at MIG", "0,MIG-x", [0]),
        ("out-of-range index", str(len(devices)), []),
    ]
    results = []
    print(f"{'CUDA_VISIBLE_DEVICES':<28} {'value':<44} resolved  ok")
    for label, spec, expected in cases:
        got = [d.index for d in tm.resolve_devices(spec, devices)]
        results.append({"case": label, "value": spec, "resolved": got, "ok": got == expected})
        print(f"{label:<28} {spec!r:<44} {got!s:<9} {got == expected}")
    return uuid, results


def run_load(seconds: float) -> None:
    """bf16 8192³ matmuls on cuda:0 while holding a new 2 GiB block every second."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    hoard = []
    end = time.monotonic() + seconds
    next_alloc = time.monotonic()
    while time.monotonic() < end:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize()
        if time.monotonic() >= next_alloc:
            hoard.append(torch.ones(2 * 1024**3, dtype=torch.uint8, device="cuda"))
            next_alloc += 1.0
    del a, b, c, hoard
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def print_series(series) -> None:
    """Compact table of the series, one line per sample (device 0)."""
    print(f"{'t s':>6} {'util%':>5} {'VRAM MiB':>9} {'temp':>4} {'power W':>7} {'SM MHz':>6}")
    for s in series.samples:
        g = s.gpus[0]
        print(f"{s.t:6.2f} {g.util_pct!s:>5} {g.mem_used_mb!s:>9} {g.temp_c!s:>4} "
              f"{g.power_w!s:>7} {g.sm_clock_mhz!s:>6}")


def main() -> int:
    """Run the proof; exit status 0 when every check held."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--load", type=float, default=15.0)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    tm = load_telemetry()

    uuid, resolution = check_resolution(tm)
    os.environ["CUDA_VISIBLE_DEVICES"] = uuid[:12]  # before CUDA starts: torch sees only this GPU
    import torch  # noqa: F401  (imported here so CUDA reads the variable set above)

    sampler = tm.TelemetrySampler(interval_s=args.interval)  # devices from CUDA_VISIBLE_DEVICES
    sampler.start()
    time.sleep(args.idle)
    load_start = sampler.elapsed_s()
    try:
        print(f"torch {torch.__version__} sees {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}")
        run_load(args.load)
    except Exception as exc:  # still stop the sampler and keep what it recorded
        print(f"load failed: {type(exc).__name__}: {exc}")
    load_end = sampler.elapsed_s()
    time.sleep(args.idle)
    series = sampler.stop()
    windows = {
        "idle_before": (0.0, load_start),
        "load": (load_start + args.interval, load_end),  # skip the sample that straddles CUDA init
        "idle_after": (load_end + 1.0, series.samples[-1].t if series.samples else load_end),
    }
    record = {
        "description": "NVML telemetry of one GPU: idle, bf16 8192^3 matmul loop holding +2 GiB/s, idle",
        "command": "python3 perf/gpu_telemetry_proof.py --out $OUT",
        "torch": torch.__version__,
        "gpu": series.devices[0].name if series.devices else None,
        "phases": {name: [round(a, 3), round(b, 3)] for name, (a, b) in windows.items()},
        "resolution": resolution,
        "series": series.to_dict(),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = Path(args.out) / "gpu_telemetry_h100.json"
    out.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(series.samples)} samples)")
    if not series.available:
        print(f"telemetry unavailable: {series.reason}")
        return 1

    print_series(series)
    summaries = {"whole": tm.summarize_series(series)}
    summaries.update({name: tm.summarize_series(series.window(*w)) for name, w in windows.items()})
    print("\nphase        n  util mean/max %  VRAM start/peak MiB  max temp C  mean power W")
    for name, summary in summaries.items():
        d = summary["devices"][0]
        print(f"{name:<11} {summary['n_samples']:>3}  {d['util_mean_pct']!s:>6}/{d['util_max_pct']!s:<6}  "
              f"{d['mem_start_mb']!s:>9}/{d['mem_peak_mb']!s:<9}  {d['temp_max_c']!s:>10}  {d['power_mean_w']!s:>11}")
    print("\nalerts (default thresholds, under load):")
    for name, part in [("whole", series), *((n, series.window(*w)) for n, w in windows.items())]:
        print(f"  {name}: " + ("; ".join(a.message for a in tm.check_alerts(part)) or "none"))
    load, idle = summaries["load"]["devices"][0], summaries["idle_before"]["devices"][0]
    checks = {
        "resolution": all(r["ok"] for r in resolution),
        "sampled the UUID-selected GPU": series.devices[0].uuid == uuid,
        "util rises above 50 % under load": (load["util_max_pct"] or 0) > 50,
        "idle util below 50 %": (idle["util_max_pct"] or 0) < 50,
        "VRAM grows under load": (load["mem_peak_mb"] or 0) > (idle["mem_peak_mb"] or 0) + 10_000,
    }
    print("\nchecks: " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
