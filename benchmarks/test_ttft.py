"""TTFT, ITL, TPOT and end-to-end latency, short and long prompts, measured from the SSE stream.

The client's TTFT is shown beside the server's own TTFT histogram (vllm:time_to_first_token_seconds)
over the same requests, so a client-side artefact cannot pass for a server property.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

import pytest

from pytest_vllmgrid.bench import BenchContext, add_request_samples, assert_all_succeeded
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.measurement import LOWER, Measurement
from pytest_vllmgrid.workloads import fresh_nonce, text_of_tokens


@pytest.mark.parametrize("prompt", ["short", "long"])
def test_ttft(vllm_bench: BenchContext, prompt: str) -> None:
    """Warm up, then at least `repetitions` sequential streamed requests, more until the TTFT median's CI is
    tight (bench.run_sequential); TTFT from the first token chunk."""
    s = vllm_bench.settings
    n_tokens = s.short_prompt_tokens if prompt == "short" else s.long_prompt_tokens
    nonce = fresh_nonce()

    def ask(client: ChatClient, index: int) -> Awaitable[RequestRecord]:
        # a fresh text per request: no prefix-cache hit can flatter the numbers
        text = text_of_tokens(n_tokens, seed=f"{s.seed}:{nonce}:{index}")
        return client.chat([{"role": "user", "content": text}], max_tokens=s.max_tokens)

    def ttfts(records: Sequence[RequestRecord]) -> list[float]:
        return [r.ttft for r in records if r.ok and r.ttft is not None]

    records, window = vllm_bench.run_sequential(ask, s.repetitions, primary=ttfts)
    m = Measurement(method=f"{len(records)} sequential streamed chat requests after {s.warmup} warm-up "
                           f"requests; fresh ~{n_tokens}-token prompts, max_tokens {s.max_tokens}, temperature 0; "
                           f"{vllm_bench.stopping.describe()}")
    ok = add_request_samples(m, records, window)
    m.metrics["ttft_ms"].headline = prompt == "short"
    m.add_sample("itl_ms", [gap * 1000 for r in ok for gap in r.itl], "ms", LOWER)
    m.info["prompt_tokens_mean"] = (sum(r.prompt_tokens or 0 for r in ok) / len(ok)) if ok else None
    m.info["stopping"] = {"stopped_by": vllm_bench.stopping.stopped_by, "checkpoints": vllm_bench.stopping.checkpoints,
                          "half_width_pct": vllm_bench.stopping.half_width_pct}
    vllm_bench.finish(m, window)
    assert_all_succeeded(records)
    vllm_bench.check_thresholds()
