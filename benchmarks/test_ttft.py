"""TTFT, ITL, TPOT and end-to-end latency, short and long prompts, measured from the SSE stream.

The client's TTFT is shown beside the server's own TTFT histogram (vllm:time_to_first_token_seconds)
over the same requests, so a client-side artefact cannot pass for a server property.
"""

from __future__ import annotations

import pytest

from pytest_vllmgrid.bench import BenchContext
from pytest_vllmgrid.measurement import LOWER, Measurement
from pytest_vllmgrid.workloads import text_of_tokens


@pytest.mark.parametrize("prompt", ["short", "long"])
def test_ttft(vllm_bench: BenchContext, prompt: str) -> None:
    """Warm up, then send `repetitions` sequential streamed requests; TTFT from the first token chunk."""
    s = vllm_bench.settings
    n_tokens = s.short_prompt_tokens if prompt == "short" else s.long_prompt_tokens

    async def main(client):
        # a fresh text per request: no prefix-cache hit can flatter the numbers
        texts = [text_of_tokens(n_tokens, seed=s.seed * 100_003 + i, count_tokens=None) for i in range(
            s.warmup + s.repetitions)]
        for text in texts[: s.warmup]:
            await client.chat([{"role": "user", "content": text}], max_tokens=s.max_tokens)
        with vllm_bench.server_window() as window:
            records = [await client.chat([{"role": "user", "content": text}], max_tokens=s.max_tokens)
                       for text in texts[s.warmup:]]
        return records, window

    records, window = vllm_bench.run(main)
    ok = [r for r in records if r.ok]
    m = Measurement(method=f"{len(records)} sequential streamed chat requests after {s.warmup} warm-up "
                           f"requests; ~{n_tokens}-token prompts, max_tokens {s.max_tokens}, temperature 0")
    m.add_sample("ttft_ms", [r.ttft * 1000 for r in ok if r.ttft is not None], "ms", LOWER, headline=prompt == "short")
    m.add_sample("itl_ms", [gap * 1000 for r in ok for gap in r.itl], "ms", LOWER)
    m.add_sample("tpot_ms", [r.tpot * 1000 for r in ok if r.tpot is not None], "ms", LOWER)
    m.add_sample("e2e_ms", [r.e2e * 1000 for r in ok if r.e2e is not None], "ms", LOWER)
    m.add_value("errors", len(records) - len(ok), "requests", LOWER)
    m.info["prompt_tokens_mean"] = (sum(r.prompt_tokens or 0 for r in ok) / len(ok)) if ok else None
    m.info["error_kinds"] = sorted({r.error.kind for r in records if r.error})
    server_ttft = (window.delta or {}).get("ttft") or {}
    if server_ttft.get("p50_s") is not None:
        m.add_value("server_ttft_p50_ms", server_ttft["p50_s"] * 1000, "ms", LOWER,
                    method="server histogram vllm:time_to_first_token_seconds, bucket-interpolated median")
    vllm_bench.finish(m, window)
    vllm_bench.check_thresholds()
    assert ok, f"no request succeeded: {m.info['error_kinds']}"
    assert len(ok) == len(records), f"{len(records) - len(ok)} of {len(records)} requests failed: {m.info['error_kinds']}"
