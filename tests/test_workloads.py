"""Tests of pytest_vllmgrid.workloads: seeded prompts, token budgets, tool scenarios."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema.validators import validator_for

from pytest_vllmgrid.workloads import (
    FAILURE_REASONS,
    TOOL_SCENARIOS,
    WORDS,
    classify_tool_call,
    conversation,
    filler_text,
    fresh_nonce,
    reasoning_tasks,
    shared_prefix_messages,
    text_of_tokens,
)


def count_whitespace_tokens(text: str) -> int:
    """A fake tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def count_character_pairs(text: str) -> int:
    """A fake tokenizer that splits text into two-character tokens."""
    return (len(text) + 1) // 2


def test_filler_text_is_deterministic_per_seed() -> None:
    assert filler_text(200, seed=1) == filler_text(200, seed=1)
    assert filler_text(200, seed=1) != filler_text(200, seed=2)


def test_filler_text_longer_text_extends_shorter_one() -> None:
    assert filler_text(300, seed=4).startswith(filler_text(120, seed=4))


def test_filler_text_uses_only_the_word_list() -> None:
    words = filler_text(500, seed=3).replace(".", "").split()
    assert len(words) == 500
    assert set(words) <= set(WORDS)


def test_text_of_tokens_with_counter_hits_target_without_exceeding_it() -> None:
    for target in (1, 37, 128, 1300):
        text = text_of_tokens(target, seed=9, count_tokens=count_whitespace_tokens)
        assert target - 1 <= count_whitespace_tokens(text) <= target


def test_text_of_tokens_needs_few_counts() -> None:
    """Each count is a /tokenize round trip; interpolation needs far fewer than bisection's ~12."""
    for counter in (count_whitespace_tokens, count_character_pairs):
        texts: list[str] = []

        def counting(text: str) -> int:
            texts.append(text)
            return counter(text)
        result = text_of_tokens(1300, seed=9, count_tokens=counting)
        assert len(texts) <= 6, (counter.__name__, len(texts))
        assert counter(result) <= 1300 < counter(result + " word word")


def test_text_of_tokens_with_coarse_counter_stays_within_a_few_tokens() -> None:
    text = text_of_tokens(1000, seed=9, count_tokens=count_character_pairs)
    assert 990 <= count_character_pairs(text) <= 1000


def test_text_of_tokens_estimate_without_counter_is_close() -> None:
    # The default estimate assumes ~1.1 tokens per filler word; whitespace words are 1 token.
    words = len(text_of_tokens(1100, seed=2).split())
    assert 950 <= words <= 1050


def test_text_of_tokens_budget_counts_the_lead() -> None:
    text = text_of_tokens(50, seed=2, count_tokens=count_whitespace_tokens, lead="Notes for you:")
    assert text.startswith("Notes for you: ")
    assert count_whitespace_tokens(text) == 50


def test_shared_prefix_starts_with_nonce_and_is_shared_after_it() -> None:
    first = shared_prefix_messages(300, "nonce-aaaa", "Why?", seed=5)
    second = shared_prefix_messages(300, "nonce-bbbb", "Why?", seed=5)
    system_a, system_b = first[0]["content"], second[0]["content"]
    assert system_a.startswith("nonce-aaaa") and system_b.startswith("nonce-bbbb")
    assert system_a.split()[0] != system_b.split()[0]
    assert system_a[len("nonce-aaaa") :] == system_b[len("nonce-bbbb") :]
    assert first[1] == {"role": "user", "content": "Why?"}


def test_shared_prefix_same_nonce_same_messages() -> None:
    assert shared_prefix_messages(300, "n1", "Q", seed=5) == shared_prefix_messages(
        300, "n1", "Q", seed=5
    )


def test_shared_prefix_respects_token_budget_with_counter() -> None:
    messages = shared_prefix_messages(
        1300, fresh_nonce(), "Q", seed=1, count_tokens=count_whitespace_tokens
    )
    assert 1299 <= count_whitespace_tokens(messages[0]["content"]) <= 1300


def test_fresh_nonces_differ() -> None:
    assert len({fresh_nonce() for _ in range(50)}) == 50


def test_conversation_yields_system_then_one_user_message_per_turn() -> None:
    turns = list(conversation(4, system_tokens=200, user_tokens=40, seed=3))
    assert len(turns) == 4
    assert [m["role"] for m in turns[0]] == ["system", "user"]
    assert all([m["role"] for m in turn] == ["user"] for turn in turns[1:])
    user_texts = [turn[-1]["content"] for turn in turns]
    assert len(set(user_texts)) == 4
    assert user_texts[2].startswith("Question 3")


def test_conversation_is_deterministic_and_sized() -> None:
    first = list(conversation(3, 200, 40, seed=3, count_tokens=count_whitespace_tokens))
    assert first == list(conversation(3, 200, 40, seed=3, count_tokens=count_whitespace_tokens))
    assert count_whitespace_tokens(first[0][0]["content"]) == 200
    assert all(39 <= count_whitespace_tokens(turn[-1]["content"]) <= 40 for turn in first)


def test_reasoning_tasks_are_seeded_step_by_step_prompts() -> None:
    tasks = reasoning_tasks(12, seed=0)
    assert len(tasks) == 12 and len(set(tasks)) == 12
    assert all("step by step" in task for task in tasks)
    assert tasks == reasoning_tasks(12, seed=0)
    assert tasks != reasoning_tasks(12, seed=1)


@pytest.mark.parametrize("scenario", TOOL_SCENARIOS.values(), ids=TOOL_SCENARIOS.keys())
def test_tool_scenario_schemas_are_valid_json_schema(scenario: Any) -> None:
    names = [tool["function"]["name"] for tool in scenario.tools]
    assert scenario.expected_function in names
    for tool in scenario.tools:
        schema = tool["function"]["parameters"]
        validator_for(schema).check_schema(schema)


def test_tool_scenarios_cover_every_kind_and_an_empty_schema() -> None:
    assert {s.kind for s in TOOL_SCENARIOS.values()} == {"simple", "chained", "complex"}
    empty = [
        s
        for s in TOOL_SCENARIOS.values()
        if s.tools[0]["function"]["parameters"] == {"type": "object", "properties": {}}
    ]
    assert empty
    assert (
        classify_tool_call(
            [_call(empty[0].expected_function, "{}")], empty[0].tools, empty[0].expected_function
        )
        is None
    )


def test_tool_definitions_keep_their_json_key_order() -> None:
    # chat templates render the tools into the prompt as JSON: a reordered key changes the prompt
    weather = TOOL_SCENARIOS["weather"].tools[0]
    assert json.dumps(weather) == (
        '{"type": "function", "function": {"name": "get_weather", "description": "Get the current'
        ' weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type":'
        ' "string", "description": "City name, e.g. Lisbon"}, "unit": {"type": "string", "enum":'
        ' ["celsius", "fahrenheit"]}}, "required": ["city"], "additionalProperties": false}}}'
    )
    create_event = TOOL_SCENARIOS["calendar_event"].tools[2]["function"]["parameters"]
    assert json.dumps(create_event["properties"]["attendees"]["items"]) == (
        '{"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}},'
        ' "required": ["email"]}'
    )


def _call(name: str, arguments: Any) -> dict[str, Any]:
    """Build an OpenAI-style tool call record."""
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER = TOOL_SCENARIOS["weather"]


def test_classify_valid_call() -> None:
    call = _call("get_weather", json.dumps({"city": "Lisbon", "unit": "celsius"}))
    assert classify_tool_call([call], WEATHER.tools, "get_weather") is None


@pytest.mark.parametrize(
    ("calls", "reason"),
    [
        ([], "no_tool_call"),
        (None, "no_tool_call"),
        ([_call("get_weather", '{"city": "Lis')], "bad_json"),
        ([_call("get_weather", None)], "bad_json"),
        ([_call("launch_rocket", '{"city": "Lisbon"}')], "unknown_function"),
        ([_call("get_weather", "{}")], "schema_mismatch"),
        ([_call("get_weather", '{"city": "Lisbon", "unit": "kelvin"}')], "schema_mismatch"),
        ([_call("get_weather", '["Lisbon"]')], "schema_mismatch"),
    ],
    ids=[
        "empty",
        "none",
        "truncated-json",
        "null-arguments",
        "unknown",
        "missing-required",
        "bad-enum",
        "not-an-object",
    ],
)
def test_classify_failure_reasons(calls: Any, reason: str) -> None:
    assert reason in FAILURE_REASONS
    assert classify_tool_call(calls, WEATHER.tools, "get_weather") == reason


def test_classify_offered_but_unexpected_function_is_wrong_function() -> None:
    scenario = TOOL_SCENARIOS["calendar_event"]
    call = _call("get_weather", '{"city": "Lisbon"}')
    assert (
        classify_tool_call([call], scenario.tools, scenario.expected_function) == "wrong_function"
    )
    assert classify_tool_call([call], scenario.tools, None) is None


def test_classify_passes_when_any_call_to_expected_function_is_valid() -> None:
    scenario = TOOL_SCENARIOS["flight_booking"]
    calls = [
        _call("search_flights", "{}"),
        _call("book_flight", {"flight_id": "FR7402", "passenger_name": "Ana Silva"}),
    ]
    assert classify_tool_call(calls, scenario.tools, "book_flight") is None


def test_classify_reports_the_expected_functions_failure_first() -> None:
    scenario = TOOL_SCENARIOS["flight_booking"]
    calls = [_call("launch_rocket", "{}"), _call("book_flight", '{"flight_id": 7}')]
    assert classify_tool_call(calls, scenario.tools, "book_flight") == "schema_mismatch"


def test_classify_validates_nested_complex_arguments() -> None:
    scenario = TOOL_SCENARIOS["calendar_event"]
    good = {
        "title": "Cache report",
        "start": "2026-12-04T10:00",
        "duration_minutes": 45,
        "attendees": [{"email": "ana@example.com"}],
        "reminders_minutes": [15, 5],
    }
    bad = {**good, "attendees": [{"name": "Ana"}]}
    expected = scenario.expected_function
    assert classify_tool_call([_call(expected, json.dumps(good))], scenario.tools, expected) is None
    assert (
        classify_tool_call([_call(expected, json.dumps(bad))], scenario.tools, expected)
        == "schema_mismatch"
    )
