"""Dry run and preflight tell the truth: estimates only from earlier runs of the same grid and model; a config's
GPUs, free disk and the model are checked before anything deploys."""

from __future__ import annotations

import pytest

from conftest import fake_grid, read_events

ONE_TEST = "def test_x(vllm_endpoint): pass"


def dry_run(pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, "--vllm-dry-run", "-p", "no:cacheprovider")


def test_dry_run_estimates_from_an_earlier_run_of_the_same_grid_and_model(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "base"}], name="mine"))
    pytester.makepyfile(test_x=ONE_TEST)
    pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = dry_run(pytester, "--grid", str(grid))
    result.stdout.fnmatch_lines(["1 config(s), 1 benchmark(s); estimates from the run in *results/*",
                                 "[[]1/1[]] base (baseline): ~*", "estimated total: *"])


def test_dry_run_does_not_estimate_from_another_models_run(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "base"}], name="mine"))
    pytester.makepyfile(test_x=ONE_TEST)
    pytester.runpytest_subprocess("--grid", str(grid), "--vllm-model", "tiny-cpu-model",
                                  "-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = dry_run(pytester, "--grid", str(grid))
    result.stdout.fnmatch_lines(["*no estimate: no earlier run of grid 'mine' with model 'fake-model' under *"])
    assert "estimated total" not in result.stdout.str() and "~" not in result.stdout.str()


def test_dry_run_does_not_estimate_from_another_grids_run(pytester, write_grid):
    other = write_grid(fake_grid([{"name": "base"}], name="other"), name="other.json")
    pytester.makepyfile(test_x=ONE_TEST)
    pytester.runpytest_subprocess("--grid", str(other), "-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = dry_run(pytester, "--grid", str(write_grid(fake_grid([{"name": "base"}], name="mine"))))
    result.stdout.fnmatch_lines(["*no estimate: no earlier run of grid 'mine'*"])


def test_a_tensor_parallel_config_fails_preflight_without_its_gpus(pytester, write_grid, events_file, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    grid = write_grid(fake_grid([{"name": "base"}, {"name": "tp2", "tensor_parallel_size": 2}]))
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *preflight of the process deployer failed: config 'tp2' needs 2 GPUs "
                                 "(tensor_parallel_size 2 x pipeline_parallel_size 1) but this machine has 0 visible "
                                 "through NVML (NVML*; run it on a machine with 2 GPUs*"])
    assert read_events(events_file) == []


def test_a_dry_run_of_a_tensor_parallel_config_fails_preflight_without_its_gpus(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "tp", "tensor_parallel_size": 2, "pipeline_parallel_size": 2}]))
    pytester.makepyfile(test_x=ONE_TEST)
    result = dry_run(pytester, "--grid", str(grid))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "config 'tp' needs 4 GPUs (tensor_parallel_size 2 x pipeline_parallel_size 2)" in result.stderr.str()
    assert "preflight passed" not in result.stdout.str()


def test_a_deselected_tensor_parallel_config_is_not_preflighted(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "base"}, {"name": "tp2", "tensor_parallel_size": 2}]))
    pytester.makepyfile(test_x=ONE_TEST)
    pytester.runpytest_subprocess("--grid", str(grid), "-k", "base", "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_default_cpu_grid_passes_preflight(pytester):
    pytester.makepyfile(test_x=ONE_TEST)
    result = dry_run(pytester)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["*dry run: grid *cpu-tiny.yaml is valid*process preflight passed*",
                                 "3 config(s), 3 benchmark(s); no estimate: *"])


def test_too_little_free_disk_fails_preflight(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "base"}]))
    pytester.makepyfile(test_x=ONE_TEST)
    result = dry_run(pytester, "--grid", str(grid), "--vllm-min-free-disk-gb", "1e9")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*preflight of the process deployer failed: only * GB free on the disk of the run's "
                                 "state (*); at least 1e+09 GB needed (--vllm-min-free-disk-gb)"])


def test_an_uncached_hub_model_fails_the_dry_runs_preflight_offline(pytester, write_grid, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(pytester.path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    grid = write_grid(fake_grid([{"name": "base"}], model="Qwen/Qwen3-32B-AWQ"))
    pytester.makepyfile(test_x=ONE_TEST)
    result = dry_run(pytester, "--grid", str(grid))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "server runs offline (HF_HUB_OFFLINE=1 in the environment): fetch it first with `huggingface-cli download " \
           "Qwen/Qwen3-32B-AWQ`" in result.stderr.str()
