"""Long conversations: TTFT turn by turn as the history grows, and how much the last turns degrade.

Each conversation appends the server's real replies, so every turn's prompt extends the previous one:
with prefix caching the history should be served from the cache (the server's hit rate over the run
is stored), without it every turn prefills the whole history again. Degradation compares, inside each
conversation, the TTFT of its last turns with its first turns; the conversation is the unit of its CI
(designs.unit_change_pct), so drift between conversations cannot inflate it.
"""

from __future__ import annotations

import statistics
from typing import Any

from pytest_vllmgrid.bench import BenchContext, MetricsWindow, add_request_samples
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.measurement import LOWER, Measurement
from pytest_vllmgrid.designs import LOG_T_METHOD, unit_change_pct
from pytest_vllmgrid.stats import trend_pct
from pytest_vllmgrid.workloads import conversation, fresh_nonce

TREND_TURNS = 3  # turns in each of the first/last windows compared


async def converse(client: ChatClient, turns: list[list[dict[str, str]]], max_tokens: int) -> list[RequestRecord]:
    """Send the turns in order, appending each reply; stop at the first failed turn (its history is broken)."""
    messages: list[dict[str, Any]] = []
    records = []
    for new_messages in turns:
        messages += new_messages
        record = await client.chat(messages, max_tokens=max_tokens)
        records.append(record)
        if not record.ok:
            break
        # a reasoning parser may put the whole reply in `reasoning`: the history still gets the real reply
        messages.append({"role": "assistant", "content": record.output_text or record.reasoning_text})
    return records


def test_long_conversation(vllm_bench: BenchContext) -> None:
    """A discarded warm-up conversation, then `conversations` conversations of `conversation_turns` turns."""
    s = vllm_bench.settings
    nonce = fresh_nonce()

    def turns_of(name: str, n_turns: int) -> list[list[dict[str, str]]]:
        return list(conversation(n_turns, s.conversation_system_tokens, s.conversation_user_tokens,
                                 seed=f"{s.seed}:{nonce}:{name}"))

    warmup = turns_of("warmup", s.warmup) if s.warmup else []
    chats = [turns_of(f"conversation{i}", s.conversation_turns) for i in range(s.conversations)]

    async def main(client: ChatClient) -> tuple[list[list[RequestRecord]], MetricsWindow]:
        await converse(client, warmup, s.conversation_max_tokens)
        with vllm_bench.server_window(client) as window:
            runs = [await converse(client, turns, s.conversation_max_tokens) for turns in chats]
        return runs, window

    runs, window = vllm_bench.run(main)
    records = [r for run in runs for r in run]
    m = Measurement(method=(
        f"{s.conversations} conversation(s) of {s.conversation_turns} turns after a discarded {s.warmup}-turn "
        f"warm-up conversation; ~{s.conversation_system_tokens}-token system prompt, ~{s.conversation_user_tokens}"
        f"-token user turns, the real replies appended, max_tokens {s.conversation_max_tokens}, temperature 0; "
        f"degradation per conversation = median TTFT of its last {TREND_TURNS} turns / median of its first "
        f"{TREND_TURNS} turns; the conversation is the unit (n = conversations)"))
    ok = add_request_samples(m, records, window)
    by_turn = [[run[t].ttft * 1000 for run in runs if t < len(run) and run[t].ok and run[t].ttft is not None]
               for t in range(s.conversation_turns)]
    window_turns = max(1, min(TREND_TURNS, s.conversation_turns // 2))
    first = [v for values in by_turn[:window_turns] for v in values]
    last = [v for values in by_turn[-window_turns:] for v in values]
    m.add_sample("first_turns_ttft_ms", first, "ms", LOWER)
    m.add_sample("last_turns_ttft_ms", last, "ms", LOWER)
    per_conversation = [statistics.median(late) / statistics.median(early) for early, late in (
        ([r.ttft for r in run[:window_turns] if r.ok and r.ttft], [r.ttft for r in run[-window_turns:] if r.ok and r.ttft])
        for run in runs if len(run) == s.conversation_turns) if early and late]
    if per_conversation:
        change, ci = unit_change_pct(per_conversation)
        m.add_value("degradation_pct", change, "%", LOWER, headline=True, ci=ci, n=len(per_conversation),
                    method=f"per conversation: median TTFT of its last / first {window_turns} turns; {LOG_T_METHOD}")
    rate = window.delta.prefix_cache_hit_rate if window.delta is not None else None
    m.add_value("server_hit_rate_pct", None if rate is None else rate * 100, "%", None, exact=True,
                method="server counters vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total over the run")
    m.info.update(
        turn_ttft_ms=[[r.ttft * 1000 if r.ok and r.ttft is not None else None for r in run] for run in runs],
        turn_ttft_median_ms=[statistics.median(values) if values else None for values in by_turn],
        prompt_tokens_by_turn=[[r.prompt_tokens for r in run] for run in runs],
        degradation_by_conversation_pct=[trend_pct([r.ttft * 1000 for r in run if r.ok and r.ttft is not None],
                                                   head=window_turns, tail=window_turns) for run in runs],
        replies_from_reasoning=sum(1 for r in ok if not r.output_text and r.reasoning_text),
        turns_completed=[len(run) for run in runs])
    vllm_bench.finish(m, window)
    assert ok, f"no turn succeeded: {m.info['error_kinds']}"
    assert len(ok) == s.conversations * s.conversation_turns, (
        f"{s.conversations * s.conversation_turns - len(ok)} turn(s) failed or were not sent: {m.info['error_kinds']}")
    vllm_bench.check_thresholds()
