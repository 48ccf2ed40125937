"""Grid files: loading, aliases, argv rendering, matrix expansion, and one test per user mistake."""

from __future__ import annotations

import json

import pytest

from pytest_vllmgrid.grid import GridError, load_grid, params_to_args

from conftest import REPO, fake_grid


def write(tmp_path, content, name="grid.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def problems_of(tmp_path, content, name="grid.json") -> str:
    with pytest.raises(GridError) as info:
        load_grid(write(tmp_path, content, name))
    return str(info.value)


def test_seed_grid_has_the_12_named_configs_baseline_first():
    grid = load_grid(REPO / "configs" / "grid.json")
    assert len(grid.configs) == 12
    assert grid.names[0] == "baseline_reference" and grid.configs[0].is_baseline
    assert "prefix_only_high_memory_high_seqs" in grid.names


def test_seed_grid_benchmarks_are_sized_for_its_131k_context():
    """configs/grid.json had no benchmarks section: a 131k-context 32B model got 1,300-token prefixes and
    48-token turns."""
    from pytest_vllmgrid.placement import bench_settings

    grid = load_grid(REPO / "configs" / "grid.json")
    s = bench_settings(grid, None, repetitions=None, warmup=None)
    context = grid.configs[0].params["max_model_len"]
    assert context == 131072
    assert s.kv_prefix_tokens == [4000, 16000, 32000] and max(s.kv_prefix_tokens) + s.kv_max_tokens < context
    last_turn = s.conversation_system_tokens + s.conversation_turns * (s.conversation_user_tokens
                                                                      + s.conversation_max_tokens)
    assert s.conversation_turns == 15 and s.conversations == 3 and 10_000 <= last_turn < context
    assert s.reasoning_max_tokens >= 800 and s.stability_max_tokens >= 800  # the seeds' long answers (800-1500)
    assert s.long_prompt_tokens >= 8000 and s.request_timeout_s >= 300
    assert max(s.concurrency) == max(c.params.get("max_num_seqs") or 0 for c in grid.configs) == 128  # 32/64/128 differ
    assert grid.spec.primary_metric == "kv_cache[16000].ttft_hit_ms"


def test_null_passes_no_flag_and_false_turns_a_default_off():
    args = params_to_args({"enable_prefix_caching": False, "enable_chunked_prefill": True, "max_num_seqs": None})
    assert args == ["--no-enable-prefix-caching", "--enable-chunked-prefill"]


def test_seed_aliases_map_to_vllm_flags(tmp_path):
    grid = load_grid(write(tmp_path, {"configs": [{"name": "a", "gpu_memory": 0.9, "prefix_caching": True,
                                                   "chunked_prefill": False}]}))
    assert grid.configs[0].vllm_args() == ["--gpu-memory-utilization", "0.9", "--enable-prefix-caching",
                                          "--no-enable-chunked-prefill"]


def test_json_object_values_are_one_argv_element(tmp_path):
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    grid = load_grid(write(tmp_path, {"configs": [{"name": "a", "hf_overrides": {"rope_scaling": rope}}]}))
    args = grid.configs[0].vllm_args()
    assert args[0] == "--hf-overrides"
    assert json.loads(args[1]) == {"rope_scaling": rope} and len(args) == 2


def test_extra_args_and_env_pass_through(tmp_path):
    grid = load_grid(write(tmp_path, {"env": {"A": "1"}, "extra_args": ["--seed", "7"],
                                      "configs": [{"name": "a", "extra_args": ["--disable-log-requests"],
                                                   "env": {"B": "2"}}]}))
    cfg = grid.configs[0]
    assert cfg.vllm_args() == ["--seed", "7", "--disable-log-requests"]
    assert cfg.env == {"A": "1", "B": "2"}


def test_matrix_expands_a_cartesian_product_minus_excludes(tmp_path):
    grid = load_grid(write(tmp_path, """
matrix:
  name: "pc-{enable_prefix_caching}_seqs-{max_num_seqs}"
  params:
    enable_prefix_caching: [true, false]
    max_num_seqs: [32, 64]
  exclude:
    - {enable_prefix_caching: false, max_num_seqs: 64}
baseline: pc-false_seqs-32
""", "grid.yaml"))
    assert grid.names == ["pc-false_seqs-32", "pc-true_seqs-32", "pc-true_seqs-64"]


def test_priority_orders_configs_after_the_baseline(tmp_path):
    grid = load_grid(write(tmp_path, {"baseline": "b", "configs": [
        {"name": "a", "priority": 3}, {"name": "b", "priority": 9}, {"name": "c", "priority": 1}, {"name": "d"}]}))
    assert grid.names == ["b", "c", "a", "d"]


def test_config_hash_changes_with_the_flags_only(tmp_path):
    one = load_grid(write(tmp_path, {"configs": [{"name": "a", "max_num_seqs": 8}]})).configs[0]
    same = load_grid(write(tmp_path, {"configs": [{"name": "a", "description": "x", "max_num_seqs": 8}]})).configs[0]
    other = load_grid(write(tmp_path, {"configs": [{"name": "a", "max_num_seqs": 9}]})).configs[0]
    assert one.config_hash() == same.config_hash() != other.config_hash()


# ---- one test per kind of user mistake: file, config, field, value and what is allowed are named ----

def test_unknown_vllm_parameter_names_config_field_value_and_suggests(tmp_path):
    text = problems_of(tmp_path, {"configs": [{"name": "fast", "max_num_seq": 64}]})
    assert "grid.json" in text and "config 'fast'" in text and "'max_num_seq'" in text and "64" in text
    assert "did you mean max_num_seqs" in text


def test_unknown_top_level_key_lists_allowed_keys(tmp_path):
    text = problems_of(tmp_path, {"config": [{"name": "a"}]})
    assert "'config'" in text and "unknown key" in text and "configs" in text


def test_wrong_type_names_the_expected_type(tmp_path):
    text = problems_of(tmp_path, {"configs": [{"name": "a", "max_num_seqs": "many"}]})
    assert "config 'a'" in text and '"many"' in text and "integer" in text


def test_switch_given_a_number(tmp_path):
    text = problems_of(tmp_path, {"configs": [{"name": "a", "enable_prefix_caching": 3}]})
    assert "switch" in text and "true, false or null" in text


def test_value_outside_the_choices_lists_them(tmp_path):
    text = problems_of(tmp_path, {"configs": [{"name": "a", "dtype": "float8"}]})
    assert "bfloat16" in text and "'dtype'" in text


def test_duplicate_names(tmp_path):
    text = problems_of(tmp_path, {"configs": [{"name": "a"}, {"name": "a"}]})
    assert "duplicate name" in text and "'a'" in text


def test_empty_grid(tmp_path):
    assert "no configurations" in problems_of(tmp_path, {"configs": []})


def test_baseline_that_names_no_config(tmp_path):
    text = problems_of(tmp_path, {"baseline": "bse", "configs": [{"name": "base"}]})
    assert "baseline 'bse'" in text and "allowed: base" in text


def test_deployer_owned_option_is_refused(tmp_path):
    text = problems_of(tmp_path, {"configs": [{"name": "a", "port": 9000}]})
    assert "set by the deployer" in text and "`port`" in text


def test_bad_config_name(tmp_path):
    text = problems_of(tmp_path, {"configs": [{"name": "has space"}]})
    assert "config 'has space'" in text and "'name'" in text and "pattern" in text


def test_invalid_yaml_syntax_gives_line_and_column(tmp_path):
    text = problems_of(tmp_path, "configs:\n  - name: a\n   bad: [\n", "grid.yaml")
    assert "not valid YAML" in text and "line" in text


def test_invalid_json_syntax(tmp_path):
    assert "not valid JSON" in problems_of(tmp_path, '{"configs": [')


def test_missing_file(tmp_path):
    with pytest.raises(GridError, match="file not found"):
        load_grid(tmp_path / "nope.yaml")


def test_top_level_not_a_mapping(tmp_path):
    assert "top level must be a mapping" in problems_of(tmp_path, "[1, 2]", "grid.yaml")


def test_bare_list_of_configs_loads_like_a_configs_section(tmp_path):
    """The seeds' grid_search_configs.json: a JSON list of config objects with the seeds' field names."""
    seeds = [{"name": "baseline_reference", "gpu_memory": 0.95, "prefix_caching": False, "chunked_prefill": False},
             {"name": "custom_experiment", "gpu_memory": 0.93, "prefix_caching": True, "chunked_prefill": True,
              "max_num_seqs": 48, "max_num_batched_tokens": 6144}]
    bare = load_grid(write(tmp_path, seeds, "grid_search_configs.json"))
    wrapped = load_grid(write(tmp_path, {"configs": seeds}, "wrapped.json"))
    assert bare.names == wrapped.names == ["baseline_reference", "custom_experiment"]
    assert bare.baseline == "baseline_reference" and bare.name == "grid_search_configs"
    assert [c.vllm_args() for c in bare.configs] == [c.vllm_args() for c in wrapped.configs]
    assert bare.configs[1].vllm_args()[:2] == ["--gpu-memory-utilization", "0.93"]


def test_bare_list_entry_mistake_names_the_config(tmp_path):
    assert "config 'a' field 'max_num_seq'" in problems_of(tmp_path, [{"name": "a", "max_num_seq": 1}])


def test_matrix_exclude_with_unknown_key(tmp_path):
    text = problems_of(tmp_path, {"matrix": {"params": {"max_num_seqs": [1, 2]}, "exclude": [{"max_seqs": 1}]}})
    assert "matrix.exclude" in text and "max_seqs" in text


def test_user_mistake_is_a_usage_error_without_traceback(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "a", "max_num_seq": 1}]))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    result = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid grid file *grid.json:", "*config 'a' field 'max_num_seq'*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_bad_benchmark_setting_is_a_usage_error(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "a"}]))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-bench", "repetitons=3",
                                           "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --vllm-bench repetitons=3: unknown benchmark setting 'repetitons' "
                                 "(did you mean repetitions*?); allowed: repetitions, *"])


def test_replicas_deploy_every_config_again_interleaved_in_time(tmp_path):
    path = write(tmp_path, json.dumps(fake_grid([{"name": "a"}, {"name": "b", "max_num_seqs": 2}], baseline="a")))
    grid = load_grid(path, replicas=2)
    assert grid.names == ["a", "b", "a~2", "b~2"]
    assert [c.is_baseline for c in grid.configs] == [True, False, False, False]
    assert grid.config("a~2").config_hash() == grid.config("a").config_hash()  # same flags: an A/A twin
    with pytest.raises(GridError, match="--vllm-replicas = 0: must be at least 1"):
        load_grid(path, replicas=0)


def test_the_shipped_a_a_grid_has_two_identical_configs_and_a_known_slowdown():
    grid = load_grid(REPO / "configs" / "aa-cpu.yaml")
    hashes = {c.name: c.config_hash() for c in grid.configs}
    assert hashes["a1"] == hashes["a2"] and hashes["slow"] != hashes["a1"]
