"""Grid files: load JSON/YAML, validate, expand the matrix, resolve each config to vLLM argv."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pytest_vllmgrid import dummymodel
from pytest_vllmgrid.vllm_argv import canonical_param, params_to_args, scalar_arg, vllm_flags

# vLLM options a deployer owns: setting them per config would break the deployment.
DEPLOYER_OWNED = {
    "model": "the grid's `model` key",
    "host": "the grid's `host` key",
    "port": "the grid's `port` key",
    "served_model_name": "the grid's `served_model_name` key",
    "api_key": "the grid's `api_key_env` key (the key is passed through the environment, never argv)",
}
TINY_MODEL = "@tiny"
SERVED_MODEL = ""  # deployer endpoint without a `model`: the one model the running server lists
BUILTIN_DEPLOYERS = ("process", "compose", "endpoint")  # deploy/builtin.py; more through the plugin's hook
MAX_DOCUMENT_VALUES = 100_000  # values in a grid/thresholds file once YAML aliases are expanded
MAX_MATRIX_CONFIGS = 10_000
_PLAIN_TYPES = (str, int, float, bool, type(None))
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
ParamValue = Union[None, bool, int, float, str, list, dict]


REPLICA_MARK = "~"  # config "a" deployed a second time is "a~2"


class GridError(Exception):
    """A grid file mistake: names the file, the config, the field, the bad value and what is allowed."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid grid file {self.path}:\n{lines}")


def suggest(name: str, choices: list[str]) -> str:
    """A ' (did you mean x?)' hint, or ''."""
    close = difflib.get_close_matches(name.replace("-", "_"), choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComposeSpec(_Strict):
    """Where the user's compose service is (deployer: compose)."""

    file: str
    service: str
    project_name: str | None = None
    env_file: str | None = None
    base_url: str | None = Field(None, description="how the host reaches the service, e.g. http://127.0.0.1:8000")


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a server's base URL (http(s)://HOST[:PORT][/v1]), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"not a URL ({exc}); expected http://HOST:PORT"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected http://HOST:PORT or https://HOST[:PORT] (the server's base URL, /v1 optional)"
    return None


class EndpointSpec(_Strict):
    """An already-running server (deployer: endpoint)."""

    base_url: str

    @field_validator("base_url")
    @classmethod
    def _a_url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class MatrixSpec(_Strict):
    """A cartesian product of parameter values, minus `exclude` combinations."""

    params: dict[str, list[ParamValue]]
    exclude: list[dict[str, ParamValue]] = []
    name: str | None = Field(None, description="format template, e.g. 'pc{enable_prefix_caching}_s{max_num_seqs}'")
    description: str = ""

    @field_validator("params")
    @classmethod
    def _non_empty(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not value:
            raise ValueError("matrix.params must name at least one parameter")
        for key, values in value.items():
            if not values:
                raise ValueError(f"matrix.params.{key} has no values")
        return value


class ConfigEntry(BaseModel):
    """One grid entry: a name plus vLLM parameters by name (unknown names are refused)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=120)
    description: str = ""
    priority: int | None = None
    phase: str | None = None
    extra_args: list[str] = []
    env: dict[str, str] = {}

    def params(self) -> dict[str, Any]:
        """The vLLM parameters, as written."""
        return dict(self.model_extra or {})


class GridFile(_Strict):
    """The whole grid file."""

    name: str | None = None
    description: str = ""
    model: str = TINY_MODEL
    served_model_name: str | None = None
    deployer: str = Field("process", description="deployer kind; load_grid checks it against the allowed kinds")
    vllm_command: list[str] | None = Field(None, description="argv prefix up to `serve`; {python} = this "
                                           "interpreter, {grid_dir} = the grid file's folder")
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    startup_timeout_s: float = Field(600.0, gt=0, le=7 * 24 * 3600)
    env: dict[str, str] = {}
    offline: bool = Field(False, description="serve with HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1: a hub model only "
                          "from the local cache (always so for the project's own '@' models)")
    defaults: dict[str, ParamValue] = {}
    extra_args: list[str] = []
    baseline: str | None = None
    stop_when_met: bool = False
    phases: list[str] = Field(default_factory=list, description="phase names in run order (configs carry `phase`)")
    primary_metric: str | None = Field(None, description="metric the report ranks by, e.g. kv_cache.ttft_hit_ms")
    thresholds: str | None = Field(None, description="thresholds file, relative to the grid file")
    benchmarks: dict[str, Any] = Field(default_factory=dict, description="benchmark sizes (bench.BenchSettings)")
    compose: ComposeSpec | None = None
    endpoint: EndpointSpec | None = None
    configs: list[ConfigEntry] = []
    matrix: MatrixSpec | None = None

    @model_validator(mode="after")
    def _deployer_section(self) -> GridFile:
        if self.deployer == "endpoint" and self.endpoint is None:
            raise ValueError("deployer 'endpoint' needs the server's URL: --vllm-endpoint-url URL or an "
                             "`endpoint: {base_url: ...}` section")
        if self.model == SERVED_MODEL and self.deployer != "endpoint":
            raise ValueError(f"grid field 'model' is empty: only deployer 'endpoint' can take the model the server "
                             f"lists; name one (a path, a hub id such as Qwen/Qwen3-0.6B, or {TINY_MODEL})")
        return self


@dataclass(frozen=True)
class ServerConfig:
    """One resolved grid configuration: everything a deployer needs to start a server."""

    name: str
    index: int
    params: dict[str, Any]
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""
    priority: int | None = None
    phase: str | None = None
    model: str = TINY_MODEL
    served_model_name: str | None = None
    vllm_command: tuple[str, ...] | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    api_key_env: str | None = None
    startup_timeout_s: float = 600.0
    is_baseline: bool = False

    @property
    def model_name(self) -> str:
        """The name clients ask for."""
        if self.served_model_name:
            return self.served_model_name
        if self.model == TINY_MODEL:
            return "tiny"
        return dummymodel.served_name(self.model) if dummymodel.is_dummy(self.model) else self.model

    def vllm_args(self) -> list[str]:
        """The config's vLLM flags as an argv list (never a shell string)."""
        return params_to_args(self.params) + list(self.extra_args)

    def config_hash(self) -> str:
        """Stable hash of what decides the server's behaviour (for resume and comparisons)."""
        payload = {
            "model": self.model,
            "served_model_name": self.model_name,
            "vllm_command": list(self.vllm_command or []),
            "args": self.vllm_args(),
            "env": self.env,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description for the results store."""
        return {
            "name": self.name,
            "description": self.description,
            "params": self.params,
            "extra_args": list(self.extra_args),
            "env_keys": sorted(self.env),
            "model": self.model,
            "served_model_name": self.model_name,
            "vllm_args": self.vllm_args(),
            "is_baseline": self.is_baseline,
            "priority": self.priority,
            "phase": self.phase,
            "config_hash": self.config_hash(),
        }


@dataclass(frozen=True)
class Grid:
    """A validated grid: configs in run order (baseline first)."""

    path: Path
    name: str
    description: str
    deployer: str
    configs: tuple[ServerConfig, ...]
    baseline: str
    spec: GridFile
    file_hash: str

    def config(self, name: str) -> ServerConfig:
        """The config of that name."""
        for cfg in self.configs:
            if cfg.name == name:
                return cfg
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        """Config names in run order."""
        return [c.name for c in self.configs]


def _local_model_defaults(model: str, defaults: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """'@tiny' or '@dummy:SHAPE' (the project builds both); a dummy shape has no weights: load_format dummy."""
    if model == TINY_MODEL:
        return defaults
    choices = [TINY_MODEL] + [dummymodel.PREFIX + shape for shape in sorted(dummymodel.SHAPES)]
    if model not in choices:
        problems.append(f"grid field 'model' = {model!r}: a model built by the project must be one of "
                        f"{', '.join(choices)}{suggest(model, choices)}")
        return defaults
    load_format = defaults.get("load_format", dummymodel.LOAD_FORMAT)
    if load_format != dummymodel.LOAD_FORMAT:
        problems.append(f"grid field 'defaults.load_format' = {load_format!r}: {model} has no weights; allowed: "
                        f"{dummymodel.LOAD_FORMAT!r}")
    return {**defaults, "load_format": dummymodel.LOAD_FORMAT}


def load_grid(path: str | Path, *, model: str | None = None, baseline: str | None = None,
              deployer: str | None = None, deployer_kinds: tuple[str, ...] | list[str] | None = None,
              replicas: int = 1, endpoint_url: str | None = None) -> Grid:
    """Read, validate and resolve a grid file; raise GridError naming every problem.

    `deployer_kinds`: the kinds `deployer:` (or the `deployer` override, i.e. --vllm-deployer) may name;
    default the built-in ones (the plugin passes those of its hook `pytest_vllmgrid_deployer_kinds` too).
    `replicas` (--vllm-replicas): every config is deployed that many times, interleaved in time (a, b, a~2,
    b~2...), so the report can measure the noise between two deployments of the same flags.
    `endpoint_url` (--vllm-endpoint-url) replaces the grid's `endpoint:` section."""
    path = Path(path)
    raw = _read_structured(path)
    problems = document_problems(raw)
    if problems:
        raise GridError(path, problems)
    overrides = {k: v for k, v in {"model": model, "baseline": baseline, "deployer": deployer}.items() if v}
    if isinstance(raw, list) and raw and all(isinstance(entry, dict) for entry in raw):
        raw = {"configs": raw}  # the seeds' grid_search_configs.json: a bare list of config objects
    if not isinstance(raw, dict):
        raise GridError(path, [f"top level must be a mapping with a `configs` list (or a list of config mappings), "
                               f"got {type(raw).__name__}"])
    raw = {**raw, **overrides}
    problems: list[str] = _deployer_problems(raw.get("deployer", "process"), deployer_kinds, bool(deployer))
    if endpoint_url:
        url_problems = _endpoint_url_problems(endpoint_url, raw.get("deployer", "process"))
        problems += url_problems
        if not url_problems:
            raw["endpoint"] = {"base_url": endpoint_url}
    try:
        spec = GridFile.model_validate(raw)
    except ValidationError as exc:
        raise GridError(path, problems + [p for p in _explain(exc, raw)
                                      if not (problems and p.startswith("grid field 'deployer'"))]) from None
    if problems:
        raise GridError(path, problems)
    entries = [(entry.name, entry) for entry in spec.configs]
    if spec.matrix is not None:
        entries += _expand_matrix(spec.matrix, problems)
    if not entries:
        problems.append("the grid has no configurations: add a `configs` list or a `matrix` section")
    defaults = _resolve_params(spec.defaults, "defaults", problems)
    if spec.model.startswith("@"):
        defaults = _local_model_defaults(spec.model, defaults, problems)
    seen: dict[str, int] = {}
    resolved: list[ServerConfig] = []
    for index, (name, entry) in enumerate(entries):
        if name in seen:
            problems.append(f"configs[{index}] name {name!r}: duplicate name (also configs[{seen[name]}]); "
                            "names must be unique")
            continue
        seen[name] = index
        params = {**defaults, **_resolve_params(entry.params(), f"config {name!r}", problems)}
        resolved.append(ServerConfig(
            name=name, index=index, params=params,
            extra_args=tuple(spec.extra_args) + tuple(entry.extra_args),
            env={**spec.env, **entry.env}, description=entry.description,
            priority=entry.priority, phase=entry.phase, model=spec.model,
            served_model_name=spec.served_model_name,
            vllm_command=tuple(part.replace("{grid_dir}", str(path.resolve().parent)) for part in spec.vllm_command)
            if spec.vllm_command else None,
            host=spec.host, port=spec.port, api_key_env=spec.api_key_env,
            startup_timeout_s=spec.startup_timeout_s,
        ))
    baseline_name = spec.baseline or (resolved[0].name if resolved else "")
    if resolved and baseline_name not in seen:
        problems.append(f"baseline {baseline_name!r} names no config; allowed: "
                        f"{', '.join(sorted(seen))}{suggest(baseline_name, list(seen))}")
    if problems:
        raise GridError(path, problems)
    if spec.phases:
        for cfg in resolved:
            if cfg.phase is not None and cfg.phase not in spec.phases:
                problems.append(f"config {cfg.name!r} field 'phase' = {cfg.phase!r}: not in `phases`; "
                                f"allowed: {', '.join(spec.phases)}{suggest(cfg.phase, spec.phases)}")
        if problems:
            raise GridError(path, problems)
    ordered = order_configs(resolved, baseline_name, spec.phases)
    if replicas < 1:
        raise GridError(path, [f"--vllm-replicas = {replicas}: must be at least 1"])
    ordered += [ServerConfig(**{**cfg.__dict__, "name": replica_name(cfg.name, r), "is_baseline": False,
                                "index": cfg.index + r * len(ordered)})
                for r in range(2, replicas + 1) for cfg in ordered]
    return Grid(
        path=path, name=spec.name or path.stem, description=spec.description, deployer=spec.deployer,
        configs=tuple(ordered), baseline=baseline_name, spec=spec,
        file_hash=hashlib.sha256(path.read_bytes()).hexdigest()[:16],
    )


def replica_name(name: str, replica: int) -> str:
    """The name of a config's n-th deployment (the first keeps the config's own name)."""
    return name if replica == 1 else f"{name}{REPLICA_MARK}{replica}"


def _deployer_problems(kind: Any, kinds: tuple[str, ...] | list[str] | None, overridden: bool) -> list[str]:
    """A one-line problem when `kind` is not an allowed deployer kind, listing the allowed ones."""
    allowed = list(kinds or BUILTIN_DEPLOYERS)
    if isinstance(kind, str) and kind in allowed:
        return []
    where = "--vllm-deployer" if overridden else "grid field 'deployer'"
    hint = suggest(kind, allowed) if isinstance(kind, str) else ""
    return [f"{where} = {_short(kind)}: unknown deployer; allowed: {', '.join(allowed)}{hint}"]


def _endpoint_url_problems(url: str, kind: Any) -> list[str]:
    """--vllm-endpoint-url must be a URL, and is read by the endpoint deployer only."""
    problem = url_problem(url)
    if problem:
        return [f"--vllm-endpoint-url = {_short(url)}: {problem}"]
    if kind in ("process", "compose"):
        return [f"--vllm-endpoint-url = {_short(url)}: only the endpoint deployer reads it, and the grid's deployer is "
                f"{kind!r}; add --vllm-deployer endpoint to measure that server as it runs"]
    return []


def order_configs(configs: list[ServerConfig], baseline: str, phases: list[str] | None = None) -> list[ServerConfig]:
    """Baseline first, then by phase (in `phases` order), priority (lower first; none last), file order."""
    rank = {name: i for i, name in enumerate(phases or [])}
    marked = [ServerConfig(**{**c.__dict__, "is_baseline": c.name == baseline}) for c in configs]
    return sorted(marked, key=lambda c: (not c.is_baseline, rank.get(c.phase, len(rank)) if c.phase else len(rank),
                                         c.priority is None, c.priority or 0, c.index))


def parse_yaml(text: str) -> Any:
    """YAML's safe subset, parsed by libyaml when available (the pure-Python parser takes seconds on deep nesting)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _read_structured(path: Path) -> Any:
    """Parse a JSON or YAML file, turning syntax errors into GridError."""
    if not path.is_file():
        raise GridError(path, ["file not found (give --grid a JSON or YAML grid file)"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(path, [f"cannot read the file: {exc}"]) from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return parse_yaml(text)
    except json.JSONDecodeError as exc:
        raise GridError(path, [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise GridError(path, [f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    except RecursionError:
        raise GridError(path, ["the file nests too deeply to be a grid"]) from None


def document_problems(raw: Any, limit: int = MAX_DOCUMENT_VALUES) -> list[str]:
    """Why a parsed file cannot be a grid or thresholds file whatever its keys: more than `limit` values once YAML
    aliases are expanded (an alias bomb), an alias that contains itself, a NUL character (no argv or environment
    can carry one), or a YAML-only type (date, binary, set) that JSON, argv and the results files cannot hold."""
    problems: list[str] = []
    sizes: dict[int, int] = {}  # id of a list/dict -> its expanded size (aliases share one object)
    open_ids: set[int] = set()
    stack: list[tuple[Any, str, bool]] = [(raw, "top level", False)]
    while stack and len(problems) < 5:
        node, where, closing = stack.pop()
        if isinstance(node, (dict, list)):
            key = id(node)
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            if closing:
                open_ids.discard(key)
                sizes[key] = min(limit + 1, 1 + sum(sizes.get(id(v), 1) + (1 if isinstance(node, dict) else 0)
                                                    for _, v in children))
                if key == id(raw) and sizes[key] > limit:
                    problems.append(f"more than {limit} values once YAML aliases are expanded (an alias bomb?)")
                continue
            if key in open_ids:
                problems.append(f"{where}: a YAML alias that contains itself")
                continue
            if key in sizes:
                continue
            open_ids.add(key)
            stack.append((node, where, True))
            for k, v in children:
                inner = f"{where}.{k}" if where != "top level" else str(k)
                if isinstance(node, dict) and not isinstance(k, _PLAIN_TYPES):
                    problems.append(f"{where}: key {_short(k)} is a YAML {type(k).__name__}; quote it")
                elif isinstance(k, str) and "\0" in k:
                    problems.append(f"{where}: key {_short(k)} contains a NUL character")
                stack.append((v, inner, False))
        elif isinstance(node, str):
            if "\0" in node:
                problems.append(f"field {where!r} = {_short(node)}: contains a NUL character")
        elif not isinstance(node, _PLAIN_TYPES):
            problems.append(f"field {where!r} = {_short(node)}: a YAML {type(node).__name__} is not allowed here; "
                            "quote it to make it a string")
    return problems


def _resolve_params(params: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """Canonical vLLM dests for grid keys; unknown or deployer-owned keys become problems."""
    out: dict[str, Any] = {}
    flags = vllm_flags()
    for key, value in params.items():
        if not isinstance(key, str):
            problems.append(f"{where}: key {key!r} must be a string")
            continue
        dest = canonical_param(key)
        if dest in DEPLOYER_OWNED:
            problems.append(f"{where} field {key!r}: set by the deployer; use {DEPLOYER_OWNED[dest]}")
            continue
        if dest is None:
            problems.append(
                f"{where} field {key!r} = {_short(value)}: unknown vLLM parameter{suggest(key, list(flags))}; "
                "allowed: the `vllm serve` options by name (e.g. max_num_seqs, enable_prefix_caching), "
                "the seeds' aliases (gpu_memory, prefix_caching, chunked_prefill), or raw `extra_args`")
            continue
        problem = _check_value(dest, value, flags[dest])
        if problem:
            problems.append(f"{where} field {key!r} = {_short(value)}: {problem}")
            continue
        if dest in out:
            problems.append(f"{where} field {key!r}: given twice (as {dest} and an alias)")
        out[dest] = value
    return out


def _check_value(dest: str, value: Any, spec: dict[str, Any]) -> str | None:
    """Why this value cannot go to that vLLM option, or None."""
    if value is None:
        return None
    if not spec.get("takes_value", True) and not isinstance(value, bool):
        return f"{spec['option']} is a switch; allowed: true, false or null"
    if isinstance(value, float) and value != value:
        return "NaN is not a value"
    kind = spec.get("type")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{spec['option']} takes an integer"
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{spec['option']} takes a number"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > 1e15:
        return "value out of range (|value| must be at most 1e15)"
    choices = spec.get("choices")
    if choices and not isinstance(value, (bool, list, dict)) and str(value) not in choices:
        return f"allowed: {', '.join(choices)}{suggest(str(value), choices)}"
    return None


def _expand_matrix(matrix: MatrixSpec, problems: list[str]) -> list[tuple[str, ConfigEntry]]:
    """The matrix's cartesian product as named entries, minus excluded combinations."""
    keys = list(matrix.params)
    entries: list[tuple[str, ConfigEntry]] = []
    combinations = math.prod(len(values) for values in matrix.params.values())
    if combinations > MAX_MATRIX_CONFIGS:
        problems.append(f"matrix.params: {combinations} combinations; at most {MAX_MATRIX_CONFIGS} configs")
        return entries
    for combo in itertools.product(*(matrix.params[k] for k in keys)):
        values = dict(zip(keys, combo))
        if any(all(values.get(k) == v for k, v in rule.items()) for rule in matrix.exclude):
            continue
        name = _matrix_name(matrix.name, values, problems)
        if name is None:
            return entries
        try:
            entries.append((name, ConfigEntry(name=name, description=matrix.description, **values)))
        except ValidationError as exc:
            problems.append(f"matrix combination {values}: {exc.errors()[0]['msg']}")
    for rule in matrix.exclude:
        unknown = set(rule) - set(keys)
        if unknown:
            problems.append(f"matrix.exclude rule {rule}: keys {sorted(unknown)} are not matrix.params keys; "
                            f"allowed: {', '.join(keys)}")
    return entries


def _matrix_name(template: str | None, values: dict[str, Any], problems: list[str]) -> str | None:
    """A config name for one matrix combination (template or key-value join), made safe."""
    if template:
        try:
            raw = template.format(**{k: scalar_arg(v) for k, v in values.items()})
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(f"matrix.name {template!r}: cannot format ({exc}); allowed placeholders: "
                            f"{', '.join('{' + k + '}' for k in values)}")
            return None
    else:
        raw = "_".join(f"{k}-{scalar_arg(v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", raw).strip("-") or "matrix"


def _explain(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """Readable problems from a pydantic error: config name, field, bad value, what is allowed."""
    problems = []
    top_fields = sorted(GridFile.model_fields)
    for err in exc.errors():
        loc = list(err["loc"])
        where = "grid"
        if len(loc) >= 2 and loc[0] == "configs" and isinstance(loc[1], int):
            entry = (raw.get("configs") or [None] * (loc[1] + 1))[loc[1]]
            label = entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) else None
            where = f"config {label!r}" if label else f"configs[{loc[1]}]"
            loc = loc[2:]
        field_name = ".".join(str(p) for p in loc) or "(entry)"
        value = _short(err.get("input"))
        if err["type"] == "extra_forbidden":
            allowed = top_fields if where == "grid" and len(loc) == 1 else None
            hint = f"; allowed: {', '.join(allowed)}{suggest(str(loc[-1]), allowed)}" if allowed else ""
            problems.append(f"{where} field {field_name!r}: unknown key{hint}")
        elif not loc:  # a rule across fields (model_validator): its message names them
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(f"{where} field {field_name!r} = {value}: {err['msg'].removeprefix('Value error, ')}")
    return problems


def _short(value: Any, limit: int = 80) -> str:
    """A value as the user wrote it, cut to one short line."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """`python -m pytest_vllmgrid.grid FILE`: validate a grid and print each config's argv."""
    args = argv if argv is not None else sys.argv[1:]
    try:
        grid = load_grid(args[0])
    except GridError as exc:
        print(exc, file=sys.stderr)
        return 2
    for cfg in grid.configs:
        print(f"{cfg.name}{' (baseline)' if cfg.is_baseline else ''}: {' '.join(cfg.vllm_args())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
