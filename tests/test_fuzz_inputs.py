"""Bad grid and thresholds files, fuzzed: only GridError / ThresholdError may escape, fast, and a grid that loads
can be used (argv, hash, results dict); through pytest every one is a UsageError without a traceback."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_vllmgrid.grid import GridError, load_grid
from pytest_vllmgrid.thresholds import METRICS, ThresholdError, load_thresholds

from conftest import fake_grid
from reliability import reliability_case

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow], database=None)
_DIR = Path(tempfile.mkdtemp(prefix="vllmgrid-fuzz-"))
_counter = itertools.count()

# ---- strategies -------------------------------------------------------------------------------------------------

HUGE = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 1e308, -1e308, math.inf, -math.inf, math.nan, 0,
                        -1, 10**15 + 1])
UNICODE = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "é", "名前", "🙂" * 10, "\u202e", "a" * 5000, "${VLLM_API_KEY}", "--api-key=x", "\n", "*", "[", "."])
SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | HUGE | UNICODE
JSONISH = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(UNICODE, inner, max_size=5),
                       max_leaves=25)

GRID_KEYS = ["name", "description", "model", "served_model_name", "deployer", "vllm_command", "host", "port",
             "api_key_env", "startup_timeout_s", "env", "defaults", "extra_args", "baseline", "stop_when_met", "phases",
             "primary_metric", "thresholds", "benchmarks", "compose", "endpoint", "configs", "matrix"]
PARAM_KEYS = ["max_num_seqs", "max-num-seqs", "gpu_memory", "prefix_caching", "enable_prefix_caching", "block_size",
              "dtype", "max_model_len", "speculative_config", "enforce_eager", "port", "api_key", "no_such_flag",
              "name", "env", "extra_args", "priority", "phase"]
CONFIG = st.dictionaries(st.sampled_from(PARAM_KEYS) | UNICODE, JSONISH, max_size=6) | st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "c"])}, optional={k: SCALAR for k in PARAM_KEYS[:8]})
MATRIX = st.fixed_dictionaries({"params": st.dictionaries(st.sampled_from(PARAM_KEYS) | UNICODE,
                                                          st.lists(SCALAR, max_size=4), max_size=4)},
                               optional={"exclude": JSONISH, "name": UNICODE | JSONISH})
GRID = st.dictionaries(st.sampled_from(GRID_KEYS) | UNICODE, JSONISH, max_size=8) | st.fixed_dictionaries(
    {"configs": st.lists(CONFIG | JSONISH, max_size=4)},
    optional={k: JSONISH for k in ("baseline", "defaults", "env", "port", "startup_timeout_s", "phases")}
    | {"matrix": MATRIX | JSONISH})

METRIC_KEYS = [f"{test}.{metric}" for test, names in METRICS.items() for metric in names[:2]] + [
    "ttft", "ttft.nope", "nope.ttft_ms", "ttft[short].ttft_ms", ".", "a.b.c"]
BOUND = st.dictionaries(st.sampled_from(["stat", "min", "max", "max_vs_baseline_pct", "min_vs_baseline_pct",
                                         "configs", "when", "skip_baseline", "description"]) | UNICODE,
                        JSONISH, max_size=5)
THRESHOLDS = st.dictionaries(st.sampled_from(["thresholds", "goal", "telemetry", "description"]) | UNICODE,
                             JSONISH, max_size=4) | st.fixed_dictionaries(
    {"thresholds": st.dictionaries(st.sampled_from(METRIC_KEYS) | UNICODE, BOUND | JSONISH, max_size=4)},
    optional={"goal": st.lists(st.sampled_from(METRIC_KEYS) | UNICODE, max_size=3) | JSONISH,
              "telemetry": st.dictionaries(st.sampled_from(["vram_pct", "temp_c", "min_util_pct", "fail"]) | UNICODE,
                                           SCALAR, max_size=4) | JSONISH})

YAML_TRICKS = [
    "", "~", "- a\n- b", "configs: !!python/object:os.system {}", "a: &x [1, *x]", "configs: &c [*c]",
    "configs:\n  - name: a\n    when: 2001-12-14", "configs:\n  - name: a\n    dtype: !!binary aGVsbG8=",
    "configs: !!set {a, b}", "{[1, 2]: 3}", "configs: [{name: a, max_num_seqs: 0x7fffffffffffffffffff}]",
    "configs: [{name: a, gpu_memory: .nan}]", "configs: [{name: a, max_num_seqs: .inf}]", "\t- tab",
    "configs: [{name: a, 1: 2}]", "configs: [{name: a, null: 2}]", "configs: [{name: a, true: 2}]",
    "configs: [{name: a}]\nbaseline: [b]", "configs: [{name: \"a\\0b\"}]", "configs: [{name: a, env: {X: \"\\0\"}}]",
    "model: \"/tmp/\\0\"\nconfigs: [{name: a}]", "configs: [{name: a, extra_args: [\"--x\\0\"]}]",
    "thresholds:\n  ttft.ttft_ms: {max: 1, when: {d: 2001-01-01}}", "thresholds: &t {ttft.ttft_ms: {max: 1, configs: *t}}",
    "%YAML 1.1\n---\nconfigs: []", "--- a\n--- b", "configs: [{name: a}]\n...\nx: y", "\ufeffconfigs: [{name: a}]",
    "[" * 50 + "]" * 50, "[" * 5000, "{" * 5000, "a: " + "[" * 3000 + "]" * 3000,
]


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """YAML whose aliases expand to width**levels values (a 'billion laughs' document)."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(width))}]")
    return "\n".join(lines)


BOMBS = {
    "grid_configs": alias_bomb() + "\nconfigs: *a9\n",
    "grid_defaults": alias_bomb() + "\nconfigs: [{name: a}]\ndefaults: {speculative_config: {x: *a9}}\n",
    "grid_param": alias_bomb() + "\nconfigs: [{name: a, speculative_config: {x: *a9}}]\n",
    "grid_env": alias_bomb() + "\nconfigs: [{name: a}]\nenv: *a9\n",
    "thresholds": alias_bomb() + "\nthresholds: *a9\n",
    "thresholds_when": alias_bomb() + "\nthresholds: {ttft.ttft_ms: {max: 1, when: {x: *a9}}}\n",
}
MATRIX_BOMB = {"matrix": {"params": {k: list(range(10)) for k in
                                     ("max_num_seqs", "block_size", "max_model_len", "seed", "max_num_batched_tokens",
                                      "max_logprobs", "tensor_parallel_size", "pipeline_parallel_size", "swap_space",
                                      "max_seq_len_to_capture")}}}


# ---- helpers ----------------------------------------------------------------------------------------------------

class Tally:
    """Outcomes and the slowest call over the examples of one property."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.slowest = 0.0

    def run(self, check, path: Path, limit_s: float = 1.0) -> None:
        """Run a loader check on `path`, count its outcome, fail beyond `limit_s` (no hang on any input)."""
        start = time.monotonic()
        outcome = check(path)
        took = time.monotonic() - start
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.slowest = max(self.slowest, took)
        assert took < limit_s, f"{path.name} took {took:.2f} s"

    def summary(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        return f"{sum(self.outcomes.values())} inputs: {counts}; slowest call {self.slowest:.3f} s"


def write(text: str, suffix: str) -> Path:
    """A fresh file holding `text`."""
    path = _DIR / f"f{next(_counter)}{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def dump(data: object, suffix: str) -> str:
    """`data` as JSON or YAML text (Python's JSON writes NaN/Infinity, which json.loads reads back)."""
    if suffix == ".json":
        return json.dumps(data)
    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, ValueError, RecursionError):
        return json.dumps(data)  # JSON is YAML too


def load_grid_safely(path: Path) -> str:
    """load_grid raises only GridError; a grid it accepts can be turned into argv, hashes and results."""
    try:
        grid = load_grid(path)
    except GridError as exc:
        assert str(exc).startswith(f"invalid grid file {path}")
        return "GridError"
    for cfg in grid.configs:
        argv = cfg.vllm_args()
        cfg.config_hash()
        json.dumps(cfg.to_dict(), allow_nan=True)
        assert "\0" not in "".join(argv), f"NUL in argv of {cfg.name}"
    return "usable grid"


def load_thresholds_safely(path: Path) -> str:
    """load_thresholds raises only ThresholdError."""
    try:
        load_thresholds(path)
    except ThresholdError as exc:
        assert str(exc).startswith(f"thresholds file {path}")
        return "ThresholdError"
    return "loaded"


# ---- properties: each hypothesis search is one ledger case --------------------------------------------------------

@FUZZ
@given(data=GRID | JSONISH, suffix=st.sampled_from([".json", ".yaml"]))
def fuzz_grid_structures(tally: Tally, data, suffix) -> None:
    tally.run(load_grid_safely, write(dump(data, suffix), suffix))


@FUZZ
@given(data=THRESHOLDS | JSONISH, suffix=st.sampled_from([".json", ".yaml"]))
def fuzz_thresholds_structures(tally: Tally, data, suffix) -> None:
    tally.run(load_thresholds_safely, write(dump(data, suffix), suffix))


@FUZZ
@given(text=st.text(max_size=300) | st.sampled_from(YAML_TRICKS), suffix=st.sampled_from([".json", ".yaml", ".yml"]))
@example(text="configs: [{name: a, max_num_seqs: 1}]", suffix=".yaml")
def fuzz_grid_text(tally: Tally, text, suffix) -> None:
    tally.run(load_grid_safely, write(text, suffix))


@FUZZ
@given(text=st.text(max_size=300) | st.sampled_from(YAML_TRICKS), suffix=st.sampled_from([".json", ".yaml"]))
def fuzz_thresholds_text(tally: Tally, text, suffix) -> None:
    tally.run(load_thresholds_safely, write(text, suffix))


@FUZZ
@given(raw=st.binary(max_size=300))
def fuzz_bytes(tally: Tally, raw) -> None:
    path = _DIR / f"b{next(_counter)}.yaml"
    path.write_bytes(raw)
    tally.run(load_grid_safely, path)
    tally.run(load_thresholds_safely, path)


@FUZZ
@given(value=JSONISH | HUGE, key=st.sampled_from(GRID_KEYS + [f"configs.{k}" for k in PARAM_KEYS]),
       suffix=st.sampled_from([".json", ".yaml"]))
def fuzz_one_field(tally: Tally, value, key, suffix) -> None:
    grid = fake_grid([{"name": "a", "max_num_seqs": 2}, {"name": "b"}], baseline="a")
    if key.startswith("configs."):
        grid["configs"][1][key.split(".", 1)[1]] = value
    else:
        grid[key] = value
    tally.run(load_grid_safely, write(dump(grid, suffix), suffix))


PROPERTIES = {
    "random grid structures": (fuzz_grid_structures, "nested JSON/YAML values, grid keys, wrong types, unicode, "
                               "huge numbers"),
    "random thresholds structures": (fuzz_thresholds_structures, "nested values, metric keys, bound fields"),
    "random text as a grid": (fuzz_grid_text, "any text and YAML tricks (tags, anchors, deep nesting, NUL)"),
    "random text as thresholds": (fuzz_thresholds_text, "any text and YAML tricks"),
    "random bytes as grid and thresholds": (fuzz_bytes, "undecodable bytes"),
    "one field of a valid grid set to anything": (fuzz_one_field, "each top-level and config key, every value "
                                                  "kind, huge and NaN numbers"),
}


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_fuzzed_inputs_give_only_the_loaders_own_error_quickly(name: str) -> None:
    search, inputs = PROPERTIES[name]
    usable = "; a grid that loads yields argv, hash and results dict" if "grid" in name else ""
    with reliability_case("bad input", f"fuzz: {name}", f"{inputs}: only GridError/ThresholdError escapes, each "
                          f"call < 1 s{usable}") as case:
        tally = Tally()
        try:
            search(tally)
        finally:
            case.observe(tally.summary())


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_yaml_alias_bombs_are_refused_quickly(name: str) -> None:
    check = load_thresholds_safely if name.startswith("thresholds") else load_grid_safely
    with reliability_case("bad input", f"YAML alias bomb ({name})", "10^9 values once expanded: refused with "
                          "the loader's error in < 1 s, no memory blow-up") as case:
        tally = Tally()
        path = write(BOMBS[name], ".yaml")
        tally.run(check, path)
        with pytest.raises((GridError, ThresholdError)) as caught:
            (load_thresholds if name.startswith("thresholds") else load_grid)(path)
        case.observe(f"{str(caught.value).splitlines()[-1].strip(' -')[:120]} ({tally.slowest:.3f} s)")


def test_a_matrix_of_ten_billion_combinations_is_refused_quickly() -> None:
    with reliability_case("bad input", "matrix of 10^10 combinations", "refused naming the count, in < 1 s") as case:
        path = write(json.dumps(MATRIX_BOMB), ".json")
        tally = Tally()
        tally.run(load_grid_safely, path)
        with pytest.raises(GridError, match="matrix") as caught:
            load_grid(path)
        case.observe(f"{caught.value.problems[0][:120]} ({tally.slowest:.3f} s)")


def test_yaml_tricks_are_handled_quickly() -> None:
    with reliability_case("bad input", f"{len(YAML_TRICKS)} YAML tricks as grid and thresholds", "python tags, "
                          "self-referencing anchors, dates, binary, sets, non-string keys, NUL, 5000-deep nesting: "
                          "only the loader's error, < 1 s each") as case:
        tally = Tally()
        try:
            for text in YAML_TRICKS:
                tally.run(load_grid_safely, write(text, ".yaml"))
                tally.run(load_thresholds_safely, write(text, ".yaml"))
        finally:
            case.observe(tally.summary())


# ---- through pytest: a UsageError, never a traceback ------------------------------------------------------------

BAD_FILES = {
    "grid_not_yaml": ("grid.yaml", "configs: [", None),
    "grid_wrong_type": ("grid.json", json.dumps(fake_grid([{"name": "a", "max_num_seqs": "many"}])), None),
    "grid_huge_port": ("grid.json", json.dumps(fake_grid([{"name": "a"}], port=10**30)), None),
    "grid_unicode_key": ("grid.json", json.dumps(fake_grid([{"name": "a", "名前🙂": 1}])), None),
    "grid_nul_in_model": ("grid.json", json.dumps({**fake_grid([{"name": "a"}]), "model": "/tmp/x\0y"}), None),
    "grid_nul_in_env": ("grid.json", json.dumps(fake_grid([{"name": "a", "env": {"X": "a\0b"}}])), None),
    "grid_alias_bomb": ("grid.yaml", BOMBS["grid_param"], None),
    "grid_matrix_bomb": ("grid.json", json.dumps({**fake_grid([]), **MATRIX_BOMB}), None),
    "grid_deep": ("grid.json", "[" * 100_000 + "]" * 100_000, None),
    "thresholds_unknown_metric": ("grid.json", json.dumps(fake_grid([{"name": "a"}], thresholds="th.yaml")),
                                  "thresholds:\n  ttft.nope: {max: 1}\n"),
    "thresholds_alias_bomb": ("grid.json", json.dumps(fake_grid([{"name": "a"}], thresholds="th.yaml")),
                              BOMBS["thresholds"]),
    "thresholds_binary": ("grid.json", json.dumps(fake_grid([{"name": "a"}], thresholds="th.yaml")),
                          "thresholds: !!binary aGVsbG8=\n"),
}


@pytest.mark.parametrize("case_name", sorted(BAD_FILES))
def test_a_bad_file_is_a_usage_error_without_a_traceback(pytester: pytest.Pytester, case_name: str) -> None:
    grid_name, grid_text, thresholds_text = BAD_FILES[case_name]
    with reliability_case("bad input", case_name, "pytest exits with a usage error (4) naming the file; "
                          "no traceback, no deploy, within seconds") as case:
        (pytester.path / grid_name).write_text(grid_text, encoding="utf-8")
        if thresholds_text is not None:
            (pytester.path / "th.yaml").write_text(thresholds_text, encoding="utf-8")
        pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
        start = time.monotonic()
        result = pytester.runpytest_subprocess("--grid", grid_name, "-p", "no:cacheprovider", timeout=60)
        took = time.monotonic() - start
        output = result.stdout.str() + result.stderr.str()
        lines = result.stderr.lines
        error_lines = [line for line in lines if line.startswith("ERROR:")]
        first = lines.index(error_lines[0]) if error_lines else 0
        reason = " ".join(line.strip() for line in lines[first:first + 2]) if error_lines else "(no ERROR line)"
        case.observe(f"exit {int(result.ret)} in {took:.1f} s: {reason[:160]}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR, output[-3000:]
        assert "Traceback" not in output and "INTERNALERROR" not in output, output[-3000:]
        assert error_lines and (grid_name in error_lines[0] or "th.yaml" in error_lines[0]), output[-3000:]
        assert "deploying" not in output
