"""ChatClient against the fault-injecting server: timings, usage, tool calls, errors, secrets."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
from collections.abc import Coroutine
from typing import Any

import httpx
import pytest
from fault_server import FaultServer, FaultServerProcess
from prometheus_client.parser import text_string_to_metric_families

from pytest_vllmgrid.client import ChatClient, RequestRecord

MODEL = "fault-model"
API_KEY = "sk-test-6f1d2c0ffee"
PROMPT = [{"role": "user", "content": "say something"}]
LONG_PROMPT = [{"role": "user", "content": " ".join(f"word{i}" for i in range(40))}]


def _run(main: Coroutine[Any, Any, Any], timeout_s: float = 10.0) -> Any:
    """Run a coroutine to completion, failing the test if it takes longer than `timeout_s`."""
    return asyncio.run(asyncio.wait_for(main, timeout_s))


async def _chats(
    base_url: str,
    count: int = 1,
    *,
    api_key: str | None = None,
    timeout: float = 5.0,
    messages: list[dict[str, Any]] = PROMPT,
    **chat_options: Any,
) -> list[RequestRecord]:
    """Send `count` chat requests one after another on one client."""
    async with ChatClient(base_url, MODEL, api_key, timeout=timeout, connect_timeout=2.0) as client:
        return [await client.chat(messages, **chat_options) for _ in range(count)]


def _chat(base_url: str, **options: Any) -> RequestRecord:
    """Send one chat request and return its record."""
    return _run(_chats(base_url, **options))[0]


def _free_port() -> int:
    """Return a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- successful streams ------------------------------------------------------------------------


def test_streamed_chat_records_tokens_usage_and_finish_reason() -> None:
    with FaultServer("ok", tokens=5) as server:
        record = _chat(server.base_url, max_tokens=10)
    assert record.ok
    assert record.output_text == "tok0 tok1 tok2 tok3 tok4 "
    assert len(record.chunk_times) == 5
    assert (record.completion_tokens, record.prompt_tokens) == (5, 2)
    assert record.finish_reason == "stop"


def test_max_tokens_caps_completion_with_finish_reason_length() -> None:
    with FaultServer("ok", tokens=16) as server:
        record = _chat(server.base_url, max_tokens=4)
    assert (record.completion_tokens, record.finish_reason) == (4, "length")


def test_ttft_matches_configured_first_token_delay() -> None:
    with FaultServer("ok", ttft_ms=50, tokens=4) as server:
        records = _run(_chats(server.base_url, count=6))
    ttfts_ms = [r.ttft * 1000 for r in records[1:]]  # the first one also opens the connection
    assert min(ttfts_ms) >= 50
    assert statistics.median(ttfts_ms) < 50 + 15


def test_ttft_waits_for_first_token_not_headers_or_role_chunk() -> None:
    with FaultServer("slow_first_token", ttft_ms=150, tokens=2) as server:
        record = _chat(server.base_url)
    assert record.ttft >= 0.150


def test_ttft_is_not_the_full_response_time() -> None:
    with FaultServer("ok", ttft_ms=20, itl_ms=30, tokens=5) as server:
        record = _chat(server.base_url)
    assert record.e2e - record.ttft >= 0.08  # four 30 ms gaps follow the first token


def test_chunk_gaps_follow_inter_token_delay() -> None:
    with FaultServer("ok", itl_ms=20, tokens=6) as server:
        record = _chat(server.base_url)
    assert len(record.itl) == 5
    assert 0.015 <= statistics.median(record.itl) <= 0.040


def test_tpot_divides_decode_time_by_tokens_after_the_first() -> None:
    with FaultServer("ok", itl_ms=10, tokens=5) as server:
        record = _chat(server.base_url)
    assert record.tpot == pytest.approx((record.e2e - record.ttft) / 4)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_deltas_fill_reasoning_text_and_count_as_tokens(field: str) -> None:
    with FaultServer("ok", reasoning_tokens=3, reasoning_field=field, tokens=2) as server:
        record = _chat(server.base_url)
    assert record.reasoning_text == "think0 think1 think2 "
    assert record.output_text == "tok0 tok1 "
    assert len(record.chunk_times) == 5
    assert record.first_token_time == record.chunk_times[0]


def test_tool_call_deltas_are_assembled_by_index() -> None:
    with FaultServer("tool_calls") as server:
        record = _chat(server.base_url, tools=[], tool_choice="auto")
    assert record.finish_reason == "tool_calls"
    assert record.tool_calls == [
        {
            "id": "chatcmpl-tool-0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "chatcmpl-tool-1",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
        },
    ]


def test_tool_call_deltas_count_as_token_chunks() -> None:
    with FaultServer("tool_calls", ttft_ms=30) as server:
        record = _chat(server.base_url)
    assert len(record.chunk_times) == 6
    assert record.ttft >= 0.030


def test_non_streamed_chat_sets_ttft_to_e2e_and_flags_it() -> None:
    with FaultServer("ok", ttft_ms=20, tokens=3) as server:
        record = _chat(server.base_url, stream=False)
    assert record.ok and not record.streamed
    assert record.ttft == record.e2e >= 0.020
    assert (record.output_text, record.completion_tokens) == ("tok0 tok1 tok2 ", 3)


def test_non_streamed_tool_calls_keep_arguments_as_strings() -> None:
    with FaultServer("tool_calls") as server:
        record = _chat(server.base_url, stream=False)
    assert [call["function"]["arguments"] for call in record.tool_calls] == [
        '{"city": "Paris"}',
        '{"tz": "UTC"}',
    ]


def test_completion_endpoint_streams_text_and_usage() -> None:
    async def complete(base_url: str) -> RequestRecord:
        async with ChatClient(base_url, MODEL) as client:
            return await client.completion("one two three", max_tokens=3)

    with FaultServer("ok", tokens=8) as server:
        record = _run(complete(server.base_url))
    assert record.ok
    assert (record.output_text, len(record.chunk_times)) == ("tok0 tok1 tok2 ", 3)
    assert (record.prompt_tokens, record.completion_tokens) == (3, 3)


def test_repeated_prompt_reports_cached_prompt_tokens() -> None:
    with FaultServer("ok") as server:
        first, second = _run(_chats(server.base_url, count=2, messages=LONG_PROMPT))
    assert (first.cached_prompt_tokens, second.cached_prompt_tokens) == (0, 32)


# --- what is sent ------------------------------------------------------------------------------


def test_request_asks_for_usage_and_carries_request_id_and_extra_body() -> None:
    with FaultServer("ok") as server:
        record = _chat(server.base_url, request_id="req-7", extra_body={"top_k": 5})
        sent = server.received[-1]
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["top_k"] == 5
    assert sent.headers["x-request-id"] == record.request_id == "req-7"


def test_api_key_is_sent_as_bearer_header() -> None:
    with FaultServer("ok") as server:
        _chat(server.base_url, api_key=API_KEY)
        sent = server.received[-1]
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"


def test_no_authorization_header_without_api_key() -> None:
    with FaultServer("ok") as server:
        _chat(server.base_url)
        sent = server.received[-1]
    assert "authorization" not in sent.headers


def test_error_message_redacts_api_key_echoed_by_server() -> None:
    with FaultServer("http_500", echo_auth=True) as server:
        record = _chat(server.base_url, api_key=API_KEY)
    assert "[REDACTED]" in record.error.message
    assert API_KEY not in record.error.message


@pytest.mark.parametrize("mode", ["ok", "http_500", "reset", "malformed_sse", "tool_calls"])
def test_record_dict_never_contains_api_key(mode: str) -> None:
    with FaultServer(mode, echo_auth=True) as server:
        record = _chat(server.base_url, api_key=API_KEY)
    assert API_KEY not in json.dumps(record.to_dict())
    assert API_KEY not in repr(record)


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "status"), [("http_500", 500), ("http_503", 503)])
def test_http_error_status_is_classified_with_body_excerpt(mode: str, status: int) -> None:
    with FaultServer(mode) as server:
        record = _chat(server.base_url)
    assert (record.error.kind, record.error.status_code) == ("http_status", status)
    assert record.error.message.startswith(f"HTTP {status}: ")
    assert "injected failure" in record.error.message
    assert "\n" not in record.error.message


def test_unknown_model_is_http_404() -> None:
    with FaultServer("wrong_model") as server:
        record = _chat(server.base_url)
    assert (record.error.kind, record.error.status_code) == ("http_status", 404)


def test_server_that_never_gets_ready_answers_503() -> None:
    with FaultServer("never_ready") as server:
        record = _chat(server.base_url)
    assert (record.error.kind, record.error.status_code) == ("http_status", 503)


def test_refused_connection_is_connect_error() -> None:
    record = _chat(f"http://127.0.0.1:{_free_port()}")
    assert record.error.kind == "connect"
    assert record.e2e is not None


def test_stalled_stream_times_out_after_read_timeout() -> None:
    with FaultServer("stall", fail_after_chunks=3) as server:
        record = _chat(server.base_url, timeout=1.0)
    assert record.error.kind == "timeout"
    assert len(record.chunk_times) == 3
    assert 1.0 <= record.e2e < 10.0


def test_a_stream_that_trickles_past_the_deadline_times_out_and_the_client_recovers() -> None:
    """Tokens every 20 ms keep every read under the 5 s read timeout; only the 0.5 s deadline ends it. The
    client then serves the next request on a fresh connection (the old one is mid-response)."""
    async def main() -> tuple[RequestRecord, RequestRecord]:
        async with ChatClient(server.base_url, MODEL, timeout=5.0, deadline=0.5) as client:
            trickle = await client.chat(PROMPT, max_tokens=500)
            return trickle, await client.chat(PROMPT, max_tokens=3)

    with FaultServer("ok", tokens=500, itl_ms=20) as server:
        trickle, after = _run(main())
    assert trickle.error is not None and trickle.error.kind == "timeout", trickle.error
    assert "0.5 s deadline" in trickle.error.message
    assert 5 <= len(trickle.chunk_times) < 100 and 0.5 <= trickle.e2e < 2.0
    assert after.error is None and after.output_text == "tok0 tok1 tok2 "


def test_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="deadline"):
        ChatClient("http://127.0.0.1:1", MODEL, deadline=0)


def test_reset_mid_stream_is_disconnect_keeping_partial_chunks() -> None:
    with FaultServer("reset", fail_after_chunks=2) as server:
        record = _chat(server.base_url)
    assert record.error.kind == "disconnect"
    assert record.output_text == "tok0 tok1 "


def test_malformed_sse_line_is_malformed_sse_error() -> None:
    with FaultServer("malformed_sse") as server:
        record = _chat(server.base_url)
    assert record.error.kind == "malformed_sse"
    assert record.error.message.startswith("bad SSE line: data: {")


def test_server_exiting_after_n_requests_turns_later_requests_into_connect_errors() -> None:
    with FaultServerProcess("crash_after_n", crash_after=2) as server:
        records = _run(_chats(server.base_url, count=4))
        exit_code = server.process.wait(5)
    kinds = [r.error.kind if r.error else "ok" for r in records]
    # Requests racing the exit see the socket close (disconnect) or find nobody listening (connect).
    assert kinds[:2] == ["ok", "ok"]
    assert kinds[2] in ("disconnect", "connect") and kinds[3] in ("disconnect", "connect")
    assert exit_code == 3


# --- records -----------------------------------------------------------------------------------


def test_record_round_trips_through_json_with_relative_times() -> None:
    with FaultServer("tool_calls", itl_ms=2) as server:
        record = _chat(server.base_url)
    data = json.loads(json.dumps(record.to_dict()))
    assert data["send_time"] == record.send_time
    assert data["first_token_time"] == pytest.approx(record.ttft, abs=1e-6)
    restored = RequestRecord.from_dict(data)
    assert restored.ttft == pytest.approx(record.ttft, abs=1e-6)
    assert restored.itl == pytest.approx(record.itl, abs=1e-6)
    assert restored.tool_calls == record.tool_calls


def test_failed_record_round_trips_its_error() -> None:
    with FaultServer("http_503") as server:
        record = _chat(server.base_url)
    restored = RequestRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert restored.error == record.error
    assert not restored.ok


# --- the fault server's own observables --------------------------------------------------------


def test_fault_server_metrics_count_prefix_cache_queries_hits_and_ttft() -> None:
    with FaultServer("ok") as server:
        _run(_chats(server.base_url, count=2, messages=LONG_PROMPT))
        text = httpx.get(f"{server.base_url}/metrics").text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["vllm:prefix_cache_queries_total"] == 80
    assert samples["vllm:prefix_cache_hits_total"] == 32
    assert samples["vllm:time_to_first_token_seconds_count"] == 2
    assert samples["vllm:num_requests_running"] == 0


def test_fault_server_prefix_cache_reset_makes_repeat_prompt_miss() -> None:
    with FaultServer("ok") as server:
        _chat(server.base_url, messages=LONG_PROMPT)
        reset = httpx.post(f"{server.base_url}/reset_prefix_cache")
        record = _chat(server.base_url, messages=LONG_PROMPT)
    assert reset.json() == {"success": True}
    assert record.cached_prompt_tokens == 0


# --- https ---------------------------------------------------------------------------------------


def _self_signed_certificate(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_https_streams_when_the_certificate_is_trusted_and_fails_as_connect_when_not(tmp_path, monkeypatch) -> None:
    """An https endpoint (e.g. the endpoint deployer's remote server): the client verifies the certificate
    (httpx's rules: SSL_CERT_FILE, else certifi), with one TLS context per process."""
    import ssl

    from pytest_vllmgrid import client as client_module

    cert, key = _self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    with FaultServer("ok", tokens=3, ssl_context=server_context) as server:
        assert server.base_url.startswith("https://")
        client_module._tls_context.cache_clear()  # the process-wide context is built from the environment
        monkeypatch.setenv("SSL_CERT_FILE", cert)
        try:
            trusted = _run(_chats(server.base_url, count=2))
        finally:
            client_module._tls_context.cache_clear()
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = _chat(server.base_url)
        client_module._tls_context.cache_clear()
    assert [(r.error, r.output_text) for r in trusted] == [(None, "tok0 tok1 tok2 ")] * 2
    assert untrusted.error is not None and untrusted.error.kind == "connect"
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.error.message
