"""The default CPU grid's wall time and where it goes; plugin overhead per config.

    .venv/bin/python perf/grid_breakdown.py --out /tmp/perfgrid          # runs the grid, then analyses
    .venv/bin/python perf/grid_breakdown.py --out /tmp/perfgrid --analyze-only

Runs `pytest benchmarks/ -p no:cacheprovider --results-dir OUT/results` (the embedded cpu-tiny
grid: 3 configs x every benchmark) with perf/grid_probe.py loaded, which timestamps each config's
deploy and teardown, every benchmark request (ChatClient._request), every test and the report
writing. Per config:
  wall        GridSession.deploy start -> teardown end (the results JSON's wall_seconds, too)
  startup     server launch -> readiness proven (deployment.startup_time_seconds)
  requests    union of the intervals in which at least one benchmark request was in flight
  teardown    stopping the server (SIGTERM to the process group, wait)
  overhead    wall - startup - requests - teardown: everything the plugin adds around the
              requests (fixtures, /metrics scrapes, /tokenize, telemetry, results writes,
              statistics, threshold judging, pytest itself); `overhead_incl_teardown` adds teardown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_grid(out: Path, selection: list[str]) -> None:
    """The default grid, exactly as a user runs it, plus the probe plugin."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", *selection, "-p", "no:cacheprovider", "--results-dir",
           str(out / "results"), "-p", "grid_probe"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "perf"), os.environ.get("PYTHONPATH", "")]),
           "VLLMGRID_PROBE_OUT": str(out / "probe.json")}
    load_before = load_average()
    started = time.monotonic()
    with open(out / "pytest.log", "w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    ended = time.monotonic()
    (out / "run.json").write_text(json.dumps({"launched": started, "exited": ended, "exit_code": code,
                                              "load_before": load_before, "load_after": load_average()}))


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _calls_by_name(calls: list[list[Any]], config: str) -> dict[str, float]:
    """Seconds per named call during one config's tests (nested calls each count in full)."""
    totals: dict[str, float] = {}
    for label, start, end, cfg in calls:
        if cfg == config:
            totals[label] = totals.get(label, 0.0) + end - start
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def analyse(out: Path) -> dict[str, Any]:
    """Figures from the probe, the results JSONs and the manifest."""
    probe = json.loads((out / "probe.json").read_text())
    run = json.loads((out / "run.json").read_text())
    results = out / "results"
    manifest = json.loads((results / "manifest.json").read_text())
    configs = {}
    for name, (deploy_start, deploy_end) in probe["deploy"].items():
        data = json.loads((results / f"{name}.json").read_text())
        teardown_start, teardown_end = probe["teardown"].get(name, [deploy_end, deploy_end])
        wall = teardown_end - deploy_start
        startup = data["deployment"]["startup_time_seconds"] or 0.0
        requests = busy_seconds([(s, e) for s, e, cfg in probe["requests"] if cfg == name])
        teardown = teardown_end - teardown_start
        tests = [t for t in probe["tests"] if t[1] == name]
        configs[name] = {
            "wall_s": wall, "results_wall_seconds": data.get("wall_seconds"),
            "deploy_call_s": deploy_end - deploy_start, "startup_s": startup,
            "readiness_stages_s": data["deployment"].get("ready_stages_s"),
            "requests_s": requests, "request_count": sum(1 for r in probe["requests"] if r[2] == name),
            "teardown_s": teardown, "tests": len(tests),
            "tests_duration_s": sum((t.get("duration_s") or 0.0) for t in data["tests"].values()),
            "overhead_s": wall - startup - requests - teardown,
            "calls_s": _calls_by_name(probe.get("calls", []), name),
            "overhead_incl_teardown_s": wall - startup - requests,
        }
    first_deploy = min(start for start, _ in probe["deploy"].values())
    last_teardown = max(end for _, end in probe["teardown"].values())
    reports = probe.get("reports") or [last_teardown, last_teardown]
    return {
        "load_before": run["load_before"], "load_after": run["load_after"], "exit_code": run["exit_code"],
        "manifest_started": manifest.get("started"), "manifest_ended": manifest.get("ended"),
        "total_wall_s": run["exited"] - run["launched"],
        "pytest_start_and_collection_s": probe["collected"] - run["launched"],
        "collection_to_first_deploy_s": first_deploy - probe["collected"],
        "configs_s": last_teardown - first_deploy,
        "reports_s": reports[1] - reports[0],
        "after_last_teardown_s": run["exited"] - last_teardown,
        "configs": configs,
    }


def print_figures(figures: dict[str, Any]) -> None:
    """A readable breakdown."""
    print(f"default grid: {figures['total_wall_s']:.1f} s wall (pytest exit {figures['exit_code']}); "
          f"load {figures['load_before']} -> {figures['load_after']}")
    print(f"  python + pytest start + collection  {figures['pytest_start_and_collection_s']:6.1f} s")
    print(f"  collection -> first deploy          {figures['collection_to_first_deploy_s']:6.1f} s")
    print(f"  configs (first deploy -> last stop) {figures['configs_s']:6.1f} s")
    print(f"  reports (write_reports)             {figures['reports_s']:6.1f} s")
    print(f"  last stop -> exit (incl. reports)   {figures['after_last_teardown_s']:6.1f} s")
    for name, c in figures["configs"].items():
        print(f"  {name:<16} wall {c['wall_s']:6.1f} = startup {c['startup_s']:5.1f} + requests "
              f"{c['requests_s']:6.1f} ({c['request_count']} requests, {c['tests']} tests) + teardown "
              f"{c['teardown_s']:4.1f} + overhead {c['overhead_s']:5.1f} s")
        calls = ", ".join(f"{label} {seconds:.2f}" for label, seconds in c.get("calls_s", {}).items()
                          if seconds >= 0.05)
        print(f"    inside it (s): {calls}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/perfgrid"))
    parser.add_argument("--analyze-only", action="store_true")
    parser.add_argument("selection", nargs="*", default=["benchmarks/"],
                        help="what pytest runs (default: benchmarks/, the whole grid)")
    args = parser.parse_args()
    if not args.analyze_only:
        run_grid(args.out, args.selection)
    figures = analyse(args.out)
    (args.out / "breakdown.json").write_text(json.dumps(figures, indent=1))
    print_figures(figures)


if __name__ == "__main__":
    main()
