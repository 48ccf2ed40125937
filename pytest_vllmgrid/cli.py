"""`vllmgrid` console script: compare stored runs (the regression gate outside pytest), rebuild reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pytest_vllmgrid.gate import (GateError, compare_runs, open_run, open_runs, parse_specs, runs_label, summary_lines,
                                  unmatched_configs, unmatched_specs)

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The command line: `compare OLD [OLD...] [-- NEW...] [--fail METRIC:PCT ...]` and `report DIR`."""
    parser = argparse.ArgumentParser(prog="vllmgrid", description="pytest-vllmgrid results tools")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp_ = sub.add_parser(
        "compare", help="compare results directories config by config (regression gate)",
        usage="vllmgrid compare OLD NEW [--fail METRIC:PCT ...]\n"
              "       vllmgrid compare OLD [OLD ...] -- NEW [NEW ...] [--fail METRIC:PCT ...]\n"
              "       vllmgrid compare --old OLD [OLD ...] --new NEW [NEW ...] [--fail METRIC:PCT ...]",
        description="Judge every benchmark metric of NEW against the same config/test of OLD. One run per side: "
                    "a bootstrap of the relative change on the raw samples (blind to run-to-run variance). Several "
                    "runs on a side (e.g. the last 3 runs of what is deployed): the run is the unit, a t interval "
                    "on the log of each run's statistic. Exit 1 when a --fail spec finds a regression (worse than "
                    "PCT and significant), 2 on a usage error or a spec that judged nothing.")
    cmp_.add_argument("dirs", type=Path, nargs="*", metavar="DIR",
                      help="OLD NEW; or OLD... -- NEW... (several runs per side)")
    cmp_.add_argument("--old", type=Path, nargs="+", action="extend", default=[], metavar="DIR",
                      help="stored run(s) to compare with (e.g. the last 3 runs of the deployed config)")
    cmp_.add_argument("--new", type=Path, nargs="+", action="extend", default=[], metavar="DIR",
                      help="candidate run(s)")
    cmp_.add_argument("--fail", action="append", default=[], metavar="METRIC:PCT",
                      help="e.g. ttft_p50:10%%, throughput:5%%, ttft[long].ttft_ms:p95:15%% (repeatable)")
    rep = sub.add_parser("report", help="rebuild report.md, report.json and report.html of a results directory")
    rep.add_argument("dir", type=Path, help="results directory")
    return parser


def _separator_to_new(argv: list[str]) -> list[str]:
    """`compare A B -- C D --fail X` -> `compare A B --new C --new D --fail X` (NEW dirs follow `--`)."""
    if not argv or argv[0] != "compare" or "--" not in argv:
        return argv
    at = argv.index("--")
    rest = argv[at + 1:]
    count = next((i for i, arg in enumerate(rest) if arg.startswith("-")), len(rest))
    return argv[:at] + [arg for new in rest[:count] for arg in ("--new", new)] + rest[count:]


def split_sides(dirs: list[Path], old: list[Path], new: list[Path]) -> tuple[list[Path], list[Path]]:
    """OLD and NEW directories from positionals plus --old/--new (after `--` became --new)."""
    if old and new:
        if dirs:
            raise GateError(f"{', '.join(map(str, dirs))}: with --old and --new, no directory goes without one")
        return old, new
    if new:
        return dirs, new
    if old:
        return old, dirs
    if len(dirs) == 2:
        return dirs[:1], dirs[1:]
    raise GateError(f"compare needs OLD and NEW, got {len(dirs)} director{'y' if len(dirs) == 1 else 'ies'}; for "
                    "several runs per side: vllmgrid compare OLD... -- NEW... (or --old DIR... --new DIR...)")


def compare_command(old_dirs: Path | Sequence[Path], new_dirs: Path | Sequence[Path], fail: list[str]) -> int:
    """Print the comparison table; the exit status says whether the gate passed."""
    old_dirs = [old_dirs] if isinstance(old_dirs, (str, Path)) else list(old_dirs)
    new_dirs = [new_dirs] if isinstance(new_dirs, (str, Path)) else list(new_dirs)
    specs = parse_specs(fail)
    old, new = open_runs(old_dirs, "OLD"), open_runs(new_dirs, "NEW")
    only_old, only_new = unmatched_configs(old, new)
    verdicts = compare_runs(old, new, specs)
    label = runs_label([s.root for s in old])
    if len(new) > 1:
        label += f" (OLD, {len(old)} run(s)); NEW: {runs_label([s.root for s in new])}"
    for line, _ in summary_lines(verdicts, specs, label):
        print(line)
    for names, where in ((only_old, "OLD"), (only_new, "NEW")):
        if names:
            print(f"note: only in {where}, not compared: {', '.join(names)}")
    if any(v.failed for v in verdicts):
        return EXIT_REGRESSION
    if not verdicts or unmatched_specs(specs, verdicts):
        return EXIT_USAGE
    return EXIT_OK


def report_command(results_dir: Path) -> int:
    """Rebuild the reports from the results store alone."""
    from pytest_vllmgrid.report import write_reports

    for kind, path in write_reports(open_run(results_dir, "results directory")).items():
        print(f"{kind} report: {path}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vllmgrid` console script."""
    args = build_parser().parse_args(_separator_to_new(list(sys.argv[1:] if argv is None else argv)))
    try:
        if args.command == "compare":
            return compare_command(*split_sides(args.dirs, args.old, args.new), args.fail)
        return report_command(args.dir)
    except GateError as exc:
        print(f"vllmgrid: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
