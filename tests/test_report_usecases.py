"""What the report recommends and why (issue 17.6, 17.10, 17.11): the configs left out of the ranking beside the
recommendation, recommendations per use case with 'to validate', the deployment checklist, a failed baseline's
wording and trade-offs, the flags a server showed it runs in the ranking, the terminal table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_run
from test_gate import latencies, store_run, throughput_measurement

from pytest_vllmgrid.measurement import HIGHER, LOWER, Measurement
from pytest_vllmgrid.report import build_report, terminal_table, write_reports
from pytest_vllmgrid.results import ConfigResult
from pytest_vllmgrid.results.models import EffectiveConfig, FlagCheck
from pytest_vllmgrid.thresholds import ThresholdError, load_thresholds

DATA = Path(__file__).parent / "data"


def kv(hit_ms: float, accel: tuple[float, float, float], seed: int) -> Measurement:
    """A kv_cache measurement: MISS/HIT samples and an acceleration value with its CI."""
    m = Measurement(method="synthetic")
    m.add_sample("ttft_miss_ms", latencies(60.0, seed, 24), "ms", LOWER, headline=True)
    m.add_sample("ttft_hit_ms", latencies(hit_ms, seed + 1, 24), "ms", LOWER, headline=True)
    m.add_value("acceleration", accel[0], "x", HIGHER, headline=True, ci=(accel[1], accel[2]))
    return m


def conversation(ttft_ms: float, hit_rate: float, seed: int) -> Measurement:
    m = Measurement(method="synthetic")
    m.add_sample("ttft_ms", latencies(ttft_ms, seed, 24), "ms", LOWER)
    m.add_value("server_hit_rate_pct", hit_rate, "%")
    return m


def reasoning(decode: float, answer_ms: float, seed: int, *, valid: bool = True) -> Measurement:
    m = Measurement(method="synthetic")
    m.add_sample("decode_tok_s", latencies(decode, seed, 12), "tok/s", HIGHER)
    m.add_sample("answer_ttft_ms", latencies(answer_ms, seed + 1, 12), "ms", LOWER)
    if not valid:
        m.metrics["decode_tok_s"].validity = "invalid"
        m.metrics["decode_tok_s"].validity_reason = "every answer was cut at max_tokens"
    return m


def tools(success: float, e2e_ms: float, seed: int) -> Measurement:
    m = Measurement(method="synthetic")
    m.add_value("success_rate_pct", success, "%", HIGHER)
    m.add_sample("e2e_ms", latencies(e2e_ms, seed, 12), "ms", LOWER)
    return m


def set_status(store, config: str, test: str, status: str, message: str) -> None:
    def change(result: ConfigResult) -> None:
        result.tests[test].status, result.tests[test].message = status, message
    store.update_config(config, change)


@pytest.fixture
def use_case_run(tmp_path: Path):
    """Three configs that each win a different use case; `chat`'s conversation test was not conclusive."""
    configs = {
        "base": {"kv_cache": kv(60.0, (1.0, 0.97, 1.03), 1), "long_conversation": conversation(40.0, 0.0, 2),
                 "reasoning": reasoning(100.0, 300.0, 3), "tool_calling[weather]": tools(100.0, 400.0, 4),
                 "throughput[4]": throughput_measurement(latencies(800.0, 5), concurrency=4)},
        "chat": {"kv_cache": kv(15.0, (4.0, 3.6, 4.4), 11), "long_conversation": conversation(20.0, 85.0, 12),
                 "reasoning": reasoning(98.0, 310.0, 13), "tool_calling[weather]": tools(50.0, 420.0, 14),
                 "throughput[4]": throughput_measurement(latencies(820.0, 15), concurrency=4)},
        "think": {"kv_cache": kv(58.0, (1.0, 0.96, 1.05), 21), "long_conversation": conversation(41.0, 0.0, 22),
                  "reasoning": reasoning(140.0, 200.0, 23), "tool_calling[weather]": tools(100.0, 380.0, 24),
                  "throughput[4]": throughput_measurement(latencies(600.0, 25), concurrency=4)},
    }
    store = store_run(tmp_path / "run", configs, baseline="base")
    set_status(store, "chat", "long_conversation", "inconclusive",
               "_pytest.outcomes.XFailed: not conclusive: chat: long_conversation.degradation_pct value = 15 % "
               "[95% CI -25–77] <= 20 % required: INCONCLUSIVE")
    return store


def cases(report) -> dict:
    return {case.key: case for case in report.use_cases}


def test_each_use_case_names_its_config_and_the_figures_behind_it(use_case_run) -> None:
    report = build_report(use_case_run)
    by_key = cases(report)
    assert [c.title for c in report.use_cases] == ["Conversational agents", "Long reasoning", "Tool calling",
                                                   "Generic production"]
    assert by_key["conversational"].config == "chat"
    assert any(f.startswith("long_conversation.server_hit_rate_pct 85") for f in by_key["conversational"].figures)
    assert by_key["long_reasoning"].config == "think" and by_key["long_reasoning"].to_validate == []
    assert by_key["long_reasoning"].figures[0].startswith("reasoning.decode_tok_s 1")
    assert by_key["tool_calling"].config == "think"  # 100 % like base, and faster
    markdown = write_reports(use_case_run)["markdown"].read_text()
    section = markdown.split("## Recommendations per use case\n\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines()[1].startswith("- Long reasoning: think (reasoning.decode_tok_s ")


def test_a_use_case_resting_on_a_test_that_was_not_conclusive_says_to_validate(use_case_run) -> None:
    case = cases(build_report(use_case_run))["conversational"]
    assert case.config == "chat"
    assert case.to_validate == ["long_conversation not conclusive: long_conversation.degradation_pct value = 15 % "
                                "[95% CI -25–77] <= 20 % required: INCONCLUSIVE"]
    assert " — to validate: long_conversation not conclusive: " in case.line()


def test_a_tool_calling_pick_below_the_success_floor_is_still_to_validate(tmp_path: Path) -> None:
    # the recorded H200 run's case: every config's tool calls mostly fail; the best is named, never as deployable
    configs = {name: {"tool_calling[weather]": tools(success, 400.0, seed)}
               for name, success, seed in (("base", 0.0, 1), ("b", 8.33, 2))}
    case = cases(build_report(store_run(tmp_path / "run", configs, baseline="base")))["tool_calling"]
    assert case.config == "b"
    assert case.to_validate == ["tool_calling.success_rate_pct below 80.0 % on 1 of 1 tests (lowest 8.33): the best "
                                "measured is not good enough"]


def test_invalid_figures_never_recommend_and_none_valid_says_to_validate(tmp_path: Path) -> None:
    store = store_run(tmp_path / "run", {"base": {"reasoning": reasoning(100.0, 300.0, 1, valid=False)},
                                         "fast": {"reasoning": reasoning(150.0, 200.0, 2, valid=False)}})
    case = cases(build_report(store))["long_reasoning"]
    assert case.config is None and case.to_validate[0] == "no config has valid figures for it"
    assert "every answer was cut at max_tokens" in case.to_validate[1]
    assert case.line().startswith("Long reasoning: to validate — to validate: no config has valid figures")


def test_the_thresholds_profile_weighs_generic_production(use_case_run, tmp_path: Path) -> None:
    rules = tmp_path / "thresholds.yaml"
    rules.write_text("profiles:\n  generic_production:\n    kv_cache.ttft_hit_ms: 3\n    throughput.output_tok_s: 1\n")
    use_case_run.update_manifest(profiles=load_thresholds(rules).spec.profiles)  # as the session records it
    case = cases(build_report(use_case_run))["generic_production"]
    assert case.config == "chat" and case.weights == {"kv_cache.ttft_hit_ms": 3.0, "throughput.output_tok_s": 1.0}
    assert "profiles.generic_production" in case.note
    use_case_run.update_manifest(profiles={"generic_production": {"throughput.output_tok_s": 1.0}})
    assert cases(build_report(use_case_run))["generic_production"].config == "think"


def test_a_misspelt_profile_metric_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    rules = tmp_path / "thresholds.yaml"
    rules.write_text("profiles:\n  generic_production:\n    throughput.output_toks: 1\n")
    with pytest.raises(ThresholdError) as err:
        load_thresholds(rules)
    problem = str(err.value).splitlines()[1]
    assert problem.startswith("  - profiles.generic_production: metric 'throughput.output_toks': throughput has no "
                              "metric 'output_toks'") and "did you mean" in problem and "output_tok_s" in problem


def test_the_checklist_says_which_families_passed_and_that_gpu_telemetry_was_not_run(use_case_run) -> None:
    report = build_report(use_case_run)
    items = {item.family: item for item in report.checklist.items}
    assert report.checklist.config == report.optimal.name
    assert items["kv_cache"].done and items["kv_cache"].state == "passed on valid figures (1 test)"
    assert not items["stability"].done and items["stability"].state == "not run in this run"
    assert not items["GPU telemetry"].done and items["GPU telemetry"].state.startswith("not run")
    markdown = write_reports(use_case_run)["markdown"].read_text()
    assert f"## Deployment checklist: {report.optimal.name}" in markdown and "- [x] kv_cache: passed" in markdown


def test_the_cpu_run_checklist_gives_the_reason_telemetry_was_not_run(tmp_path: Path) -> None:
    report = build_report(copy_run(DATA / "v1_cpu_run", tmp_path / "cpu"))
    if report.checklist is None:
        pytest.fail(f"no recommended config: {report.recommendation}")
    telemetry = report.checklist.items[-1]
    assert telemetry.family == "GPU telemetry" and not telemetry.done and telemetry.state.startswith("not run")


def test_an_interrupted_config_is_named_beside_the_recommendation_with_why(tmp_path: Path) -> None:
    store = store_run(tmp_path / "run", {"base": {"kv_cache": kv(60.0, (1.0, 0.97, 1.03), 1)},
                                         "fast": {"kv_cache": kv(10.0, (6.0, 5.5, 6.5), 2)}}, baseline="base")
    store.update_config("fast", lambda r: setattr(r, "status", "interrupted"))
    report = build_report(store)
    assert report.recommendation.startswith("Keep the baseline base: no other ranked config beats its")
    markdown = write_reports(store)["markdown"].read_text()
    section = markdown.split("## Recommendation\n\n", 1)[1].split("\n## ", 1)[0]
    assert "- not ranked: fast: interrupted before it finished" in section
    assert "not ranked: fast: interrupted before it finished" in terminal_table(store)


def failed_baseline_run(tmp_path: Path):
    """The baseline died mid-run after its kv_cache test; the best remaining config is slower on HIT."""
    store = store_run(tmp_path / "run", {"base": {"kv_cache": kv(10.0, (6.0, 5.8, 6.2), 1)},
                                         "a": {"kv_cache": kv(24.0, (2.4, 2.3, 2.5), 2)},
                                         "b": {"kv_cache": kv(30.0, (2.0, 1.9, 2.1), 3)}}, baseline="base")

    def died(result: ConfigResult) -> None:
        result.status, result.deployment.died = "failed", {"reason": "container exited (exit code 137)"}
    store.update_config("base", died)
    return store


def test_with_the_baseline_failed_a_significantly_slower_pick_is_called_worse(tmp_path: Path) -> None:
    report = build_report(failed_baseline_run(tmp_path), primary="kv_cache.ttft_hit_ms")
    assert report.optimal.name == "a" and report.optimal.vs_baseline_ci_pct[0] > 0  # the CI excludes 0
    text = report.recommendation
    assert "not statistically significant" not in text
    assert text.startswith("a ranks first among the ranked configs on kv_cache.ttft_hit_ms (")
    assert "but it is significantly worse than the baseline base: +" in text
    assert "(the baseline failed: server died during the benchmarks (container exited (exit code 137)); its " \
           "figures are partial)" in text


def test_a_baseline_without_the_primary_figure_is_no_comparison_rather_than_not_significant(tmp_path: Path) -> None:
    store = store_run(tmp_path / "run", {"base": {"ttft[short]": throughput_measurement(latencies(800.0, 1))},
                                         "a": {"kv_cache": kv(24.0, (2.4, 2.3, 2.5), 2)},
                                         "b": {"kv_cache": kv(30.0, (2.0, 1.9, 2.1), 3)}}, baseline="base")
    text = build_report(store, primary="kv_cache.ttft_hit_ms").recommendation
    assert "not statistically significant" not in text and "no baseline value to compare" not in text
    assert text.startswith("a ranks first on kv_cache.ttft_hit_ms (") and \
        "but the baseline base has no valid kv_cache.ttft_hit_ms figure to compare it with: measure" in text


def test_with_the_baseline_failed_trade_offs_list_a_worse_acceleration(tmp_path: Path) -> None:
    report = build_report(failed_baseline_run(tmp_path), primary="kv_cache.ttft_hit_ms")
    [line] = [t for t in report.tradeoffs if t.startswith("kv_cache.acceleration")]
    assert line.startswith("kv_cache.acceleration: a is -60.0% vs the baseline base (95% CI ")
    assert line.endswith("its figures are partial): worse")


def test_the_ranking_shows_a_flag_the_server_runs_that_the_grid_does_not_state(tmp_path: Path) -> None:
    store = store_run(tmp_path / "run", {"base": {"kv_cache": kv(60.0, (1.0, 0.97, 1.03), 1)},
                                         "compose16": {"kv_cache": kv(30.0, (2.0, 1.9, 2.1), 2)}},
                      params={"base": {"max_num_seqs": 64}, "compose16": {}})
    seen = EffectiveConfig(checks=[FlagCheck(flag="max_num_seqs", seen={"log": 16}, status="seen")])
    store.update_config("compose16", lambda r: setattr(r.deployment, "effective", seen))
    paths = write_reports(store)
    row = next(line for line in paths["markdown"].read_text().splitlines() if line.startswith("| 1 | compose16"))
    assert "| 16 (server) |" in row and "default" not in row
    assert "Max seqs 16 (server)" in paths["html"].read_text()


def test_the_terminal_table_prints_full_status_words_and_readable_metric_names(tmp_path: Path) -> None:
    store = copy_run(DATA / "h200_run", tmp_path / "h200")
    store.update_config("baseline", lambda r: setattr(r, "status", "interrupted"))
    header, *rows = terminal_table(store)[:4]
    assert header.split("  ")[0:2] == ["rank", "config"] and "KV 4000 MISS TTFT" in header
    assert "KV 4000 HIT TTFT" in header and "kv_cache[" not in header
    assert any(" interrupted " in row for row in rows)  # not cut to 10 characters
    data = json.loads(write_reports(store)["json"].read_text())
    assert {c["key"] for c in data["use_cases"]} >= {"conversational", "long_reasoning", "tool_calling",
                                                     "generic_production"}


UP = "def test_up(vllm_endpoint):\n    assert vllm_endpoint.base_url\n"


def run_grid(pytester: pytest.Pytester, write_grid, thresholds: str) -> pytest.RunResult:
    from conftest import fake_grid

    pytester.makepyfile(test_up=UP)
    (pytester.path / "thresholds.yaml").write_text(thresholds)
    grid = write_grid(fake_grid([{"name": "base"}]))
    return pytester.runpytest_subprocess("--grid", str(grid), "--vllm-thresholds", "thresholds.yaml",
                                         "--results-dir", "out", "-p", "no:cacheprovider", timeout=90)


@pytest.mark.timeout(120)
def test_a_run_records_the_thresholds_profile_and_its_report_weighs_by_it(pytester: pytest.Pytester,
                                                                           write_grid) -> None:
    result = run_grid(pytester, write_grid, "profiles:\n  generic_production: {ttft.ttft_ms: 2}\n")
    result.assert_outcomes(passed=1)
    manifest = json.loads((pytester.path / "out" / "manifest.json").read_text())
    assert manifest["profiles"] == {"generic_production": {"ttft.ttft_ms": 2.0}}
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    generic = next(c for c in report["use_cases"] if c["key"] == "generic_production")
    assert generic["weights"] == {"ttft.ttft_ms": 2.0} and "profiles.generic_production" in generic["note"]


@pytest.mark.timeout(120)
def test_a_misspelt_profile_metric_stops_the_run_before_anything_deploys(pytester: pytest.Pytester,
                                                                          write_grid) -> None:
    result = run_grid(pytester, write_grid, "profiles:\n  generic_production: {ttft.ttft_msec: 1}\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "profiles.generic_production: metric 'ttft.ttft_msec': ttft has no metric 'ttft_msec'" in err
    assert "did you mean" in err and "Traceback" not in err and not (pytester.path / "out").exists()


def test_a_trade_off_on_a_percentage_is_in_points(tmp_path: Path) -> None:
    def stability(pct: float) -> Measurement:
        m = Measurement(method="synthetic")
        m.add_value("degradation_pct", pct, "%", LOWER, headline=True, ci=(pct - 5, pct + 5))
        return m

    configs = {"base": {"kv_cache": kv(60.0, (1.0, 0.97, 1.03), 1), "stability": stability(-2.99)},
               "fast": {"kv_cache": kv(15.0, (4.0, 3.6, 4.4), 2), "stability": stability(3.05)}}
    report = build_report(store_run(tmp_path / "run", configs, baseline="base"))
    [line] = [t for t in report.tradeoffs if t.startswith("stability.degradation_pct")]
    assert line == "stability.degradation_pct: best is base (-2.99 %); fast is +6.0 pts from it"  # was -202.0%


def test_an_unknown_warnings_kind_is_its_first_clause_cut_between_words() -> None:
    from pytest_vllmgrid.report.anomalies import KIND_CHARS, group_warnings, warning_kind

    long = ("capacity search stopped by max_probes before the bracket narrowed to the tolerance and the budget "
            "was nowhere near spent yet, 3 probes: see the details")
    kind = warning_kind(long)
    assert kind.endswith("…") and len(kind) <= KIND_CHARS + 1 and long.startswith(kind[:-1])
    assert kind[:-1].rstrip() == kind[:-1] and long[len(kind) - 1] == " "  # no word cut in half
    short = warning_kind("server slow for 12 requests: details")
    assert short == "server slow for N requests"
    groups = group_warnings("base", [f"ttft: {long}", f"kv_cache: {long.replace('3 probes', '4 probes')}"])
    assert [(g.kind, g.count) for g in groups] == [(kind, 2)]
