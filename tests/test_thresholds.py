"""Thresholds: loading, unknown metrics, absolute and baseline-relative bounds, failure messages."""

from __future__ import annotations

import json
import shutil

import pytest

from pytest_vllmgrid.judge import judge_bound as judge, unsure
from pytest_vllmgrid.measurement import Measurement
from pytest_vllmgrid.results import TestResult
from pytest_vllmgrid.thresholds import Bound, ThresholdError, load_thresholds

from conftest import REPO, fake_grid


def sample_metric(values, unit, better):
    return Measurement(method="test").add_sample("m", values, unit, better)


def test_shipped_threshold_files_load():
    for name in ("thresholds.yaml", "thresholds-cpu.yaml"):
        spec = load_thresholds(REPO / "configs" / name).spec
        assert spec.thresholds and spec.goal


def test_seed_criteria_are_in_the_gpu_file():
    spec = load_thresholds(REPO / "configs" / "thresholds.yaml").spec
    assert spec.thresholds["kv_cache.ttft_miss_ms"].max_vs_baseline_pct == 20
    assert spec.thresholds["kv_cache.ttft_hit_ms"].max_vs_baseline_pct == -30
    assert spec.thresholds["kv_cache.acceleration"].min == 1.5
    assert spec.thresholds["kv_cache.gain_pct"].min == 30


def test_unknown_metric_is_refused_with_the_allowed_names(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("thresholds:\n  kv_cache.acceleraton: {min: 2}\n")
    with pytest.raises(ThresholdError, match="did you mean acceleration"):
        load_thresholds(path)


def test_unknown_benchmark_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("thresholds:\n  kvcache.acceleration: {min: 2}\n")
    with pytest.raises(ThresholdError, match="unknown benchmark 'kvcache'.*allowed: kv_cache"):
        load_thresholds(path)


def test_a_bound_needs_a_limit(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("thresholds:\n  ttft.ttft_ms: {stat: p95}\n")
    with pytest.raises(ThresholdError, match="at least one of min, max"):
        load_thresholds(path)


def test_absolute_bound_failure_names_metric_stat_value_ci_and_bound():
    metric = sample_metric([100, 110, 120, 130, 140], "ms", "lower")
    [verdict] = judge("ttft.ttft_ms", Bound(max=90), metric, None, "cfg", False)
    assert verdict.passed is False
    assert "ttft.ttft_ms p50 = 120 ms [95% CI" in verdict.message and "<= 90 ms required: FAILED" in verdict.message


def test_relative_bound_uses_the_baseline_value():
    metric = sample_metric([50, 52, 54], "ms", "lower")
    base = sample_metric([100, 100, 100], "ms", "lower")
    [verdict] = judge("kv_cache.ttft_hit_ms", Bound(max_vs_baseline_pct=-30), metric, base, "cfg", False)
    assert verdict.passed is True and verdict.bound == pytest.approx(70) and verdict.baseline_value == 100
    assert "(baseline 100 ms -30%)" in verdict.message


def test_relative_bound_without_a_baseline_is_not_judged_and_never_a_pass():
    metric = sample_metric([50, 52, 54], "ms", "lower")
    [verdict] = judge("kv_cache.ttft_hit_ms", Bound(max_vs_baseline_pct=-30), metric, None, "cfg", False)
    assert verdict.passed is None and verdict.status == "not judged"
    assert "kv_cache.ttft_hit_ms p50 max -30% vs baseline: not judged: no baseline measurement" in verdict.message
    assert unsure(TestResult(thresholds=[verdict])) == [verdict.message]  # xfail, never a silent pass


def test_when_limits_a_bound_to_matching_configs(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("thresholds:\n  kv_cache.acceleration: {min: 1.5, when: {prefix_caching: true}}\n")
    rules = load_thresholds(path)
    assert rules.for_test("kv_cache", "a", {"enable_prefix_caching": True})
    assert not rules.for_test("kv_cache", "b", {"enable_prefix_caching": False})


def test_benchmark_fails_when_a_bound_is_broken_and_records_the_verdict(pytester, write_grid):
    shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")
    (pytester.path / "th.yaml").write_text("thresholds:\n  ttft[short].ttft_ms: {max_vs_baseline_pct: 50}\n")
    configs = [{"name": "base", "env": {"FAKE_VLLM_TTFT_MS": "5"}},
               {"name": "slow", "env": {"FAKE_VLLM_TTFT_MS": "60"}}]
    grid = write_grid(fake_grid(configs, baseline="base", thresholds="th.yaml"))
    result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*slow: ttft*short*.ttft_ms p50 = * ms, ratio to baseline x*–* <= * ms required "
                                 "(baseline * ms +50%): FAILED*"])
    verdicts = json.loads((pytester.path / "out" / "slow.json").read_text())["tests"]["ttft[short]"]["thresholds"]
    assert [(v["passed"], v["status"]) for v in verdicts] == [(False, "fail")]
    assert verdicts[0]["ci_low"] > verdicts[0]["bound"]  # failed on its whole interval, not on its point


def relative_ttft_grid(pytester, write_grid):
    shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")
    (pytester.path / "th.yaml").write_text("thresholds:\n  ttft[short].ttft_ms: {max_vs_baseline_pct: 50}\n")
    configs = [{"name": "base", "env": {"FAKE_VLLM_TTFT_MS": "5"}},
               {"name": "slow", "env": {"FAKE_VLLM_TTFT_MS": "60"}}]
    return write_grid(fake_grid(configs, baseline="base", thresholds="th.yaml", name="ttft-pair"))


def test_a_relative_bound_with_the_baseline_deselected_and_no_stored_run_says_so_and_does_not_pass(pytester,
                                                                                                   write_grid):
    """`-k prefix_only` deselected the baseline and the relative criteria passed silently."""
    grid = relative_ttft_grid(pytester, write_grid)
    result = pytester.runpytest_subprocess("--grid", str(grid), "-k", "slow", "--results-dir", "out", "-rx",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, xfailed=1)
    result.stdout.fnmatch_lines(["XFAIL*ttft*short*slow*ttft[[]short[]].ttft_ms p50 max +50% vs baseline: "
                                 "not judged: no baseline measurement*"])
    [verdict] = json.loads((pytester.path / "out" / "slow.json").read_text())["tests"]["ttft[short]"]["thresholds"]
    assert verdict["status"] == "not judged" and "no baseline measurement" in verdict["message"]


def test_a_relative_bound_with_the_baseline_deselected_uses_the_latest_complete_run_of_the_grid(pytester,
                                                                                                write_grid):
    grid = relative_ttft_grid(pytester, write_grid)
    first = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")  # results/<stamp>/
    first.assert_outcomes(passed=3, failed=1)
    [stored] = [p.parent for p in (pytester.path / "results").glob("*/manifest.json")]
    result = pytester.runpytest_subprocess("--grid", str(grid), "-k", "slow", "--results-dir", "out",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*slow: ttft*short*.ttft_ms p50 = * ms, ratio to baseline x*–* <= * ms required "
                                 f"(baseline * ms from stored run *{stored.name} +50%): FAILED*"])


def test_unknown_metric_in_the_thresholds_file_is_a_usage_error(pytester, write_grid):
    (pytester.path / "th.yaml").write_text("thresholds:\n  ttft.latency: {max: 1}\n")
    grid = write_grid(fake_grid([{"name": "a"}], thresholds="th.yaml"))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    result = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: thresholds file *th.yaml:", "*metric 'ttft.latency': ttft has no metric 'latency'; allowed: ttft_ms*"])
