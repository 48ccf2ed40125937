"""Effective-config proof: after readiness, does the server run the flags its grid config states?

Three sources, each read once: vLLM's startup line `non-default args: {...}` (the argv as vLLM parsed it: a
flag a wrapper dropped or a compose `command:` replaced shows here), `/metrics` `vllm:cache_config_info` (the
cache config the engine resolved) and `/v1/models` (max_model_len). Only flags whose value these sources state
unambiguously are compared (COMPARED); a mismatch on a flag the grid states is a ConfigMismatchError naming the
flag, the requested value and the value seen. Flags the grid does not state are recorded, never an error.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

import httpx

from pytest_vllmgrid.deploy.base import DeploymentError, Deployment
from pytest_vllmgrid.grid import ServerConfig
from pytest_vllmgrid.results.models import EffectiveConfig, FlagCheck, JsonObject, json_object
from pytest_vllmgrid.server_metrics import CACHE_CONFIG_INFO, MetricsUnavailable, fetch_metrics
from pytest_vllmgrid.vllm_argv import flag_groups

NON_DEFAULT_ARGS = "non-default args: "
# flag -> its type; the sources below show these without ambiguity
COMPARED: dict[str, type] = {
    "enable_prefix_caching": bool, "block_size": int, "gpu_memory_utilization": float, "kv_cache_dtype": str,
    "max_model_len": int, "enable_chunked_prefill": bool, "max_num_batched_tokens": int, "max_num_seqs": int,
}
METRICS_LABELS = {"enable_prefix_caching": "enable_prefix_caching", "block_size": "block_size",
                  "gpu_memory_utilization": "gpu_memory_utilization", "kv_cache_dtype": "cache_dtype"}
_SECRET_NAME = re.compile(r"key|token|secret|password|auth", re.IGNORECASE)
_HUMAN_INT = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG])$")  # vLLM's human-readable ints: 1k = 1000, 1K = 1024
_UNITS = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
_NOT_SHOWN = object()


class ConfigMismatchError(DeploymentError):
    """The server is up but runs other values than the grid states for some flags."""

    def __init__(self, message: str, *, effective: EffectiveConfig, **kwargs: Any) -> None:
        self.effective = effective
        super().__init__(message, kind="config_mismatch", **kwargs)


# ---- sources ------------------------------------------------------------------------------------


def parse_non_default_args(log_text: str) -> dict[str, object] | None:
    """The dict of the log's last `non-default args: {...}` line; a value that is not a Python literal (an enum,
    a config object) is kept as its text. None when the log has no such line."""
    lines = [line for line in log_text.splitlines() if NON_DEFAULT_ARGS in line]
    if not lines:
        return None
    body = lines[-1].split(NON_DEFAULT_ARGS, 1)[1].strip()
    try:
        parsed = ast.literal_eval(body)
        if isinstance(parsed, dict):
            return parsed
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    return _parse_dict_text(body)


def _parse_dict_text(body: str) -> dict[str, object]:
    """`{'a': 1, 'b': <Enum.X: 'x'>}` split at its top-level commas, each value a literal or its text."""
    inner = body.strip().removeprefix("{").removesuffix("}")
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(inner):
        if quote:
            quote = "" if ch == quote and inner[i - 1] != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep:
            continue
        try:
            name = ast.literal_eval(key.strip())
        except (ValueError, SyntaxError):
            continue
        try:
            out[str(name)] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[str(name)] = value.strip()
    return out


def _read_log(deployment: Deployment, effective: EffectiveConfig) -> dict[str, object]:
    text = deployment.startup_log()
    if not text.strip():
        effective.unavailable["log"] = "the deployer keeps no server log"
        return {}
    args = parse_non_default_args(text)
    if args is None:
        effective.unavailable["log"] = "no 'non-default args' line"
        return {}
    secret = deployment.endpoint.api_key
    kept = {k: v for k, v in args.items() if not _SECRET_NAME.search(k) and not (secret and v == secret)}
    effective.sources["log"] = json_object({k: v if _is_json(v) else repr(v) for k, v in kept.items()})
    return kept


def _read_metrics(deployment: Deployment, effective: EffectiveConfig) -> dict[str, str]:
    try:
        labels = fetch_metrics(deployment.endpoint.metrics_url, client=deployment.http(), timeout=10.0).cache_config()
    except MetricsUnavailable as exc:
        effective.unavailable["metrics"] = exc.reason[:120]
        return {}
    if labels is None:
        effective.unavailable["metrics"] = f"no {CACHE_CONFIG_INFO}"
        return {}
    effective.sources["metrics"] = dict(labels)
    return labels


def _read_models(deployment: Deployment, effective: EffectiveConfig) -> dict[str, object]:
    endpoint = deployment.endpoint
    try:
        response = deployment.http().get(f"{endpoint.base_url}/v1/models", timeout=10.0)
        cards = response.json().get("data", []) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        effective.unavailable["models"] = type(exc).__name__
        return {}
    card = next((c for c in cards or [] if isinstance(c, dict) and c.get("id") == endpoint.model), None)
    if card is None:
        effective.unavailable["models"] = f"HTTP {response.status_code}" if cards is None else f"no {endpoint.model!r}"
        return {}
    facts = {k: card[k] for k in ("id", "root", "max_model_len") if k in card}
    effective.sources["models"] = json_object(facts)
    return facts


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


# ---- comparison ---------------------------------------------------------------------------------


def normalize(flag: str, value: Any) -> Any:
    """A compared flag's value as its type (`"True"` -> True, `"4k"` -> 4000, `"0.90"` -> 0.9); _NOT_SHOWN for
    None / "None" or a value that does not read as the type."""
    kind = COMPARED[flag]
    if value is None or value == "None":
        return _NOT_SHOWN
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            return {"true": True, "1": True, "false": False, "0": False}.get(text, _NOT_SHOWN)
        if kind is int:
            if isinstance(value, bool):
                return _NOT_SHOWN
            if isinstance(value, str):
                human = _HUMAN_INT.match(value.strip())
                if human:
                    return int(float(human.group(1)) * _UNITS[human.group(2)])
            number = float(value)
            return int(number) if number.is_integer() else _NOT_SHOWN
        if kind is float:
            return _NOT_SHOWN if isinstance(value, bool) else float(value)
        return str(value)
    except (TypeError, ValueError):
        return _NOT_SHOWN


def _same(flag: str, a: Any, b: Any) -> bool:
    if COMPARED[flag] is float:
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def requested_flags(config: ServerConfig) -> dict[str, object]:
    """The flags a config states: its params (None: not stated) and its extra_args (`--no-x`: false)."""
    stated = {k: v for k, v in config.params.items() if v is not None}
    _, groups = flag_groups(list(config.extra_args))
    for dest, tokens in groups:
        head = tokens[0]
        if "=" in head:
            value: Any = head.split("=", 1)[1]
        elif len(tokens) > 1:
            value = tokens[1] if len(tokens) == 2 else tokens[1:]
        else:
            value = not head.startswith("--no-")
        stated.setdefault(dest, value)
    return stated


def check_flags(requested: dict[str, object], log: dict[str, object], metrics: dict[str, str],
                models: dict[str, object]) -> list[FlagCheck]:
    """Each stated flag (confirmed / mismatch / not_verifiable), then each compared flag a source shows that the
    grid does not state (seen)."""
    checks = []
    for flag in [*requested, *[f for f in COMPARED if f not in requested]]:
        stated = flag in requested
        shown = {"log": log.get(flag), "metrics": metrics.get(METRICS_LABELS.get(flag, "")),
                 "models": models.get("max_model_len") if flag == "max_model_len" else None}
        if flag not in COMPARED:
            seen = {"log": json_object({"v": log[flag]})["v"]} if flag in log and _is_json(log[flag]) else {}
            checks.append(FlagCheck(flag=flag, requested=_json(requested[flag]), seen=seen, status="not_verifiable"))
            continue
        values = {s: normalize(flag, v) for s, v in shown.items()}
        values = {s: v for s, v in values.items() if v is not _NOT_SHOWN}
        if not stated:
            if values:
                checks.append(FlagCheck(flag=flag, seen=values, status="seen"))
            continue
        want = normalize(flag, requested[flag])
        if want is _NOT_SHOWN or not values:
            checks.append(FlagCheck(flag=flag, requested=_json(requested[flag]), seen=values, status="not_verifiable"))
            continue
        agree = all(_same(flag, want, v) for v in values.values())
        checks.append(FlagCheck(flag=flag, requested=_json(requested[flag]), seen=values,
                                status="confirmed" if agree else "mismatch"))
    return checks


def _json(value: Any) -> Any:
    return json_object({"v": value})["v"] if _is_json(value) else repr(value)


def verify_effective_config(config: ServerConfig, deployment: Deployment) -> EffectiveConfig:
    """Read what the live server runs and compare it with the config's stated flags; raise ConfigMismatchError
    (the server is left up: the caller tears it down) when a stated flag differs."""
    effective = EffectiveConfig()
    log = _read_log(deployment, effective)
    metrics = _read_metrics(deployment, effective)
    models = _read_models(deployment, effective)
    effective.checks = check_flags(requested_flags(config), log, metrics, models)
    wrong = effective.with_status("mismatch")
    if wrong:
        raise ConfigMismatchError(
            f"server for {config.name} does not run the requested config: " + "; ".join(c.text() for c in wrong),
            effective=effective, config_name=config.name, log_path=deployment.log_path)
    return effective
