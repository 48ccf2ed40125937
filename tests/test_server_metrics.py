"""Tests of pytest_vllmgrid.server_metrics on vLLM-shaped /metrics samples in tests/data."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from fault_server import FaultServer
from pytest_vllmgrid.bench import BenchContext, BenchSettings, MetricsWindow, TtftGap, add_request_samples
from pytest_vllmgrid.endpoint import Endpoint
from pytest_vllmgrid.grid import ServerConfig
from pytest_vllmgrid.measurement import Measurement
from pytest_vllmgrid.server_metrics import (
    HistogramData,
    MetricsSnapshot,
    MetricsUnavailable,
    diff,
    fetch_metrics,
    parse_metrics,
)

DATA = Path(__file__).parent / "data"


def load(name: str, captured_at: float = 0.0) -> MetricsSnapshot:
    """Parse one of the sample /metrics files."""
    return parse_metrics((DATA / f"metrics_{name}.txt").read_text(), captured_at=captured_at)


@pytest.fixture(scope="module")
def before() -> MetricsSnapshot:
    return load("before", captured_at=1000.0)


@pytest.fixture(scope="module")
def after() -> MetricsSnapshot:
    return load("after", captured_at=1060.0)


def test_counter_accepts_name_with_or_without_total(after: MetricsSnapshot) -> None:
    assert after.counter("vllm:prefix_cache_queries_total") == 27952.0
    assert after.counter("vllm:prefix_cache_queries") == 27952.0


def test_counter_sums_label_sets_and_filters_by_label(after: MetricsSnapshot) -> None:
    assert after.counter("vllm:request_success") == 24.0
    assert after.counter("vllm:request_success", finished_reason="abort") == 1.0
    assert after.counter("vllm:request_success", model_name="tiny", engine=0) == 24.0
    assert after.counter("vllm:request_success", model_name="other") is None


def test_missing_metric_is_none_not_an_error(after: MetricsSnapshot) -> None:
    assert after.counter("vllm:no_such_counter") is None
    assert after.histogram("vllm:no_such_histogram") is None
    assert after.labels_of("vllm:no_such_info") == []


def test_histogram_whose_name_ends_in_total_is_found(after: MetricsSnapshot) -> None:
    # vllm:iteration_tokens_total is a histogram: the parser keeps its _total.
    histogram = after.histogram("vllm:iteration_tokens_total")
    assert histogram is not None and histogram.count == 115.0


def test_asking_a_histogram_for_a_counter_is_a_usage_error(after: MetricsSnapshot) -> None:
    with pytest.raises(ValueError, match="histogram"):
        after.counter("vllm:time_to_first_token_seconds")


def test_gauge_reads_current_value(after: MetricsSnapshot) -> None:
    assert after.gauge("vllm:kv_cache_usage_perc") == pytest.approx(0.0025)
    assert after.gauge("vllm:num_requests_waiting", engine="0") == 2.0


def test_histogram_buckets_are_cumulative_and_end_at_inf(after: MetricsSnapshot) -> None:
    ttft = after.histogram("vllm:time_to_first_token_seconds")
    assert ttft is not None
    assert ttft.buckets[-1] == (float("inf"), ttft.count)
    counts = [count for _, count in ttft.buckets]
    assert counts == sorted(counts)
    assert ttft.count == 24.0 and 7.0 < ttft.sum < 8.0


def test_cache_config_labels(after: MetricsSnapshot) -> None:
    config = after.cache_config()
    assert config is not None
    assert config["block_size"] == "128"
    assert config["enable_prefix_caching"] == "True"
    assert after.labels_of("vllm:cache_config_info") == [config]


def test_real_vllm_0_32_scrape_reads_the_prefix_cache_run_it_saw() -> None:
    real = load("real_vllm_0_32")
    # 6 MISS/HIT pairs of a 1325-token prompt: 12 queries, 6 hits of 10 full 128-token blocks.
    assert real.counter("vllm:prefix_cache_queries") == 12 * 1325
    assert real.counter("vllm:prefix_cache_hits_total") == 6 * 1280
    assert real.counter("vllm:request_success", finished_reason="length") == 12
    ttft = real.histogram("vllm:time_to_first_token_seconds", model_name="tiny")
    assert ttft is not None and ttft.count == 12
    assert real.cache_config() is not None and real.cache_config()["block_size"] == "128"
    assert diff(real, real).requests_finished == 0


def test_histogram_quantile_interpolates_within_bucket() -> None:
    histogram = HistogramData(
        buckets=[(0.1, 2.0), (0.2, 6.0), (0.5, 10.0), (float("inf"), 10.0)], sum=2.0, count=10.0
    )
    # p50: rank 5 lies in (0.1, 0.2] holding ranks 2..6 -> 0.1 + 0.1 * 3/4.
    assert histogram.quantile(0.5) == pytest.approx(0.175)
    # p90: rank 9 lies in (0.2, 0.5] holding ranks 6..10 -> 0.2 + 0.3 * 3/4.
    assert histogram.quantile(0.9) == pytest.approx(0.425)
    # p10: rank 1 lies in the first bucket, whose lower edge is 0.
    assert histogram.quantile(0.1) == pytest.approx(0.05)
    assert histogram.bucket_of(0.9) == (0.2, 0.5)
    assert histogram.mean == pytest.approx(0.2)


def test_histogram_quantile_in_inf_bucket_returns_highest_finite_bound() -> None:
    histogram = HistogramData(buckets=[(1.0, 1.0), (float("inf"), 4.0)], sum=20.0, count=4.0)
    assert histogram.quantile(0.9) == 1.0


def test_empty_histogram_has_no_quantile() -> None:
    assert (
        HistogramData(buckets=[(1.0, 0.0), (float("inf"), 0.0)], sum=0, count=0).quantile(0.5)
        is None
    )


def test_diff_reports_the_benchmark_between_scrapes(
    before: MetricsSnapshot, after: MetricsSnapshot
) -> None:
    delta = diff(before, after)
    # 21 requests of 1310 prompt tokens: 10 misses, 11 hits of 1280 tokens.
    assert delta.interval_s == 60.0
    assert delta.prefix_cache_queries == 21 * 1310
    assert delta.prefix_cache_hits == 11 * 1280
    assert delta.prefix_cache_hit_rate == pytest.approx(11 * 1280 / (21 * 1310))
    assert delta.prompt_tokens_cached == 11 * 1280
    assert delta.prompt_tokens == 21 * 1310
    assert delta.generation_tokens == 20 * 4 + 2
    assert delta.requests_finished == 21
    assert delta.requests_finished_by_reason == {
        "abort": 1,
        "error": 0,
        "length": 20,
        "repetition": 0,
        "stop": 0,
    }
    assert delta.preemptions == 1
    assert not delta.counter_reset and delta.reset_evidence == []


def test_diff_ttft_histogram_delta_separates_hits_from_misses(
    before: MetricsSnapshot, after: MetricsSnapshot
) -> None:
    ttft = diff(before, after).ttft
    assert ttft is not None and ttft.count == 21
    # 11 hits fall in (0.04, 0.1] and 10 misses in (0.5, 0.75]: p50 is a hit, p90 a miss.
    assert ttft.p50_bucket_s is not None and ttft.p50_bucket_s[1] <= 0.1
    assert ttft.p90_bucket_s == (0.5, 0.75)
    assert ttft.mean_s == pytest.approx(ttft.sum / 21)
    assert 0.3 < ttft.mean_s < 0.4


def test_diff_to_dict_is_json_ready(before: MetricsSnapshot, after: MetricsSnapshot) -> None:
    data = diff(before, after).to_dict()
    assert data["ttft"]["count"] == 21
    assert data["e2e_latency"]["count"] == 21
    assert data["requests_finished_by_reason"]["length"] == 20


def test_diff_across_a_restart_flags_the_reset_and_uses_after_values(
    after: MetricsSnapshot,
) -> None:
    restarted = load("restarted", captured_at=1200.0)
    delta = diff(after, restarted)
    assert delta.counter_reset
    assert "process_start_time_seconds changed" in delta.reset_evidence
    assert "vllm:prefix_cache_queries decreased" in delta.reset_evidence
    assert delta.prefix_cache_queries == 18
    assert delta.requests_finished == 1
    assert delta.ttft is not None and delta.ttft.count == 1


def test_reset_is_detected_from_created_series_alone() -> None:
    def text(value: float, created: float) -> str:
        return (
            "# TYPE vllm:prefix_cache_queries_total counter\n"
            f'vllm:prefix_cache_queries_total{{engine="0"}} {value}\n'
            "# TYPE vllm:prefix_cache_queries_created gauge\n"
            f'vllm:prefix_cache_queries_created{{engine="0"}} {created}\n'
        )

    # The restarted server already counted more than before: only _created reveals it.
    delta = diff(parse_metrics(text(100, 1.0e9)), parse_metrics(text(300, 1.0e9 + 500)))
    assert delta.counter_reset
    assert delta.prefix_cache_queries == 300
    assert delta.reset_evidence == ["vllm:prefix_cache_queries re-created"]


def test_diff_on_older_vllm_uses_gpu_prefix_names_and_none_for_missing() -> None:
    old = load("vllm_0_9")
    later = parse_metrics(
        (DATA / "metrics_vllm_0_9.txt")
        .read_text()
        .replace(
            'vllm:gpu_prefix_cache_hits_total{engine="0",model_name="tiny"} 1280.0',
            'vllm:gpu_prefix_cache_hits_total{engine="0",model_name="tiny"} 2560.0',
        )
        .replace(
            'vllm:gpu_prefix_cache_queries_total{engine="0",model_name="tiny"} 2620.0',
            'vllm:gpu_prefix_cache_queries_total{engine="0",model_name="tiny"} 3930.0',
        )
    )
    delta = diff(old, later)
    assert delta.prefix_cache_queries == 1310 and delta.prefix_cache_hits == 1280
    assert delta.prompt_tokens_cached is None
    assert delta.e2e_latency is None
    assert delta.ttft is not None and delta.ttft.count == 0 and delta.ttft.p50_s is None
    assert not delta.counter_reset


def test_diff_of_a_server_without_vllm_metrics_is_all_none() -> None:
    empty = parse_metrics("# TYPE up gauge\nup 1\n")
    delta = diff(empty, empty)
    assert delta.prefix_cache_queries is None
    assert delta.prefix_cache_hit_rate is None
    assert delta.requests_finished_by_reason is None
    assert delta.ttft is None


def test_hit_rate_is_none_without_queries(before: MetricsSnapshot) -> None:
    assert diff(before, before).prefix_cache_hit_rate is None


def test_parse_rejects_garbage_with_metrics_unavailable() -> None:
    with pytest.raises(MetricsUnavailable, match="unparseable"):
        parse_metrics("this is { not prometheus\n")


class _MetricsHandler(BaseHTTPRequestHandler):
    """Serves metrics_after.txt at /metrics, 404 elsewhere, and records the Authorization header."""

    seen_authorization: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen_authorization.append(self.headers.get("Authorization"))
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = (DATA / "metrics_after.txt").read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def metrics_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MetricsHandler)
    _MetricsHandler.seen_authorization = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_metrics_parses_the_endpoint_and_sends_bearer_key(metrics_server: str) -> None:
    snapshot = fetch_metrics(f"{metrics_server}/metrics", api_key="sk-test-secret")
    assert snapshot.counter("vllm:prefix_cache_hits") == 14208.0
    assert _MetricsHandler.seen_authorization == ["Bearer sk-test-secret"]


def test_fetch_metrics_http_error_is_metrics_unavailable_without_the_key(
    metrics_server: str,
) -> None:
    with pytest.raises(MetricsUnavailable, match="HTTP 404") as raised:
        fetch_metrics(f"{metrics_server}/nope", api_key="sk-test-secret")
    assert "sk-test-secret" not in str(raised.value)
    assert raised.value.url == f"{metrics_server}/nope"


def test_fetch_metrics_connection_refused_is_metrics_unavailable() -> None:
    with pytest.raises(MetricsUnavailable, match="ConnectError"):
        fetch_metrics("http://127.0.0.1:9/metrics", timeout=2.0)


@pytest.mark.parametrize("name", ["real_vllm_0_32", "vllm_0_9", "before", "after", "restarted"])
def test_families_parsed_on_demand_equal_a_whole_parse(name: str) -> None:
    """parse_metrics splits the text into families and parses each when asked; the result must be exactly
    what prometheus-client's parser makes of the whole text."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (DATA / f"metrics_{name}.txt").read_text()
    whole: dict = {}
    for family in text_string_to_metric_families(text):
        whole.setdefault(family.name, []).append(family)
    lazy = parse_metrics(text).families
    assert set(lazy) == set(whole)
    for key, families in whole.items():
        samples = [sample for family in families for sample in family.samples]
        got = lazy[key]
        assert (got.type, got.documentation, got.samples) == (families[0].type, families[0].documentation, samples)


def test_text_the_splitter_does_not_follow_is_parsed_whole() -> None:
    quoted = '# HELP "my.metric" a UTF-8 name\n# TYPE "my.metric" gauge\n{"my.metric"} 3\n'
    assert parse_metrics(quoted).gauge("my.metric") == 3.0


def test_diff_reads_the_queue_and_prefill_time_histograms(before: MetricsSnapshot, after: MetricsSnapshot) -> None:
    delta = diff(before, after)
    assert delta.queue_time is not None and delta.queue_time.count == 21
    assert delta.queue_time.sum == pytest.approx(0.048 - 0.006)
    assert delta.prefill_time is not None and delta.prefill_time.count == 21
    assert delta.prefill_time.sum == pytest.approx(7.386749414874598 - 0.165)
    assert diff(before, after).to_dict()["prefill_time"]["count"] == 21


# --- where the client's TTFT beyond the engine's goes (bench.TtftGap) ------------------------------------------
# The H200 run of issue 18: tool_choice required/named 335-770 ms above the engine's TTFT, auto 2-12 ms.


def test_a_gap_mostly_after_the_engines_first_token_names_the_held_back_first_delta() -> None:
    gap = TtftGap(client_ms=800.0, engine_ms=60.0, queue_ms=2.0, prefill_ms=50.0, before_engine_ms=10.0, itl_ms=28.0)
    assert gap.outside_ms == 740.0 and gap.after_first_token_ms == 730.0 and gap.dominant == "after_first_token"
    assert gap.engine_other_ms == 8.0  # arrival stamp -> engine core queue, inside the engine's TTFT
    text = gap.warning("tool_choice=required")
    assert text.startswith("client TTFT mean 800 ms vs the engine's 60 ms (queue 2 ms, prefill 50 ms): 740 ms")
    assert "730 ms of it after the engine's first token, ~26 tokens at its 28 ms inter-token latency" in text
    assert 'only once its name and "parameters" are generated' in text
    assert "10 ms before the engine's clock started" in text
    assert "grammar" not in text and "CPU contention" not in text


def test_a_gap_before_the_engines_clock_on_structured_output_names_grammar_preparation() -> None:
    gap = TtftGap(client_ms=450.0, engine_ms=40.0, queue_ms=3.0, prefill_ms=30.0, before_engine_ms=400.0, itl_ms=20.0)
    assert gap.dominant == "before_engine"
    text = gap.warning("tool_choice=named")
    assert "400 ms of it before the engine's clock started" in text
    assert "structured output (tool_choice=named) most likely its grammar preparation in the API server" in text
    assert "queue time (3 ms) does not hold" in text and text.endswith("10 ms after its first token")


def test_grammar_preparation_is_not_blamed_when_the_engines_queue_time_holds_as_much() -> None:
    gap = TtftGap(client_ms=900.0, engine_ms=450.0, queue_ms=420.0, prefill_ms=20.0, before_engine_ms=400.0)
    assert "grammar" not in gap.warning("tool_choice=required")
    assert "grammar" not in TtftGap(450.0, 40.0, 3.0, 30.0, 400.0).warning(None)  # no structured output


def test_without_the_end_to_end_histogram_the_gap_is_not_split() -> None:
    gap = TtftGap(client_ms=300.0, engine_ms=20.0, queue_ms=1.0)
    assert gap.dominant is None and gap.after_first_token_ms is None
    assert gap.warning("tool_choice=required").endswith(
        "(API server, network, CPU contention; no server e2e histogram to say which part)")


def measured_gap(structured_output: str | None = None, **faults: float) -> Measurement:
    """Three streamed requests (after one warm-up) to the fault server, cross-checked against its /metrics."""
    with FaultServer("ok", tokens=16, ttft_ms=10, itl_ms=20, **faults) as server:
        bench = BenchContext(endpoint=Endpoint(server.base_url, "fault-model"), config=ServerConfig("fake", 0, {}),
                             settings=BenchSettings(warmup=1), record=lambda test: None)
        records, window = bench.run_sequential(
            lambda client, i: client.chat([{"role": "user", "content": "hi"}], max_tokens=16), 3)
    m = Measurement(method="t")
    add_request_samples(m, records, window, structured_output=structured_output)
    return m


def gap_warnings(m: Measurement) -> list[str]:
    return [w for w in m.warnings if w.startswith("client TTFT mean")]


def test_a_server_holding_its_first_delta_back_is_seen_after_the_engines_first_token() -> None:
    # 12 tokens generated before the first delta, 20 ms apart: ~240 ms after the engine counted its first token
    m = measured_gap("tool_choice=required", held_tokens=12)
    check = m.info["server_check"]
    assert check["outside_engine_dominant"] == "after_first_token"
    assert 180 < check["after_first_token_ms"] < 400 and abs(check["before_engine_ms"]) < 60
    assert check["server_queue_time_mean_ms"] == pytest.approx(0.0) and check["server_prefill_time_mean_ms"] == 10
    [text] = gap_warnings(m)
    assert "of it after the engine's first token, ~1" in text and '"parameters"' in text and "grammar" not in text


def test_the_servers_first_chunk_splits_a_held_first_delta_from_the_instruments_own_share() -> None:
    # vLLM sends the role chunk when the engine's first token reaches the API server: from it, the client's
    # time to first output minus the engine's TTFT is the instrument's share, the rest what a parser held back
    m = measured_gap(held_tokens=6, role_at_first_token=True)
    check = m.info["server_check"]
    assert 90 < check["held_first_delta_ms"] < 200  # 6 tokens x 20 ms
    assert abs(check["first_output_minus_engine_ms"]) < 30
    assert check["client_first_output_mean_ms"] + check["held_first_delta_ms"] == pytest.approx(
        check["client_ttft_mean_ms"])
    [text] = gap_warnings(m)
    assert "the first counted delta 1" in text and "ms after that" in text
    plain = measured_gap(role_at_first_token=True).info["server_check"]
    assert abs(plain["held_first_delta_ms"]) < 5


def test_time_before_the_engines_clock_on_a_structured_request_is_named_grammar_preparation() -> None:
    m = measured_gap("tool_choice=named", api_delay_ms=250)
    check = m.info["server_check"]
    assert check["outside_engine_dominant"] == "before_engine" and 200 < check["before_engine_ms"] < 450
    [text] = gap_warnings(m)
    assert "before the engine's clock started" in text and "grammar preparation in the API server" in text


def test_queue_time_inside_the_engine_is_no_gap_and_blames_no_grammar() -> None:
    m = measured_gap("tool_choice=required", api_delay_ms=400, queue_ms=250)  # queue >= half the gap
    check = m.info["server_check"]
    assert 240 <= check["server_queue_time_mean_ms"] <= 260 and check["server_ttft_mean_ms"] > 250
    [text] = gap_warnings(m)
    assert "before the engine's clock started" in text and "grammar" not in text


def test_a_plain_server_shows_no_gap_warning() -> None:
    m = measured_gap()
    assert gap_warnings(m) == [] and abs(m.info["server_check"]["outside_engine_ttft_ms"]) < 40


def test_an_unknown_structured_output_is_refused() -> None:
    with pytest.raises(ValueError, match="tool_choice=required"):
        add_request_samples(Measurement(method="t"), [], MetricsWindow(), structured_output="json")
