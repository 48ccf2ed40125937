"""Output correctness across configs: greedy answers compared with the baseline's, JSON-schema validity of
structured output, tool calls streamed vs not (benchmarks/test_correctness.py; docs/benchmarks.md).

Plain data in, plain figures out: the benchmark sends the requests, this module builds the fixed prompt sets,
compares answers and classifies outputs, and says when a comparison cannot be judged (`agreement_validity`).

Agreement of two answers to one prompt, on their generated token ids (the text split on whitespace when
either side has no ids): *exact match* when the sequences are equal; *token agreement* = positions holding
the same token / the longer sequence's length; *first divergence* = the first position where they differ
(None when equal; the shorter length when one is a prefix of the other).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import validators

from pytest_vllmgrid.judge import NO_BASELINE
from pytest_vllmgrid.results.models import GeneratedOutput, Validity
from pytest_vllmgrid.workloads import filler_text, reasoning_tasks

Unit = Literal["token ids", "words"]
SchemaOutcome = Literal["valid", "invalid_json", "schema_mismatch", "no_content"]
SCHEMA_OUTCOMES: tuple[SchemaOutcome, ...] = ("valid", "invalid_json", "schema_mismatch", "no_content")


def prompt_id(messages: Sequence[dict[str, Any]], max_tokens: int) -> str:
    """A request's identity across configs and runs: the digest of its messages and max_tokens."""
    payload = json.dumps({"messages": list(messages), "max_tokens": max_tokens}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def greedy_prompts(n: int, seed: int | str) -> list[list[dict[str, Any]]]:
    """n fixed chats: step-by-step tasks (what the tiny model was trained on: confident tokens) alternating with
    requests to continue seeded filler text (untrained: small logit margins, where numerics show first)."""
    tasks = reasoning_tasks((n + 1) // 2, seed=f"{seed}:correctness")
    prompts = []
    for index in range(n):
        if index % 2 == 0:
            text = tasks[index // 2]
        else:
            text = "Continue this text: " + filler_text(40, seed=f"{seed}:correctness:{index}")
        prompts.append([{"role": "user", "content": text}])
    return prompts


@dataclass(frozen=True)
class PromptAgreement:
    """One prompt's answer on this config vs the reference's."""

    prompt_id: str
    length: int  # this config's answer, in units
    reference_length: int
    same_positions: int  # positions holding the same unit in both
    first_divergence: int | None = None

    @property
    def exact(self) -> bool:
        """True when both answers are the same sequence."""
        return self.length == self.reference_length == self.same_positions

    @property
    def agreement(self) -> float:
        """Share of positions (of the longer answer) holding the same unit; 1.0 for two empty answers."""
        longest = max(self.length, self.reference_length)
        return self.same_positions / longest if longest else 1.0


def compare_sequences(pid: str, own: Sequence[object], reference: Sequence[object]) -> PromptAgreement:
    """Position-wise agreement of two generated sequences, with the first position where they differ."""
    same = sum(1 for a, b in zip(own, reference) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(own, reference)) if a != b), None)
    if first is None and len(own) != len(reference):
        first = min(len(own), len(reference))
    return PromptAgreement(pid, len(own), len(reference), same, first)


@dataclass
class Agreement:
    """A set of answers compared prompt by prompt with a reference set."""

    unit: Unit
    prompts: list[PromptAgreement] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)  # prompt ids one side has no answer to (failed request)
    not_in_reference: list[str] = field(default_factory=list)  # prompt ids the reference never decoded

    @property
    def exact_matches(self) -> int:
        """Prompts answered identically."""
        return sum(1 for p in self.prompts if p.exact)

    @property
    def mismatched(self) -> list[PromptAgreement]:
        """Prompts whose answers differ."""
        return [p for p in self.prompts if not p.exact]

    @property
    def agreements_pct(self) -> list[float]:
        """Per-prompt token agreement, in %."""
        return [p.agreement * 100 for p in self.prompts]

    @property
    def first_divergence(self) -> int | None:
        """The earliest position any answer diverged at (None when every answer matched)."""
        return min((p.first_divergence for p in self.prompts if p.first_divergence is not None), default=None)

    def details(self) -> list[dict[str, Any]]:
        """Per diverging prompt: its id, first divergence, agreement and lengths (for the stored context)."""
        return [{"prompt_id": p.prompt_id, "first_divergence": p.first_divergence,
                 "agreement_pct": round(p.agreement * 100, 2), "length": p.length,
                 "reference_length": p.reference_length} for p in self.mismatched]


def _units(output: GeneratedOutput, unit: Unit) -> Sequence[object]:
    return output.token_ids or [] if unit == "token ids" else output.text.split()


def compare_outputs(own: Sequence[GeneratedOutput], reference: Sequence[GeneratedOutput]) -> Agreement:
    """Compare each of `own`'s answers with the reference's answer to the same prompt (matched by prompt id)."""
    by_id = {o.prompt_id: o for o in reference}
    paired = [(o, by_id[o.prompt_id]) for o in own if o.prompt_id in by_id]
    answered = [(a, b) for a, b in paired if a.error is None and b.error is None]
    with_ids = all(a.token_ids is not None and b.token_ids is not None for a, b in answered)
    unit: Unit = "token ids" if with_ids else "words"
    agreement = Agreement(unit=unit, not_in_reference=[o.prompt_id for o in own if o.prompt_id not in by_id])
    agreement.unanswered = [a.prompt_id for a, b in paired if a.error is not None or b.error is not None]
    agreement.prompts = [compare_sequences(a.prompt_id, _units(a, unit), _units(b, unit)) for a, b in answered]
    return agreement


def agreement_validity(agreement: Agreement | None, reference_note: str = "") -> tuple[Validity, str | None]:
    """Whether figures of a comparison with the reference can be judged: inconclusive without a reference
    (judge.NO_BASELINE, so the test is not a silent pass), invalid when a prompt went unanswered on either side
    or the reference decoded another prompt set (other prompts or max_tokens: another settings' run)."""
    if agreement is None:
        return "inconclusive", f"{NO_BASELINE} (no answers of the baseline config to compare with{reference_note})"
    if agreement.not_in_reference:
        return "invalid", (f"the reference decoded another prompt set: {len(agreement.not_in_reference)} prompt(s) "
                           f"not in it{reference_note} (its prompt count, seed or max_tokens differ)")
    if agreement.unanswered:
        return "invalid", f"{len(agreement.unanswered)} prompt(s) unanswered on one side (failed requests)"
    if not agreement.prompts:
        return "invalid", "no prompt compared"
    return "valid", None


# Structured output: a schema small enough for any model to fill within a few dozen tokens (enums bound every
# value), so a failure is the server's constrained decoding, not the model running out of tokens.
STRUCTURED_CITIES = ("Lisbon", "Porto", "Madrid", "Paris", "Berlin", "Rome", "Vienna", "Prague")
STRUCTURED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": list(STRUCTURED_CITIES)},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "enum": [1, 2, 3, 5, 7]},
        "alert": {"type": "boolean"},
    },
    "required": ["city", "unit", "days", "alert"],
    "additionalProperties": False,
}


def structured_prompts(n: int) -> list[str]:
    """n user requests for the forecast object of STRUCTURED_SCHEMA (cities and days in rotation)."""
    days = (1, 2, 3, 5, 7)
    return [f"Give the {days[i % len(days)]}-day weather forecast for {STRUCTURED_CITIES[i % len(STRUCTURED_CITIES)]} "
            "as a JSON object with the fields city, unit, days and alert." for i in range(n)]


def schema_outcome(text: str, schema: dict[str, Any]) -> SchemaOutcome:
    """valid, invalid_json (not one JSON document), schema_mismatch (JSON the schema rejects), no_content."""
    if not text.strip():
        return "no_content"
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return "invalid_json"
    return "valid" if validators.validator_for(schema)(schema).is_valid(document) else "schema_mismatch"


def tool_call_signature(calls: Sequence[dict[str, Any]]) -> list[tuple[str, object]]:
    """The calls' (function name, arguments) in order, arguments parsed from JSON when they parse; call ids and
    the arguments' whitespace do not count."""
    out = []
    for call in calls:
        function = call.get("function", call)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        out.append((str(function.get("name") or ""), arguments))
    return out


def tool_calls_identical(streamed: Sequence[dict[str, Any]], whole: Sequence[dict[str, Any]]) -> bool:
    """True when a streamed response's tool calls are the non-streamed response's (names and arguments)."""
    return tool_call_signature(streamed) == tool_call_signature(whole)
