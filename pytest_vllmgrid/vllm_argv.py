"""`vllm serve` command lines: the known options, grid parameters as argv, and argv read back into options.

Plain functions over lists of strings (no pytest, no Docker, no pydantic). grid.py turns a config's parameters
into argv here; the compose deployer reads a service's `command:` and merges the grid's flags into it here.
"""

from __future__ import annotations

import json
import shlex
from functools import lru_cache
from importlib import resources
from typing import Any

# The seeds' short names (seed 001) for the parameters their grid varies.
PARAM_ALIASES = {
    "gpu_memory": "gpu_memory_utilization",
    "prefix_caching": "enable_prefix_caching",
    "chunked_prefill": "enable_chunked_prefill",
}


@lru_cache(maxsize=1)
def vllm_flags() -> dict[str, dict[str, Any]]:
    """Known `vllm serve` options (dest -> option, aliases, negatable, takes_value, choices)."""
    text = resources.files("pytest_vllmgrid").joinpath("data/vllm_flags.json").read_text()
    return json.loads(text)["flags"]


@lru_cache(maxsize=1)
def _flag_aliases() -> dict[str, str]:
    """Every accepted spelling of a vLLM option -> its dest."""
    names = {dest: dest for dest in vllm_flags()}
    for dest, spec in vllm_flags().items():
        for alias in spec.get("aliases") or []:
            names.setdefault(alias, dest)
    for short, dest in PARAM_ALIASES.items():
        names[short] = dest
    return names


def canonical_param(name: str) -> str | None:
    """The vLLM dest a grid key names (`max-num-seqs`, `prefix_caching` ...), or None if unknown."""
    key = name.strip().lstrip("-").replace("-", "_")
    return _flag_aliases().get(key)


# ---- parameters -> argv ---------------------------------------------------------------------------


def params_to_args(params: dict[str, Any]) -> list[str]:
    """Map {dest: value} to vLLM argv: None -> nothing, bools -> --x / --no-x, dicts -> one JSON element."""
    flags = vllm_flags()
    args: list[str] = []
    for dest, value in params.items():
        spec = flags.get(dest, {"option": "--" + dest.replace("_", "-"), "negatable": True, "takes_value": True})
        option = spec["option"]
        if value is None:
            continue
        if isinstance(value, bool) and not spec.get("takes_value", True):
            if value:
                args.append(option)
            elif spec.get("negatable"):
                args.append("--no-" + option[2:])
            continue
        if isinstance(value, bool):
            args += [option, "true" if value else "false"]
        elif isinstance(value, dict):
            args += [option, json.dumps(value, separators=(",", ":"), sort_keys=True)]
        elif isinstance(value, list):
            args += [option, *[scalar_arg(v) for v in value]]
        else:
            args += [option, scalar_arg(value)]
    return args


def scalar_arg(value: Any) -> str:
    """One argv element for a scalar (JSON for nested structures)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---- argv -> options ------------------------------------------------------------------------------


def split_command(command: Any) -> list[str]:
    """A compose-style `command:` (list, string or absent) as an argv list; a string splits as a shell would."""
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def is_option(token: str) -> bool:
    """An option token (`--x`), not a value such as `-1`."""
    return token.startswith("--") and len(token) > 2


def option_dest(token: str) -> str | None:
    """The vLLM dest a command-line option names (`--max-num-seqs=4`, `--no-enable-prefix-caching`), else None."""
    if not is_option(token):
        return None
    name = token[2:].split("=", 1)[0]
    dest = canonical_param(name)
    if dest is None and name.startswith("no-"):
        positive = canonical_param(name[3:])
        if positive and vllm_flags().get(positive, {}).get("negatable"):
            dest = positive
    return dest or name.replace("-", "_")


def takes_value(dest: str, token: str) -> bool:
    """Whether an option token is followed by value tokens (unknown options are assumed to take values)."""
    if "=" in token:
        return False
    spec = vllm_flags().get(dest)
    return True if spec is None else bool(spec.get("takes_value", True))


def flag_groups(argv: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split argv into leading positionals and (dest, tokens) groups, one per option."""
    leading: list[str] = []
    groups: list[tuple[str, list[str]]] = []
    index = 0
    while index < len(argv) and not is_option(argv[index]):
        leading.append(argv[index])
        index += 1
    while index < len(argv):
        token = argv[index]
        dest = option_dest(token) or token
        tokens = [token]
        index += 1
        if takes_value(dest, token):
            while index < len(argv) and not is_option(argv[index]):
                tokens.append(argv[index])
                index += 1
        groups.append((dest, tokens))
    return leading, groups


def merge_command(base: list[str], grid_args: list[str]) -> list[str]:
    """A command with the grid's flags: a flag present in both takes the grid's value (spelling aside)."""
    leading, base_groups = flag_groups(base)
    grid_leading, grid_groups = flag_groups(grid_args)
    overridden = {dest for dest, _ in grid_groups}
    merged = list(leading)
    for dest, tokens in base_groups:
        if dest not in overridden:
            merged += tokens
    for _, tokens in grid_groups:
        merged += tokens
    return merged + grid_leading


def option_value(argv: list[str], dest: str) -> str | None:
    """The first value given to an option in argv (`--port 8000` or `--port=8000`), or None."""
    _, groups = flag_groups(argv)
    for group_dest, tokens in groups:
        if group_dest != dest:
            continue
        if "=" in tokens[0]:
            return tokens[0].split("=", 1)[1]
        if len(tokens) > 1:
            return tokens[1]
    return None
