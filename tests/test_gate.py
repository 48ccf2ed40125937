"""Regression gate: METRIC:PCT specs, verdicts on stored raw samples, and --vllm-compare in a pytest run."""

from __future__ import annotations

from pytest_vllmgrid.results import ConfigResult, DeploymentRecord, Measurement, RunManifest, TestResult

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, fake_grid
from pytest_vllmgrid.gate import (ALIASES, INFO, MISSING, NOT_JUDGED, OK, REGRESSION, GateError, compare_runs,
                                  judge_test, open_runs, parse_spec, parse_specs, run_dirs, summary_lines,
                                  unmatched_configs, unmatched_specs)
from pytest_vllmgrid.measurement import HIGHER, LOWER, Measurement
from pytest_vllmgrid.results import ResultsStore

N = 30


def latencies(median_ms: float, seed: int, n: int = N) -> list[float]:
    """Lognormal TTFTs (CV about 20%) around a median."""
    return list(median_ms * np.exp(np.random.default_rng(seed).normal(0.0, 0.2, n)))


def ttft_measurement(values: list[float]) -> Measurement:
    """A stored ttft[short]-like measurement."""
    m = Measurement(method="synthetic")
    m.add_sample("ttft_ms", values, "ms", LOWER, headline=True)
    m.add_sample("e2e_ms", [v * 3 for v in values], "ms", LOWER)
    m.add_value("errors", 0, "requests", LOWER)
    return m


def throughput_measurement(e2e_ms: list[float], concurrency: int = 4, tokens: int = 64) -> Measurement:
    """A stored throughput[N] measurement as the benchmark writes it: the rate as a value, per-request samples."""
    m = Measurement(method="synthetic")
    m.add_sample("e2e_ms", e2e_ms, "ms", LOWER)
    m.add_value("output_tok_s", concurrency * tokens / (float(np.mean(e2e_ms)) / 1000), "tok/s", HIGHER,
                headline=True)
    return m


def store_run(root: Path, configs: dict[str, dict[str, dict]], baseline: str | None = None,
              params: dict[str, dict] | None = None) -> ResultsStore:
    """A results directory written through ResultsStore: config -> test key -> measurement dict."""
    store = ResultsStore(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, tests in configs.items():
        store.reset_config(name, {"params": (params or {}).get(name, {}), "config_hash": f"hash-{name}"})
        for key, measurement in tests.items():
            store.write_test(name, key, TestResult(measurement=measurement, status="passed"))

        def complete(result: ConfigResult) -> None:
            result.status = "complete"
            result.deployment = DeploymentRecord(status="success", startup_time_seconds=1.5, health_check_attempts=2)
        store.update_config(name, complete)
    store.write_manifest(RunManifest(status="complete", baseline=baseline or next(iter(configs))))
    return store


def placed(store: ResultsStore, config: str, host: str | None, gpu_uuids: list[str] | None = None) -> ResultsStore:
    """Record where a stored config was measured, as the session does at deploy time."""
    def where(result: ConfigResult) -> None:
        result.deployment.host, result.deployment.gpu_uuids = host, gpu_uuids
    store.update_config(config, where)
    return store


def test_alias_expands_to_test_metric_and_statistic() -> None:
    spec = parse_spec("ttft_p50:10%")
    assert (spec.test, spec.metric, spec.statistic, spec.allowed_pct) == ("ttft[short]", "ttft_ms", "p50", 10.0)


def test_full_key_with_statistic_and_bare_percentage() -> None:
    spec = parse_spec("ttft[long].ttft_ms:p95:15")
    assert (spec.test, spec.metric, spec.statistic, spec.allowed_pct) == ("ttft[long]", "ttft_ms", "p95", 15.0)


def test_bare_benchmark_name_matches_every_parameter() -> None:
    spec = parse_spec("throughput:5%")
    assert spec.matches("throughput[4]", "output_tok_s") and spec.matches("throughput[16]", "output_tok_s")
    assert not spec.matches("throughput[4]", "ttft_ms")


def test_bracketed_spec_matches_exactly_or_by_star() -> None:
    assert parse_spec("ttft[short].ttft_ms:5%").matches("ttft[short]", "ttft_ms")
    assert not parse_spec("ttft[short].ttft_ms:5%").matches("ttft[long]", "ttft_ms")
    assert parse_spec("throughput[*].output_tok_s:5%").matches("throughput[16]", "output_tok_s")


def test_unknown_metric_is_an_error_listing_allowed_names() -> None:
    with pytest.raises(GateError) as err:
        parse_spec("ttft_p5:10%")
    assert "did you mean ttft_p95" in str(err.value) or "did you mean ttft_p50" in str(err.value)
    assert "allowed metric names: ttft_p50" in str(err.value) and "kv_cache.ttft_hit_ms" in str(err.value)


@pytest.mark.parametrize("text, fragment", [("ttft_p50", "expected METRIC:PCT"), ("ttft_p50:ten%", "not a percentage"),
                                            ("ttft_p50:-5%", ">= 0"), ("ttft.ttft_ms:p42:5%", "unknown statistic")])
def test_malformed_specs_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(GateError, match=fragment):
        parse_spec(text)


def test_ini_string_holds_several_specs() -> None:
    assert [s.text for s in parse_specs("ttft_p50:10%, throughput:5%\n ttft_hit:20%")] == [
        "ttft_p50:10%", "throughput:5%", "ttft_hit:20%"]


def test_a_a_samples_pass() -> None:
    old, new = ttft_measurement(latencies(80, seed=1)), ttft_measurement(latencies(80, seed=2))
    [verdict] = judge_test("baseline", "ttft[short]", TestResult(measurement=old), TestResult(measurement=new),
                           [parse_spec("ttft_p50:10%")])
    assert verdict.status == OK and not verdict.failed


def test_thirty_percent_slower_fails_with_metric_old_new_ci_and_allowed() -> None:
    old, new = latencies(80, seed=1), [v * 1.3 for v in latencies(80, seed=2)]
    [verdict] = judge_test("baseline", "ttft[short]", TestResult(measurement=ttft_measurement(old)),
                           TestResult(measurement=ttft_measurement(new)), [parse_spec("ttft_p50:10%")])
    assert verdict.status == REGRESSION
    assert verdict.ci_low_pct > 0 and verdict.change_pct > 10
    message = verdict.message()
    assert message.startswith("baseline: ttft[short].ttft_ms p50 ")
    assert " ms (+" in message and "95% CI" in message and "allowed +10%" in message and message.endswith("REGRESSION")
    assert "\n" not in message


def test_slower_but_within_the_allowed_percentage_passes() -> None:
    old, new = latencies(80, seed=1), [v * 1.3 for v in latencies(80, seed=2)]
    [verdict] = judge_test("baseline", "ttft[short]", TestResult(measurement=ttft_measurement(old)),
                           TestResult(measurement=ttft_measurement(new)), [parse_spec("ttft_p50:50%")])
    assert verdict.status == OK and verdict.significant
    assert "significantly worse (within +50%)" in verdict.verdict_text()


def test_every_alias_names_a_metric_the_benchmarks_store() -> None:
    for alias in ALIASES:
        assert parse_spec(f"{alias}:5%").allowed_pct == 5.0


def test_throughput_drop_is_judged_through_the_requests_latencies() -> None:
    old = throughput_measurement(latencies(800, seed=3))
    new = throughput_measurement([v / 0.7 for v in latencies(800, seed=4)])
    [verdict] = judge_test("baseline", "throughput[4]", TestResult(measurement=old), TestResult(measurement=new),
                           [parse_spec("throughput:5%")])
    assert verdict.status == REGRESSION and verdict.statistic == "via 1/mean(e2e_ms)"
    assert verdict.change_pct == pytest.approx((verdict.new / verdict.old - 1) * 100, abs=0.01)
    assert verdict.ci_low_pct < verdict.change_pct < verdict.ci_high_pct < -5
    assert verdict.allowed_text() == "-5%"


def test_throughput_rise_is_not_a_regression() -> None:
    old = throughput_measurement(latencies(800, seed=3))
    new = throughput_measurement([v / 1.3 for v in latencies(800, seed=4)])
    [verdict] = judge_test("baseline", "throughput[4]", TestResult(measurement=old), TestResult(measurement=new),
                           [parse_spec("throughput:5%")])
    assert verdict.status == OK and "significantly better" in verdict.verdict_text()


def test_a_higher_is_better_metric_with_raw_samples_is_judged_on_them() -> None:
    def rates(scale: float, seed: int) -> dict:
        m = Measurement(method="synthetic")
        m.add_sample("output_tok_s", [v * scale for v in latencies(500, seed)], "tok/s", HIGHER)
        return TestResult(measurement=m)
    [verdict] = judge_test("baseline", "throughput[4]", rates(1.0, 5), rates(0.7, 6), [parse_spec("throughput:5%")])
    assert verdict.status == REGRESSION and verdict.statistic == "p50"


def test_fewer_than_ten_samples_are_not_judged_even_when_much_slower() -> None:
    old, new = ttft_measurement(latencies(80, 1, n=8)), ttft_measurement([v * 2 for v in latencies(80, 2, n=8)])
    [verdict] = judge_test("baseline", "ttft[short]", TestResult(measurement=old), TestResult(measurement=new),
                           [parse_spec("ttft_p50:10%")])
    assert verdict.status == NOT_JUDGED and "fewer than 10" in verdict.note


def test_a_value_without_raw_samples_is_not_judged() -> None:
    old, new = ttft_measurement(latencies(80, 1)), ttft_measurement(latencies(80, 2))
    [verdict] = judge_test("baseline", "ttft[short]", TestResult(measurement=old), TestResult(measurement=new),
                           [parse_spec("ttft.errors:0%")])
    assert verdict.status == NOT_JUDGED and "no raw samples" in verdict.note


def test_a_test_missing_from_the_old_run_is_reported_missing() -> None:
    [verdict] = judge_test("baseline", "ttft[short]", None, TestResult(measurement=ttft_measurement(latencies(80, 1))),
                           [parse_spec("ttft_p50:10%")])
    assert verdict.status == MISSING and "OLD" in verdict.note


def test_without_specs_every_headline_sample_is_shown_not_gated() -> None:
    old, new = ttft_measurement(latencies(80, 1)), ttft_measurement([v * 2 for v in latencies(80, 2)])
    verdicts = judge_test("baseline", "ttft[short]", TestResult(measurement=old), TestResult(measurement=new), [])
    assert [(v.metric, v.status) for v in verdicts] == [("ttft[short].ttft_ms", INFO)]
    assert not verdicts[0].failed and verdicts[0].verdict_text() == "significantly worse"


def test_runs_are_matched_by_config_name(tmp_path: Path) -> None:
    old = store_run(tmp_path / "old", {"baseline": {"ttft[short]": ttft_measurement(latencies(80, 1))},
                                       "prefix": {"ttft[short]": ttft_measurement(latencies(40, 2))}})
    new = store_run(tmp_path / "new", {"prefix": {"ttft[short]": ttft_measurement(latencies(52, 3))},
                                       "chunked": {"ttft[short]": ttft_measurement(latencies(80, 4))}})
    specs = [parse_spec("ttft_p50:10%"), parse_spec("ttft_hit:10%")]
    verdicts = compare_runs(old, new, specs)
    assert [(v.config, v.status) for v in verdicts] == [("prefix", REGRESSION)]
    assert [s.text for s in unmatched_specs(specs, verdicts)] == ["ttft_hit:10%"]


def one_config_run(root: Path, median_ms: float, seed: int, host: str, gpu_uuids: list[str] | None) -> ResultsStore:
    return placed(store_run(root, {"prefix": {"ttft[short]": ttft_measurement(latencies(median_ms, seed))}}),
                  "prefix", host, gpu_uuids)


def test_old_and_new_measured_on_different_gpus_are_marked_in_every_verdict_and_the_summary(tmp_path: Path) -> None:
    old = one_config_run(tmp_path / "old", 40, 1, "h200-a", ["GPU-8c3f5e1a-0000-0000-0000-000000000000"])
    new = one_config_run(tmp_path / "new", 52, 2, "h200-b", ["GPU-1d2e3f4a-0000-0000-0000-000000000000"])
    [verdict] = compare_runs(old, new, [parse_spec("ttft_p50:10%")])
    assert verdict.machines == ("measured on different machines: OLD on h200-a (GPU-8c3f5e1a); NEW on h200-b "
                                "(GPU-1d2e3f4a): the comparison crosses machines")
    assert verdict.message().endswith(f"REGRESSION ({verdict.machines})")
    lines = summary_lines([verdict], [parse_spec("ttft_p50:10%")], old.root)
    assert (f"CAUTION: prefix: {verdict.machines}", True) in lines


def test_old_and_new_on_one_host_and_gpu_set_get_no_machine_note(tmp_path: Path) -> None:
    gpus = ["GPU-8c3f5e1a-0000-0000-0000-000000000000"]
    old, new = (one_config_run(tmp_path / side, 40, seed, "h200-a", gpus) for side, seed in (("old", 1), ("new", 2)))
    verdicts = compare_runs(old, new, [parse_spec("ttft_p50:10%")])
    assert verdicts and all(v.machines == "" for v in verdicts)
    assert not any("CAUTION" in line for line, _ in summary_lines(verdicts, [], old.root))


def test_vllmgrid_compare_prints_the_machine_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_vllmgrid.cli import compare_command

    old = one_config_run(tmp_path / "old", 40, 1, "h200-a", None)
    new = one_config_run(tmp_path / "new", 40, 2, "h200-b", None)
    compare_command(old.root, new.root, ["ttft_p50:10%"])
    assert "CAUTION: prefix: measured on different machines: OLD on h200-a (GPU UUIDs not read); NEW on h200-b " \
        "(GPU UUIDs not read): the comparison crosses machines" in capsys.readouterr().out


# ---- several runs per side: runs as the unit ------------------------------------------------------

def shifted_runs(median_ms: float, seeds: list[int], run_sigma: float = 0.05) -> list[list[float]]:
    """One lognormal TTFT sample per run, each run shifted as a whole by a lognormal factor."""
    return [[v * float(np.exp(np.random.default_rng(1000 + s).normal(0.0, run_sigma))) for v in latencies(median_ms, s)]
            for s in seeds]


def as_tests(runs: list[list[float]]) -> list[dict]:
    return [TestResult(measurement=ttft_measurement(values)) for values in runs]


def test_several_runs_per_side_are_judged_with_the_run_as_the_unit() -> None:
    old, same, slow = shifted_runs(80, [1, 2, 3]), shifted_runs(80, [4, 5, 6]), shifted_runs(104, [7, 8, 9])
    spec = [parse_spec("ttft_p50:10%")]
    [aa] = judge_test("baseline", "ttft[short]", as_tests(old), as_tests(same), spec)
    assert aa.status == OK and (aa.runs_old, aa.runs_new, aa.n_old, aa.n_new) == (3, 3, 3 * N, 3 * N)
    assert "runs as the unit" in aa.method and "Welch" in aa.method
    [verdict] = judge_test("baseline", "ttft[short]", as_tests(old), as_tests(slow), spec)
    assert verdict.status == REGRESSION and verdict.ci_low_pct > 0
    assert verdict.old == pytest.approx(float(np.exp(np.mean(np.log([np.median(r) for r in old])))))


def test_one_new_run_against_three_old_runs_borrows_their_variance() -> None:
    old = shifted_runs(80, [1, 2, 3])
    [verdict] = judge_test("baseline", "ttft[short]", as_tests(old), TestResult(measurement=ttft_measurement(
        latencies(160, 9))), [parse_spec("ttft_p50:10%")])
    assert verdict.status == REGRESSION and (verdict.runs_old, verdict.runs_new) == (3, 1)
    assert "one run on the NEW side" in verdict.method


def test_one_run_per_side_is_the_request_bootstrap_and_says_so() -> None:
    old, new = ttft_measurement(latencies(80, seed=1)), ttft_measurement([v * 1.3 for v in latencies(80, seed=2)])
    [verdict] = judge_test("baseline", "ttft[short]", [TestResult(measurement=old)], [TestResult(measurement=new)],
                           [parse_spec("ttft_p50:10%")])
    assert verdict.status == REGRESSION and "between-run variance not accounted for" in verdict.method
    lines = [line for line, _ in summary_lines([verdict], [parse_spec("ttft_p50:10%")], "old")]
    assert lines[0] == "compared with old" and "not run-to-run variance" in lines[1]
    assert "runs" not in lines[2].split()  # no runs column for one run per side


def test_a_run_with_too_few_samples_is_not_judged() -> None:
    old = shifted_runs(80, [1, 2]) + [latencies(80, 3, n=8)]
    [verdict] = judge_test("baseline", "ttft[short]", as_tests(old), as_tests(shifted_runs(200, [4, 5])),
                           [parse_spec("ttft_p50:10%")])
    assert verdict.status == NOT_JUDGED and "a run with n=8" in verdict.note


def test_throughput_over_several_runs_is_judged_through_their_latencies() -> None:
    old = [TestResult(measurement=throughput_measurement(r)) for r in shifted_runs(800, [1, 2, 3])]
    new = [TestResult(measurement=throughput_measurement([v / 0.7 for v in r])) for r in shifted_runs(800, [4, 5, 6])]
    [verdict] = judge_test("baseline", "throughput[4]", old, new, [parse_spec("throughput:5%")])
    assert verdict.status == REGRESSION and verdict.statistic == "via 1/mean(e2e_ms)"
    assert (verdict.runs_old, verdict.runs_new) == (3, 3)
    assert verdict.ci_low_pct < verdict.change_pct < verdict.ci_high_pct < -5


def test_compare_runs_takes_several_stores_per_side(tmp_path: Path) -> None:
    def runs(prefix: str, median: float, seeds: list[int], extra: str | None = None) -> list[ResultsStore]:
        return [store_run(tmp_path / f"{prefix}{i}", {"baseline": {"ttft[short]": ttft_measurement(values)},
                                                      **({extra: {}} if extra and i == 0 else {})})
                for i, values in enumerate(shifted_runs(median, seeds))]
    olds, slows = runs("old", 80, [1, 2, 3], extra="gone"), runs("slow", 120, [4, 5, 6])
    [verdict] = compare_runs(olds, slows, [parse_spec("ttft_p50:10%")])
    assert verdict.status == REGRESSION and (verdict.runs_old, verdict.runs_new) == (3, 3)
    assert unmatched_configs(olds, slows) == (["gone"], [])
    lines = [line for line, _ in summary_lines([verdict], [], "old0, old1, old2")]
    assert "runs as the unit" in lines[1] and lines[2].split()[3] == "runs" and " 3/3 " in lines[3]


def test_compare_dirs_split_on_commas_and_repeat_and_refuse_duplicates(tmp_path: Path) -> None:
    assert run_dirs(["a,b", "c"]) == ["a", "b", "c"]
    assert run_dirs("a b,\n c") == ["a", "b", "c"] and run_dirs(None) == []
    store_run(tmp_path / "a", {"baseline": {"ttft[short]": ttft_measurement(latencies(80, 1))}})
    with pytest.raises(GateError, match="given twice"):
        open_runs([tmp_path / "a", str(tmp_path / "a")], "--vllm-compare")


# ---- wired into pytest ------------------------------------------------------------------------

def gate_run(pytester: pytest.Pytester, write_grid, out: str, ttft_ms: int, *extra: str) -> pytest.RunResult:
    """Run the shipped ttft benchmark on the fake vLLM, its first token delayed by `ttft_ms`."""
    grid = write_grid(fake_grid([{"name": "baseline", "env": {"FAKE_VLLM_TTFT_MS": str(ttft_ms)}}]),
                      name=f"grid-{out}.json")
    return pytester.runpytest_subprocess("benchmarks_ttft.py", "--grid", str(grid), "--results-dir", out,
                                         "--vllm-repetitions", "12", "-p", "no:cacheprovider", *extra)


@pytest.fixture
def ttft_benchmark(pytester: pytest.Pytester) -> None:
    """The shipped TTFT benchmark, copied into the pytester directory."""
    pytester.makepyfile(benchmarks_ttft=(REPO / "benchmarks" / "test_ttft.py").read_text())
    pytester.makeini("[pytest]\npython_files = benchmarks_*.py\n")


def test_a_clearly_slower_config_fails_its_benchmark_with_a_one_line_reason(pytester, write_grid, ttft_benchmark):
    gate_run(pytester, write_grid, "old", 5).assert_outcomes(passed=2)
    result = gate_run(pytester, write_grid, "new", 60, "--vllm-compare", "old", "--vllm-compare-fail", "ttft_p50:10%")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "regression vs old: baseline: ttft[[]short[]].ttft_ms p50 * -> * ms (+*95% CI*), allowed +10%: REGRESSION",
        "*regression gate: 1 regression(s) in 1 comparison(s)*",
        "FAILED *test_ttft[[]baseline-short[]]*"])
    stored = json.loads((pytester.path / "new" / "baseline.json").read_text())
    assert stored["tests"]["ttft[short]"]["status"] == "failed"
    assert stored["tests"]["ttft[short]"]["regression_gate"]["verdicts"][0]["status"] == REGRESSION
    manifest = json.loads((pytester.path / "new" / "manifest.json").read_text())
    assert manifest["regression_gate"]["failed"] == 1
    assert "Regression gate" in (pytester.path / "new" / "report.html").read_text()


def test_a_regression_against_a_run_on_another_machine_says_so(pytester, write_grid, ttft_benchmark):
    gate_run(pytester, write_grid, "old", 5).assert_outcomes(passed=2)
    placed(ResultsStore(pytester.path / "old"), "baseline", "another-host", ["GPU-11111111-2222"])
    result = gate_run(pytester, write_grid, "new", 60, "--vllm-compare", "old", "--vllm-compare-fail", "ttft_p50:10%")
    result.assert_outcomes(passed=1, failed=1)
    note = (f"measured on different machines: OLD on another-host (GPU-11111111); NEW on {socket.gethostname()} "
            "(*): the comparison crosses machines")
    result.stdout.fnmatch_lines([f"regression vs old: baseline: ttft[[]short[]].ttft_ms p50 *: REGRESSION ({note})",
                                 f"CAUTION: baseline: {note}"])


def test_the_same_config_again_passes_the_gate(pytester, write_grid, ttft_benchmark):
    gate_run(pytester, write_grid, "old", 20).assert_outcomes(passed=2)
    result = gate_run(pytester, write_grid, "new", 20, "--vllm-compare", "old", "--vllm-compare-fail", "ttft_p50:10%",
                      "--vllm-compare-fail", "ttft_long_p50:10%")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*compared with *old", "*regression gate: passed (2 comparison(s))*"])


def test_compare_without_fail_specs_prints_the_table_and_fails_nothing(pytester, write_grid, ttft_benchmark):
    gate_run(pytester, write_grid, "old", 5).assert_outcomes(passed=2)
    result = gate_run(pytester, write_grid, "new", 60, "--vllm-compare", "old")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*baseline*ttft[[]short[]].ttft_ms*p50*significantly worse*"])


def test_gate_mistakes_are_usage_errors(pytester, write_grid, ttft_benchmark):
    result = gate_run(pytester, write_grid, "new", 5, "--vllm-compare", "nowhere",
                      "--vllm-compare-fail", "ttft_p50:10%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vllm-compare nowhere: no such results directory*"])
    result = gate_run(pytester, write_grid, "new", 5, "--vllm-compare-fail", "ttft_p50:10%")
    result.stderr.fnmatch_lines(["*--vllm-compare-fail needs --vllm-compare RUN_DIR*"])


def test_pytest_help_lists_the_gate_options(pytester):
    result = pytester.runpytest_subprocess("--help", "-p", "no:cacheprovider")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*--vllm-compare=VLLM_COMPARE*", "*--vllm-compare-fail=VLLM_COMPARE_FAIL*"])


def test_several_compared_runs_through_repeated_and_comma_separated_options(pytester, write_grid, ttft_benchmark):
    for name in ("old1", "old2", "old3"):
        gate_run(pytester, write_grid, name, 20).assert_outcomes(passed=2)
    result = gate_run(pytester, write_grid, "new", 200, "--vllm-compare", "old1", "--vllm-compare", "old2,old3",
                      "--vllm-compare-fail", "ttft_p50:10%")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "regression vs old1, old2, old3: baseline: ttft[[]short[]].ttft_ms p50 * -> * ms (+*95% CI*), allowed +10%: "
        "REGRESSION",
        "*compared with old1, old2, old3",
        "*runs as the unit*",
        "*baseline*ttft[[]short[]].ttft_ms*p50*3/1*REGRESSION",
        "*regression gate: 1 regression(s) in 1 comparison(s)*"])
    manifest = json.loads((pytester.path / "new" / "manifest.json").read_text())
    assert manifest["regression_gate"]["compared_runs"] == ["old1", "old2", "old3"]
    [verdict] = manifest["regression_gate"]["verdicts"]
    assert (verdict["runs_old"], verdict["runs_new"]) == (3, 1) and "one run on the NEW side" in verdict["method"]
