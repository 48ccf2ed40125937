"""vLLM argv: options read back from a command (spellings, switches, `=` values) and grid flags merged in."""

from __future__ import annotations

import pytest

from pytest_vllmgrid.vllm_argv import (
    canonical_param,
    flag_groups,
    is_option,
    merge_command,
    option_dest,
    option_value,
    params_to_args,
    split_command,
    takes_value,
)


def test_a_command_string_splits_as_a_shell_would_and_a_list_becomes_strings() -> None:
    assert split_command(None) == []
    assert split_command("--model '/models/my model' --max-num-seqs 4") == [
        "--model", "/models/my model", "--max-num-seqs", "4"]
    assert split_command(["--port", 8000, "--enforce-eager"]) == ["--port", "8000", "--enforce-eager"]
    with pytest.raises(ValueError):  # unbalanced quote: shlex's own error, nothing swallowed
        split_command("--model 'x")


def test_an_option_is_two_dashes_and_a_name_not_a_negative_number() -> None:
    assert is_option("--max-num-seqs") and is_option("--port=8000")
    assert not is_option("-1") and not is_option("--") and not is_option("serve")


def test_option_dest_knows_vllms_spellings_aliases_and_negations() -> None:
    assert option_dest("--max-num-seqs") == "max_num_seqs"
    assert option_dest("--max-num-seqs=4") == "max_num_seqs"
    assert option_dest("--device-memory-utilization") == "gpu_memory_utilization"  # vLLM's own alias
    assert option_dest("--prefix-caching") == "enable_prefix_caching"  # the seeds' short name
    assert option_dest("--no-enable-prefix-caching") == "enable_prefix_caching"  # negatable switch
    assert option_dest("--no-max-num-seqs") == "no_max_num_seqs"  # not negatable: a name of its own
    assert option_dest("--no-such-flag") == "no_such_flag"  # unknown: its own name, as dest
    assert option_dest("serve") is None and option_dest("-x") is None
    assert canonical_param(" max-num-seqs ") == "max_num_seqs" and canonical_param("no_such") is None


def test_switches_take_no_value_and_unknown_options_are_assumed_to() -> None:
    assert not takes_value("enforce_eager", "--enforce-eager")
    assert takes_value("max_num_seqs", "--max-num-seqs")
    assert not takes_value("max_num_seqs", "--max-num-seqs=4")  # the value is in the token
    assert takes_value("no_such_flag", "--no-such-flag")


def test_flag_groups_split_positionals_options_and_their_values() -> None:
    argv = ["serve", "/m", "--enforce-eager", "--max-num-seqs", "4", "--port=8000",
            "--middleware", "a", "b", "--seed", "-1"]
    leading, groups = flag_groups(argv)
    assert leading == ["serve", "/m"]
    assert groups == [("enforce_eager", ["--enforce-eager"]), ("max_num_seqs", ["--max-num-seqs", "4"]),
                      ("port", ["--port=8000"]), ("middleware", ["--middleware", "a", "b"]),
                      ("seed", ["--seed", "-1"])]
    assert flag_groups([]) == ([], [])


def test_option_value_reads_either_spelling_and_the_first_occurrence() -> None:
    argv = ["--port", "8000", "--served-model-name=tiny", "--port", "9000", "--enforce-eager"]
    assert option_value(argv, "port") == "8000"
    assert option_value(argv, "served_model_name") == "tiny"
    assert option_value(argv, "enforce_eager") is None  # a switch has no value
    assert option_value(argv, "model") is None
    assert option_value(["--gpu-memory-utilization", "0.5"], "gpu_memory_utilization") == "0.5"


def test_merge_replaces_a_flag_whatever_spelling_either_side_uses() -> None:
    base = ["--device-memory-utilization", "0.5", "--max-num-seqs=16", "--enable-prefix-caching", "--dtype", "half"]
    merged = merge_command(base, ["--gpu-memory-utilization", "0.9", "--max-num-seqs", "4",
                                  "--no-enable-prefix-caching"])
    assert merged == ["--dtype", "half", "--gpu-memory-utilization", "0.9", "--max-num-seqs", "4",
                      "--no-enable-prefix-caching"]


def test_merge_keeps_unknown_base_flags_and_puts_grid_positionals_last() -> None:
    merged = merge_command(["serve", "--custom-thing", "x", "--port", "8000"], ["/extra", "--port", "8001"])
    assert merged == ["serve", "--custom-thing", "x", "--port", "8001", "/extra"]
    assert merge_command([], []) == []


def test_grid_params_become_argv_that_reads_back_to_the_same_values() -> None:
    params = {"max_num_seqs": 4, "enable_prefix_caching": False, "enforce_eager": True,
              "hf_overrides": {"b": 1, "a": [2]}, "max_model_len": None}
    args = params_to_args(params)
    assert args == ["--max-num-seqs", "4", "--no-enable-prefix-caching", "--enforce-eager",
                    "--hf-overrides", '{"a":[2],"b":1}']
    assert option_value(args, "max_num_seqs") == "4"
    assert option_value(args, "hf_overrides") == '{"a":[2],"b":1}'
    assert [dest for dest, _ in flag_groups(args)[1]] == ["max_num_seqs", "enable_prefix_caching",
                                                          "enforce_eager", "hf_overrides"]
