"""The report's "Output correctness" section: per config, its greedy answers vs the baseline's, structured-output
validity and tool calls streamed vs not (benchmarks/test_correctness.py; reads only stored results)."""

from __future__ import annotations

from collections.abc import Mapping

from pytest_vllmgrid.numbers import fmt_number
from pytest_vllmgrid.results.models import ConfigResult, Metric, TestResult

GREEDY, STRUCTURED, TOOLS = "greedy_outputs", "structured_output", "tool_call_streaming"
COLUMNS = ("config", "same answers as the baseline", "token agreement", "first divergence", "own repeat",
           "schema-valid JSON", "tool calls streamed = not")


def _figure(test: TestResult | None, name: str) -> Metric | None:
    return test.metric(name) if test is not None else None


def _rate(test: TestResult | None, name: str, *, counted: bool = True) -> str:
    """`91.7 % [64.6–98.5] (11/12)` (the count for a proportion: `counted`), with the figure's validity when it is
    not valid; '–' when not measured."""
    metric = _figure(test, name)
    if metric is None:
        return "–"
    if metric.value is None:
        return f"not judged ({metric.validity_reason})" if metric.validity_reason else "–"
    text = f"{fmt_number(metric.value)} %"
    if metric.ci is not None and metric.ci[0] != metric.ci[1]:
        text += f" [{fmt_number(metric.ci[0])}–{fmt_number(metric.ci[1])}]"
    if metric.n and counted:
        text += f" ({round(metric.value * metric.n / 100)}/{metric.n})"
    if metric.validity != "valid":
        text += f" {metric.validity.upper()}: {metric.validity_reason}"
    return text


def _divergence(test: TestResult | None) -> str:
    metric = _figure(test, "first_divergence_token")
    if metric is None or (metric.value is None and metric.validity != "valid"):
        return "–"
    return "none" if metric.value is None else f"token {metric.value:.0f}"


def _changed(name: str, test: TestResult | None) -> str | None:
    """`chunked: 3 of 12 prompts answered differently from the baseline (first at token 5, 87.2 % of tokens
    agree)`, or None when its answers matched or were not compared."""
    mismatched = _figure(test, "mismatched_prompts")
    if mismatched is None or not mismatched.value:
        return None
    agreement = _figure(test, "token_agreement_pct")
    divergence = _figure(test, "first_divergence_token")
    where = f"first at token {divergence.value:.0f}" if divergence is not None and divergence.value is not None \
        else "first divergence not recorded"
    share = f", {fmt_number(agreement.value)} % of tokens agree" if agreement is not None and \
        agreement.value is not None else ""
    return f"{name}: {mismatched.value:.0f} of {mismatched.n} prompts answered differently ({where}{share})"


def correctness_markdown(results: Mapping[str, ConfigResult]) -> str:
    """`## Output correctness` as Markdown; '' when no config ran the correctness benchmarks."""
    rows, changed = [], []
    for name, result in results.items():
        greedy, structured, tools = (result.tests.get(key) for key in (GREEDY, STRUCTURED, TOOLS))
        if greedy is None and structured is None and tools is None:
            continue
        rows.append([name, _rate(greedy, "exact_match_pct"), _rate(greedy, "token_agreement_pct", counted=False),
                     _divergence(greedy), _rate(greedy, "repeat_match_pct"), _rate(structured, "schema_valid_pct"),
                     _rate(tools, "identical_pct")])
        changed += [line for line in [_changed(name, greedy)] if line]
    if not rows:
        return ""
    out = ["", "## Output correctness", "",
           "Greedy answers (temperature 0, fixed seed) to a fixed prompt set compared token by token with the "
           "baseline config's (on the baseline: a second pass with its first); own repeat: a config's second pass "
           "with its first; structured output and tool calls under concurrent load (benchmarks/test_correctness.py).",
           "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    out += ["", "Changed answers: " + "; ".join(changed) + "." if changed else
            "No config changed an answer the baseline gave (of those compared)."]
    return "\n".join(out) + "\n"
