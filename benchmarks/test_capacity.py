"""Capacity under an SLO: the highest load a config serves while p95 TTFT, p95 ITL and the error rate meet the
thresholds file's `slo:` (else p95 bounds from the settings' slo_ttft_ms / slo_tpot_ms).

Three tests per config: `capacity[poisson]` and `capacity[gamma]` search the highest open-loop request rate
(Poisson arrivals; gamma arrivals of shape `capacity_burstiness`, burstier below 1), `capacity[concurrency]` the
highest closed-loop concurrency. Each search (pytest_vllmgrid/capacity_search.py) brackets from
`capacity_start_rate` / `capacity_start_concurrency`, x `capacity_growth` per probe, then bisects until the
bracket's ends are `capacity_tolerance_pct` apart (concurrency: adjacent), within `capacity_max_probes` probes
and `capacity_budget_s` seconds. A probe holds its load for `capacity_warmup_s` (not judged; a concurrency probe:
its first `concurrency` completions) and then a span of `capacity_window_s`, and is judged with the verdict rules:
meets only when every SLO bound's 95 % CI passes. Every prompt is fresh (~`capacity_prompt_tokens`, no prefix
cache help), every answer `capacity_max_tokens` tokens (ignore_eos).

capacity_rate / capacity_concurrency: the highest load shown to meet the SLO, with an interval up to the lowest
load shown to miss it; the other figures (goodput_req_s, output_tok_s, request_rate, ttft_ms, itl_ms, errors)
are those of the probe at that load. Every probe's load, outcome, reasons and figures are in info.probes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from pytest_vllmgrid.bench import BenchContext
from pytest_vllmgrid.capacity_search import (SEARCHES, Probe, Search, capacity_measurement, concurrency_probe,
                                             judge_probe, probe_seed, rate_probe, search_capacity, slo_from_settings)
from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.workloads import fresh_nonce, text_of_tokens


@pytest.mark.parametrize("search", SEARCHES)
def test_capacity(vllm_bench: BenchContext, search: str) -> None:
    """Bracket then bisect the highest load meeting the SLO, each probe a sustained, judged window."""
    s = vllm_bench.settings
    slo, slo_source = slo_from_settings(vllm_bench.thresholds.spec.slo if vllm_bench.thresholds else None,
                                        s.slo_ttft_ms, s.slo_tpot_ms)
    integer = search == "concurrency"
    arrival = "" if integer else (f"gamma arrivals (shape {s.capacity_burstiness:g})" if search == "gamma"
                                  else "Poisson arrivals")
    what = "closed-loop concurrency" if integer else f"request rate, {arrival}"
    extra = {"ignore_eos": True}

    def sender(client: ChatClient, nonce: str) -> Callable[[int], Awaitable[RequestRecord]]:
        async def send(index: int) -> RequestRecord:
            text = text_of_tokens(s.capacity_prompt_tokens, seed=f"{s.seed}:{nonce}:{index}")
            return await client.chat([{"role": "user", "content": text}], max_tokens=s.capacity_max_tokens,
                                     extra_body=extra)
        return send

    async def main(client: ChatClient) -> Search:
        probes = 0

        async def probe(load: float) -> Probe:
            nonlocal probes
            probes += 1
            send = sender(client, fresh_nonce())
            with vllm_bench.server_window(client) as window:
                if integer:
                    run = await concurrency_probe(send, int(load), window_s=s.capacity_window_s)
                else:
                    run = await rate_probe(send, load, arrival=search, burstiness=s.capacity_burstiness,
                                           warmup_s=s.capacity_warmup_s, window_s=s.capacity_window_s,
                                           seed=probe_seed(s.seed, probes))
            return judge_probe(load, run, window, slo, s.capacity_windows, vllm_bench.config.name,
                               f"probe of the {what} at {load:g}")

        if integer:
            return await search_capacity(probe, start=s.capacity_start_concurrency, lower=1,
                                         upper=s.capacity_max_concurrency, growth=s.capacity_growth,
                                         tolerance_pct=s.capacity_tolerance_pct, max_probes=s.capacity_max_probes,
                                         budget_s=s.capacity_budget_s, integer=True)
        return await search_capacity(probe, start=s.capacity_start_rate, lower=s.capacity_min_rate,
                                     upper=s.capacity_max_rate, growth=s.capacity_growth,
                                     tolerance_pct=s.capacity_tolerance_pct, max_probes=s.capacity_max_probes,
                                     budget_s=s.capacity_budget_s)

    result = vllm_bench.run(main)
    span = (f"its first `concurrency` completions a warm-up, then a {s.capacity_window_s:g} s span" if integer else
            f"a {s.capacity_warmup_s:g} s warm-up, then a {s.capacity_window_s:g} s span (longer at a low rate, "
            "to plan ~20 judged requests)")
    m = capacity_measurement(
        result, slo, name="capacity_concurrency" if integer else "capacity_rate",
        unit="concurrent" if integer else "req/s", what=what,
        method=(f"capacity search over the {what}: bracketing from "
                f"{s.capacity_start_concurrency if integer else s.capacity_start_rate:g} x {s.capacity_growth:g} "
                f"per probe, then bisection to {'adjacent levels' if integer else f'{s.capacity_tolerance_pct:g} %'}"
                f" (at most {s.capacity_max_probes} probes, {s.capacity_budget_s:g} s); each probe: {span}, judged on "
                f"the SLO ({slo.text()}; from {slo_source}) with the verdict rules; fresh "
                f"~{s.capacity_prompt_tokens}-token prompts, max_tokens {s.capacity_max_tokens} with ignore_eos; "
                "figures beside the capacity: the probe at that load"))
    m.info.update(search=search, slo_source=slo_source,
                  burstiness=s.capacity_burstiness if search == "gamma" else None)
    if result.stopped_by in ("max_probes", "budget_s"):
        m.warnings.append(f"capacity search stopped by {result.stopped_by} before the bracket narrowed to "
                          f"the tolerance: loads {', '.join(f'{p.load:g}' for p in result.probes)}")
    vllm_bench.finish(m)
    vllm_bench.check_thresholds()
