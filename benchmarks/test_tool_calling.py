"""Tool calling: per scenario and tool_choice, the success rate and why each failure failed.

A request succeeds when it returns tool_calls naming the expected function with JSON arguments that
validate against that function's schema (workloads.classify_tool_call). Every request gets exactly
one outcome: success, a classification reason, or http_error. What this benchmark asserts is that
measurement (every request classified, no HTTP error); success-rate bounds belong in a thresholds
file, because what a model can do is the model's: the embedded CPU default's tiny model is trained on
these very requests (tinymodel.py) and thresholds-cpu.yaml requires its success rate, so a model,
chat template or tool parser that stops calling tools fails there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable
from typing import Any

import pytest

from pytest_vllmgrid.bench import WILSON_METHOD, BenchContext, add_request_samples, percent_with_ci
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.measurement import HIGHER, LOWER, Measurement
from pytest_vllmgrid.workloads import FAILURE_REASONS, TOOL_SCENARIOS, ToolScenario, classify_tool_call

CHOICES = ("auto", "required", "named")
HTTP_ERROR = "http_error"
SUCCESS = "success"


def strict_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scenario's tools with `"strict": true` on every function."""
    return [{**tool, "function": {**tool["function"], "strict": True}} for tool in tools]


def tool_choice_for(choice: str, scenario: ToolScenario) -> str | dict[str, Any]:
    """The request's tool_choice: "auto", "required", or the scenario's expected function by name."""
    if choice == "named":
        return {"type": "function", "function": {"name": scenario.expected_function}}
    return choice


def outcome_of(record: RequestRecord, scenario: ToolScenario) -> str:
    """success, a FAILURE_REASONS entry, or http_error."""
    if not record.ok:
        return HTTP_ERROR
    return classify_tool_call(record.tool_calls, scenario.tools, scenario.expected_function) or SUCCESS


def examples_by_outcome(records: list[RequestRecord], labels: list[str]) -> list[dict[str, Any]]:
    """The first request of each outcome (`labels[i]` is records[i]'s; failures first, then one success): what a
    failing call looked like, with its finish reason, is what a reader of the report needs to act on it."""
    first: dict[str, RequestRecord] = {}
    for record, label in zip(records, labels, strict=True):
        first.setdefault(label, record)
    ordered = sorted(first.items(), key=lambda item: item[0] == SUCCESS)
    return [{"outcome": outcome, "finish_reason": r.finish_reason, "tool_calls": r.tool_calls[:2],
             "content": r.output_text[:300]} for outcome, r in ordered]


@pytest.mark.parametrize(("scenario_name", "choice"), [(name, choice) for name in TOOL_SCENARIOS for choice in CHOICES])
def test_tool_calling(vllm_bench: BenchContext, scenario_name: str, choice: str) -> None:
    """`warmup` discarded requests, then `tool_repetitions` seeded requests, each classified."""
    s = vllm_bench.settings
    scenario = TOOL_SCENARIOS[scenario_name]
    tools = strict_tools(scenario.tools)
    tool_choice = tool_choice_for(choice, scenario)

    def ask(client: ChatClient, index: int) -> Awaitable[RequestRecord]:
        seed = {"seed": s.seed * 100_003 + index} if s.tool_seed_per_request else None
        return client.chat(scenario.messages, tools=tools, tool_choice=tool_choice, max_tokens=s.tool_max_tokens,
                           temperature=s.tool_temperature, extra_body=seed)

    records, window = vllm_bench.run_sequential(ask, s.tool_repetitions)
    labels = [outcome_of(r, scenario) for r in records]
    outcomes = Counter(labels)
    m = Measurement(method=(
        f"{len(records)} sequential streamed requests after {s.warmup} discarded ones; scenario {scenario.name} "
        f"({scenario.kind}), tool_choice {choice}, strict function schemas, temperature {s.tool_temperature:g}, "
        + (f"seed {s.seed * 100_003} + request index (warm-ups first)" if s.tool_seed_per_request else "unseeded")
        + f", max_tokens {s.tool_max_tokens}; success = a tool call to {scenario.expected_function} whose JSON "
        "arguments validate against its schema"))
    add_request_samples(m, records, window, structured_output=None if choice == "auto" else f"tool_choice={choice}")
    rate, ci = percent_with_ci(outcomes[SUCCESS], len(records))
    m.add_value("success_rate_pct", rate, "%", HIGHER, ci=ci, n=len(records), method=WILSON_METHOD)
    for reason in FAILURE_REASONS:
        m.add_value(reason, outcomes[reason], "requests", LOWER, n=len(records))
    m.info.update(scenario=scenario.name, kind=scenario.kind, tool_choice=choice,
                  expected_function=scenario.expected_function,
                  outcomes={name: outcomes[name] for name in (SUCCESS, *FAILURE_REASONS, HTTP_ERROR)},
                  with_tool_calls=sum(1 for r in records if r.tool_calls),
                  finish_reasons=dict(Counter(str(r.finish_reason) for r in records)),
                  examples=examples_by_outcome(records, labels))
    vllm_bench.finish(m, window)
    unknown = set(outcomes) - {SUCCESS, HTTP_ERROR, *FAILURE_REASONS}
    assert not unknown, f"unclassified outcomes: {sorted(unknown)}"
    assert sum(outcomes.values()) == len(records) == s.tool_repetitions, f"outcomes {dict(outcomes)} of {len(records)}"
    assert outcomes[HTTP_ERROR] == 0, f"{outcomes[HTTP_ERROR]} request(s) failed: {m.info['error_kinds']}"
    vllm_bench.check_thresholds()
