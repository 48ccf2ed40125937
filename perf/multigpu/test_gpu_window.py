"""A benchmark for the multi-GPU proof: streamed requests for a fixed window while telemetry samples."""

import time

from pytest_vllmgrid.measurement import LOWER, Measurement


def test_gpu_window(vllm_bench):
    """Send requests for WINDOW_S seconds; the GPU sampler covers the window."""
    window_s = 12.0

    async def main(client):
        records, end = [], time.monotonic() + window_s
        while time.monotonic() < end:
            records.append(await client.chat([{"role": "user", "content": "hi"}], max_tokens=8))
        return records

    with vllm_bench.server_window() as window:
        records = vllm_bench.run(main)
    m = Measurement(method=f"sequential requests for {window_s:.0f} s against a GPU stand-in")
    m.add_sample("ttft_ms", [r.ttft * 1000 for r in records if r.ok], "ms", LOWER, headline=True)
    vllm_bench.finish(m, window)
    assert records and all(r.ok for r in records)
