"""Long step-by-step generations: TTFT, answer TTFT and decode speed measured apart, reasoning vs content counted.

The seeds divided all tokens by the whole response time, which mixes prefill into the decode rate;
here decode tok/s = (completion_tokens - 1) / (e2e - ttft) per request. A server with a reasoning
parser streams `delta.reasoning`; without one everything is content: the split is stored and named.
answer_ttft_ms is what a user of a reasoning model waits for: the time to the first content token
after the reasoning (equal to ttft_ms when nothing is reasoning, absent when no answer came).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable

from pytest_vllmgrid.bench import BenchContext, add_request_samples, assert_all_succeeded
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.measurement import HIGHER, LOWER, Measurement
from pytest_vllmgrid.workloads import reasoning_tasks


def answer_ttft_s(record: RequestRecord, reasoning_tokens: int, content_tokens: int) -> float | None:
    """Seconds from send to the first content chunk after the reasoning; None without content, or when the
    token counts do not account for every token chunk (the streamed text was not one token per chunk).

    vLLM streams one token per chunk and a reasoning parser streams all reasoning before the content, so the
    answer starts at chunk number `reasoning_tokens` (the <think> markers themselves stream no text).
    """
    if not content_tokens or reasoning_tokens + content_tokens != len(record.chunk_times):
        return None
    return record.chunk_times[reasoning_tokens] - record.send_time


def test_reasoning(vllm_bench: BenchContext) -> None:
    """`warmup` discarded tasks, then `reasoning_tasks` sequential generations of up to `reasoning_max_tokens`."""
    s = vllm_bench.settings
    tasks = reasoning_tasks(s.warmup + s.reasoning_tasks, seed=s.seed)

    def ask(client: ChatClient, index: int) -> Awaitable[RequestRecord]:
        return client.chat([{"role": "user", "content": tasks[index]}], max_tokens=s.reasoning_max_tokens)

    records, window = vllm_bench.run_sequential(ask, s.reasoning_tasks)
    m = Measurement(method=(
        f"{len(records)} sequential streamed step-by-step tasks after {s.warmup} discarded ones, max_tokens "
        f"{s.reasoning_max_tokens}, temperature 0; decode tok/s = (completion_tokens - 1) / (e2e - ttft) per "
        "request, burst-delivered responses left out (they carry no decode timing); reasoning/content tokens = "
        "the server tokenizer's count of each streamed text; answer TTFT = send to the first content chunk after "
        "the reasoning (chunk number = reasoning tokens), for responses whose reasoning + content tokens equal "
        "their token chunks"))
    ok = add_request_samples(m, records, window)
    m.add_sample("decode_tok_s", [1000 / tpot for tpot in m.samples["tpot_ms"] if tpot > 0], "tok/s", HIGHER,
                 headline=True)
    m.add_sample("completion_tokens", [r.completion_tokens for r in ok if r.completion_tokens is not None],
                 "tokens", None)
    counts = [(vllm_bench.count_tokens(r.reasoning_text) if r.reasoning_text else 0,
               vllm_bench.count_tokens(r.output_text) if r.output_text else 0) for r in ok]
    reasoning = sum(n_reasoning for n_reasoning, _ in counts)
    content = sum(n_content for _, n_content in counts)
    answer_ttfts = [answer_ttft_s(r, *n) for r, n in zip(ok, counts, strict=True)]
    m.add_sample("answer_ttft_ms", [t * 1000 for t in answer_ttfts if t is not None], "ms", LOWER)
    m.add_value("reasoning_tokens", reasoning, "tokens", None, n=len(ok))
    m.add_value("content_tokens", content, "tokens", None, n=len(ok))
    m.add_value("reasoning_share_pct", reasoning / (reasoning + content) * 100 if reasoning + content else None,
                "%", None, n=len(ok))
    with_reasoning = sum(1 for r in ok if r.reasoning_text)
    m.info.update(
        reasoning_mode=("reasoning parser: delta.reasoning streamed" if with_reasoning
                        else "no reasoning deltas: everything streamed as content (no reasoning parser on the server, "
                             "or the model never opened a reasoning block)"),
        requests_with_reasoning=with_reasoning, requests_with_content=sum(1 for r in ok if r.output_text),
        answer_ttft_unplaced=sum(1 for (_, n_content), t in zip(counts, answer_ttfts, strict=True)
                                 if n_content and t is None),
        finish_reasons=dict(Counter(str(r.finish_reason) for r in ok)))
    itl_ms = m.info["server_check"].get("server_itl_mean_ms")
    m.add_value("server_decode_tok_s", 1000 / itl_ms if itl_ms else None, "tok/s", HIGHER, exact=True,
                method="1 / mean of the server histogram vllm:inter_token_latency_seconds over the run")
    vllm_bench.finish(m, window)
    assert_all_succeeded(records)
    assert any(r.tpot is not None for r in ok), "no response had 2 or more tokens: no decode rate can be measured"
    vllm_bench.check_thresholds()
