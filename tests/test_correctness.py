"""Output correctness: answers compared token by token with the baseline's, JSON-schema outcomes, tool calls
streamed vs not (pytest_vllmgrid/correctness.py), and benchmarks/test_correctness.py against the fake vLLM."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO, fake_grid
from pytest_vllmgrid.bench import build_settings
from pytest_vllmgrid.correctness import (STRUCTURED_SCHEMA, agreement_validity, compare_outputs, compare_sequences,
                                         greedy_prompts, prompt_id, schema_outcome, structured_prompts,
                                         tool_calls_identical)
from pytest_vllmgrid.judge import NO_BASELINE, judge_bound, unsure
from pytest_vllmgrid.report.correctness import correctness_markdown
from pytest_vllmgrid.results.models import ConfigResult, GeneratedOutput, Measurement, TestResult
from pytest_vllmgrid.thresholds import Bound, load_thresholds


def out(pid: str, ids: list[int] | None, text: str = "", error: str | None = None) -> GeneratedOutput:
    return GeneratedOutput(prompt_id=pid, token_ids=ids, text=text, error=error)


def test_identical_answers_are_exact_matches_with_full_agreement_and_no_divergence() -> None:
    answers = [out("a", [1, 2, 3]), out("b", [4, 5])]
    agreement = compare_outputs(answers, [out("a", [1, 2, 3]), out("b", [4, 5])])
    assert (agreement.exact_matches, agreement.mismatched, agreement.first_divergence) == (2, [], None)
    assert agreement.agreements_pct == [100.0, 100.0] and agreement.unit == "token ids"
    assert agreement_validity(agreement) == ("valid", None)


def test_a_changed_token_gives_its_position_as_first_divergence_and_the_share_of_positions_that_agree() -> None:
    agreement = compare_outputs([out("a", [1, 2, 9, 4]), out("b", [7])], [out("a", [1, 2, 3, 4]), out("b", [7])])
    [changed] = agreement.mismatched
    assert (changed.prompt_id, changed.first_divergence, changed.agreement) == ("a", 2, 0.75)
    assert agreement.exact_matches == 1 and agreement.first_divergence == 2


def test_an_answer_that_stops_early_diverges_where_the_shorter_one_ends() -> None:
    result = compare_sequences("p", [1, 2], [1, 2, 3, 4])
    assert (result.exact, result.first_divergence, result.agreement) == (False, 2, 0.5)


def test_answers_without_token_ids_are_compared_word_by_word() -> None:
    agreement = compare_outputs([out("a", None, "the cat sat")], [out("a", [1, 2, 3], "the dog sat")])
    assert agreement.unit == "words" and agreement.first_divergence == 1


def test_no_reference_answers_is_not_judged_as_no_baseline_measurement() -> None:
    status, reason = agreement_validity(None, " (stored run results/x)")
    assert status == "inconclusive" and reason.startswith(NO_BASELINE) and "results/x" in reason


def test_a_reference_of_another_prompt_set_or_a_failed_request_makes_the_comparison_invalid() -> None:
    other_set = compare_outputs([out("a", [1]), out("z", [2])], [out("a", [1])])
    assert agreement_validity(other_set)[0] == "invalid" and other_set.not_in_reference == ["z"]
    failed = compare_outputs([out("a", None, error="HTTP 500")], [out("a", [1])])
    assert agreement_validity(failed) == ("invalid", "1 prompt(s) unanswered on one side (failed requests)")


def test_the_prompt_set_is_fixed_by_seed_and_a_prompts_id_by_its_messages_and_max_tokens() -> None:
    assert greedy_prompts(6, 0) == greedy_prompts(6, 0) != greedy_prompts(6, 1)
    first = greedy_prompts(6, 0)[0]
    assert prompt_id(first, 48) == prompt_id(json.loads(json.dumps(first)), 48) != prompt_id(first, 32)


@pytest.mark.parametrize(("text", "outcome"), [
    ('{"city": "Porto", "unit": "celsius", "days": 3, "alert": false}', "valid"),
    ('{"city": "Porto", "unit": "celsius", "days": 3', "invalid_json"),
    ('{"city": "Tokyo", "unit": "celsius", "days": 3, "alert": false}', "schema_mismatch"),
    ('{"city": "Porto", "unit": "celsius", "days": 3, "alert": false, "x": 1}', "schema_mismatch"),
    ("  ", "no_content"),
])
def test_structured_output_is_classified_against_the_schema(text: str, outcome: str) -> None:
    assert schema_outcome(text, STRUCTURED_SCHEMA) == outcome


def test_every_structured_prompt_asks_for_a_city_the_schema_allows() -> None:
    cities = STRUCTURED_SCHEMA["properties"]["city"]["enum"]
    assert all(any(city in prompt for city in cities) for prompt in structured_prompts(10))


def call(name: str, arguments: str, call_id: str = "x") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_tool_calls_are_identical_when_names_and_parsed_arguments_match_whatever_the_ids_and_spacing() -> None:
    assert tool_calls_identical([call("f", '{"a": 1, "b": "x"}', "s1")], [call("f", '{"b":"x","a":1}', "w9")])
    assert not tool_calls_identical([call("f", '{"a": 1}')], [call("f", '{"a": 2}')])
    assert not tool_calls_identical([call("f", "{}"), call("g", "{}")], [call("g", "{}"), call("f", "{}")])
    assert not tool_calls_identical([call("f", '{"a": 1')], [call("f", '{"a": 1}')])


def test_a_bound_on_a_figure_without_baseline_says_not_judged_no_baseline_and_the_test_is_not_a_pass() -> None:
    m = Measurement(method="m")
    metric = m.add_value("exact_match_pct", None, "%", "higher", headline=True)
    metric.validity, metric.validity_reason = agreement_validity(None)
    test = TestResult(measurement=m)
    test.thresholds = judge_bound("greedy_outputs.exact_match_pct", Bound(min=90), metric, None, "cfg", False)
    assert test.thresholds[0].status == "not judged" and NO_BASELINE in test.thresholds[0].message
    assert unsure(test) and NO_BASELINE in unsure(test)[0]


def test_the_report_section_names_the_config_that_changed_answers_and_where() -> None:
    def greedy(exact: float, mismatched: int, divergence: int | None) -> TestResult:
        m = Measurement(method="m")
        m.add_value("exact_match_pct", exact, "%", "higher", ci=(exact * 0.7, 100.0), n=4)
        m.add_value("mismatched_prompts", mismatched, "requests", "lower", n=4)
        m.add_value("token_agreement_pct", 100 - 10 * mismatched, "%", "higher", n=4)
        m.add_value("first_divergence_token", divergence, "tokens", None, n=4)
        return TestResult(measurement=m)
    results = {name: ConfigResult(config_name=name, timestamp="t", tests={"greedy_outputs": test})
               for name, test in (("base", greedy(100, 0, None)), ("fp32", greedy(50, 2, 7)))}
    section = correctness_markdown(results)
    assert "## Output correctness" in section and "| base | 100 % [70.0–100] (4/4) |" in section
    assert "Changed answers: fp32: 2 of 4 prompts answered differently (first at token 7, 80.0 % of tokens agree)." \
        in section
    assert correctness_markdown({"x": ConfigResult(config_name="x", timestamp="t")}) == ""


def test_a_bad_correctness_setting_in_the_grid_is_named_with_its_field_and_what_is_allowed() -> None:
    with pytest.raises(ValueError) as err:
        build_settings({"correctness_prompts": 0}, {}, "grid.yaml")
    assert str(err.value) == ("grid file grid.yaml field 'benchmarks.correctness_prompts': benchmark setting "
                              "'correctness_prompts' = 0: Input should be greater than or equal to 1")
    with pytest.raises(ValueError, match=r"unknown benchmark setting 'correctness_prompt' \(did you mean "
                                         "correctness_prompts"):
        build_settings({"correctness_prompt": 4}, {}, "grid.yaml")


@pytest.mark.parametrize("path", ["configs/thresholds-cpu.yaml", "configs/thresholds.yaml",
                                  "pytest_vllmgrid/data/thresholds-cpu.yaml"])
def test_the_shipped_thresholds_bound_the_correctness_figures(path: str) -> None:
    bounds = load_thresholds(REPO / path).spec.thresholds
    assert {"greedy_outputs.mismatched_prompts", "tool_call_streaming.identical_pct"} <= set(bounds)
    assert {"structured_output.schema_valid_pct", "structured_output.invalid_json"} & set(bounds)


# --- the benchmark against the fake vLLM -------------------------------------------------------------------------

THRESHOLDS = ("thresholds:\n  greedy_outputs.mismatched_prompts: {max: 0}\n"
              "  structured_output.schema_valid_pct: {min: 50}\n  tool_call_streaming.identical_pct: {min: 50}\n")
SETTINGS = {"warmup": 1, "correctness_prompts": 4, "structured_requests": 6, "correctness_concurrency": 3}


def run_benchmark(pytester: pytest.Pytester, configs: list[dict], *args: str, results: str = "out",
                  **top) -> pytest.RunResult:
    shutil.copy(REPO / "benchmarks" / "test_correctness.py", pytester.path / "test_correctness.py")
    (pytester.path / "thresholds.yaml").write_text(THRESHOLDS)
    grid = fake_grid(configs, name="correctness-fake", baseline="base", thresholds="thresholds.yaml", **top)
    grid["benchmarks"].update(SETTINGS)
    (pytester.path / "grid.json").write_text(json.dumps(grid))
    return pytester.runpytest_subprocess("--grid", "grid.json", "--results-dir", results, "-p", "no:cacheprovider",
                                         "-p", "no:hypothesispytest", "-rA", *args, timeout=120)


def greedy_figures(pytester: pytest.Pytester, results: str, config: str) -> dict:
    stored = json.loads((pytester.path / results / f"{config}.json").read_text())["tests"]["greedy_outputs"]
    return {k: v["value"] for k, v in stored["measurement"]["metrics"].items()} | {"status": stored["status"]}


CONFIGS = [{"name": "base"}, {"name": "twin"}, {"name": "changed", "env": {"FAKE_VLLM_DIVERGE_AT": "3"}}]


@pytest.mark.timeout(300)
def test_identical_configs_agree_fully_and_a_config_whose_answers_change_fails_naming_where(
        pytester: pytest.Pytester) -> None:
    alone = run_benchmark(pytester, CONFIGS, "-k", "changed and greedy", results="alone")
    alone.assert_outcomes(xfailed=1)  # no baseline in this run and no stored run of the grid yet
    assert any(NO_BASELINE in line for line in alone.outlines), alone.outlines[-15:]

    result = run_benchmark(pytester, CONFIGS, "-k", "not tool_call")
    result.assert_outcomes(passed=5, failed=1)
    assert any(line.endswith("changed: greedy_outputs.mismatched_prompts value = 4 requests <= 0 requests required: "
                             "FAILED") for line in result.outlines), result.outlines[-15:]
    base, twin, changed = (greedy_figures(pytester, "out", name) for name in ("base", "twin", "changed"))
    for same in (base, twin):
        assert (same["exact_match_pct"], same["token_agreement_pct"], same["mismatched_prompts"],
                same["first_divergence_token"], same["repeat_match_pct"]) == (100.0, 100.0, 0, None, 100.0)
    assert (changed["exact_match_pct"], changed["token_agreement_pct"], changed["first_divergence_token"],
            changed["repeat_match_pct"], changed["status"]) == (0.0, 37.5, 3, 100.0, "failed")
    stored = json.loads((pytester.path / "out" / "base.json").read_text())["tests"]["greedy_outputs"]["measurement"]
    assert [o["token_ids"] for o in stored["outputs"]] == [list(range(8))] * 4
    structured = json.loads((pytester.path / "out" / "twin.json").read_text())["tests"]["structured_output"]
    assert structured["measurement"]["metrics"]["schema_valid_pct"]["value"] == 100.0
    report = (pytester.path / "out" / "report.md").read_text()
    assert "Changed answers: changed: 4 of 4 prompts answered differently (first at token 3, 37.5 % of tokens " \
           "agree)." in report
    assert "Output correctness" in (pytester.path / "out" / "report.html").read_text()

    later = run_benchmark(pytester, CONFIGS, "-k", "changed and greedy", results="later")
    later.assert_outcomes(failed=1)  # judged against the stored run's baseline answers
    stored = json.loads((pytester.path / "later" / "changed.json").read_text())["tests"]["greedy_outputs"]
    assert "stored run" in stored["measurement"]["info"]["compared_with"]


def test_tool_calls_streamed_and_not_are_compared_pair_by_pair(pytester: pytest.Pytester) -> None:
    result = run_benchmark(pytester, [{"name": "base"}], "-k", "tool_call", env={"FAKE_VLLM_MODE": "tool_calls"})
    result.assert_outcomes(passed=1)
    stored = json.loads((pytester.path / "out" / "base.json").read_text())["tests"]["tool_call_streaming"]
    metrics = stored["measurement"]["metrics"]
    assert (metrics["identical_pct"]["value"], metrics["identical_pct"]["n"], metrics["differing_pairs"]["value"]) \
        == (100.0, 8, 0)
