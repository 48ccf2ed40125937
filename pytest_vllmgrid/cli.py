"""`vllmgrid` console script: compare two stored runs (the regression gate outside pytest), rebuild reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_vllmgrid.gate import (GateError, compare_runs, open_run, parse_specs, summary_lines, unmatched_configs,
                              unmatched_specs)

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The command line: `compare OLD NEW [--fail METRIC:PCT ...]` and `report DIR`."""
    parser = argparse.ArgumentParser(prog="vllmgrid", description="pytest-vllmgrid results tools")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp_ = sub.add_parser("compare", help="compare two results directories config by config (regression gate)",
                          description="Judge every benchmark metric of NEW against the same config/test of OLD "
                                      "with a bootstrap of the relative change on the raw samples. Exit 1 when a "
                                      "--fail spec finds a regression (worse than PCT and significant), 2 on a "
                                      "usage error or a spec that judged nothing.")
    cmp_.add_argument("old", type=Path, help="the stored run to compare with (e.g. the last deployed one)")
    cmp_.add_argument("new", type=Path, help="the candidate run")
    cmp_.add_argument("--fail", action="append", default=[], metavar="METRIC:PCT",
                      help="e.g. ttft_p50:10%%, throughput:5%%, ttft[long].ttft_ms:p95:15%% (repeatable)")
    rep = sub.add_parser("report", help="rebuild report.md, report.json and report.html of a results directory")
    rep.add_argument("dir", type=Path, help="results directory")
    return parser


def compare_command(old_dir: Path, new_dir: Path, fail: list[str]) -> int:
    """Print the comparison table; the exit status says whether the gate passed."""
    specs = parse_specs(fail)
    old, new = open_run(old_dir, "OLD"), open_run(new_dir, "NEW")
    only_old, only_new = unmatched_configs(old, new)
    verdicts = compare_runs(old, new, specs)
    for line, _ in summary_lines(verdicts, specs, old.root):
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
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compare":
            return compare_command(args.old, args.new, args.fail)
        return report_command(args.dir)
    except GateError as exc:
        print(f"vllmgrid: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
