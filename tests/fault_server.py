"""Fault-injecting OpenAI-compatible HTTP/1.1 server: a test double, in a thread or a subprocess.

Run as a script: python tests/fault_server.py --mode ok --port 0 [--tokens N --ttft-ms MS ...]
prints "listening on http://127.0.0.1:PORT" once bound and exits after --max-lifetime seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

MODES = (
    "ok",
    "http_500",
    "http_503",
    "reset",
    "malformed_sse",
    "stall",
    "slow_first_token",
    "never_ready",
    "crash_after_n",
    "wrong_model",
    "tool_calls",
)
SLOW_FIRST_TOKEN_MS = 1000.0
OTHER_MODEL = "other-model"
PREFIX_BLOCK_TOKENS = 16
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
TOOL_CALLS = (
    ("get_weather", ('{"city": ', '"Paris"', "}")),
    ("get_time", ('{"tz": "UTC"}',)),
)
_STATUS_TEXT = {
    200: "OK",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_CRASH_EXIT_CODE = 3


@dataclass
class FaultOptions:
    """What the server serves and which fault it injects."""

    mode: str = "ok"
    tokens: int = 16  # completion tokens per response (capped by the request's max_tokens)
    ttft_ms: float | None = None  # first-token delay; None: 0, or 1000 in slow_first_token
    itl_ms: float = 0.0  # delay between token chunks
    model: str = "fault-model"
    fail_after_chunks: int = 3  # reset / stall: token chunks sent before the fault
    crash_after: int = 3  # crash_after_n: completion requests served before dying
    reasoning_tokens: int = 0  # reasoning chunks sent before the content
    reasoning_field: str = "reasoning_content"
    echo_auth: bool = False  # http_500: put the Authorization header in the error body
    # Where a request's time goes, as vLLM's histograms see it: the engine's clock starts after api_delay_ms
    # (like vLLM's arrival stamp: time before it is in no histogram), waits queue_ms (queue time), then
    # ttft_ms (prefill) to its first token; the first held_tokens tokens are generated but not sent, their
    # text joining the next delta (vLLM's tool-call parser for tool_choice=required holds a call back until
    # its name and "parameters" are generated), so the client's first token comes held_tokens x itl_ms later.
    api_delay_ms: float = 0.0
    queue_ms: float = 0.0
    held_tokens: int = 0
    role_at_first_token: bool = False  # send the chat role chunk when the first token is generated, as vLLM does
    cache_config: str | None = None  # JSON labels of a vllm:cache_config_info gauge (None: no such gauge)
    max_model_len: int = 4096  # what /v1/models lists
    diverge_at: int | None = None  # content token i >= this is "alt{i}" (id 1000 + i): a server whose answers changed
    slots: int = 0  # completions generated at once (0: any number); the rest queue, like vLLM's max_num_seqs

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; allowed: {', '.join(MODES)}")

    @property
    def first_token_s(self) -> float:
        """Seconds between the role chunk and the first token."""
        if self.ttft_ms is not None:
            return self.ttft_ms / 1000
        return SLOW_FIRST_TOKEN_MS / 1000 if self.mode == "slow_first_token" else 0.0

    def to_argv(self) -> list[str]:
        """Return the command-line flags that reproduce these options."""
        argv: list[str] = []
        for option in fields(self):
            value = getattr(self, option.name)
            flag = "--" + option.name.replace("_", "-")
            if value is None or value is False:
                continue
            argv += [flag] if value is True else [flag, str(value)]
        return argv


@dataclass
class ReceivedRequest:
    """What the server saw of one request."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any = None


@dataclass
class _Histogram:
    """One vLLM-like histogram (cumulative buckets on TTFT_BUCKETS)."""

    name: str
    help: str
    sum: float = 0.0
    count: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(TTFT_BUCKETS))

    def observe(self, seconds: float) -> None:
        """Record one observation."""
        self.sum += seconds
        self.count += 1
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def render(self, label: str) -> list[str]:
        """Its exposition lines."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        lines += [f'{self.name}_bucket{{le="{bound}",{label}}} {float(count)}'
                  for bound, count in zip(TTFT_BUCKETS, self.buckets, strict=True)]
        return lines + [
            f'{self.name}_bucket{{le="+Inf",{label}}} {self.count:.1f}',
            f"{self.name}_count{{{label}}} {float(self.count)}",
            f"{self.name}_sum{{{label}}} {self.sum}",
        ]


@dataclass
class _Metrics:
    """The vLLM-like counters the server exposes on /metrics."""

    queries: int = 0
    hits: int = 0
    running: int = 0
    ttft: _Histogram = field(default_factory=lambda: _Histogram(
        "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds."))
    e2e: _Histogram = field(default_factory=lambda: _Histogram(
        "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds."))
    queue: _Histogram = field(default_factory=lambda: _Histogram(
        "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request."))
    prefill: _Histogram = field(default_factory=lambda: _Histogram(
        "vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request."))
    itl: _Histogram = field(default_factory=lambda: _Histogram(
        "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds."))

    def observe_ttft(self, seconds: float) -> None:
        """Record one time to first token."""
        self.ttft.observe(seconds)

    def observe_finished(self, plan: _ResponsePlan, e2e_s: float) -> None:
        """Record a finished request's end-to-end latency, queue and prefill times and token gaps."""
        self.e2e.observe(e2e_s)
        self.queue.observe(plan.options.queue_ms / 1000)
        self.prefill.observe(plan.options.first_token_s)
        for _ in range(max(plan.completion_tokens - 1, 0)):
            self.itl.observe(plan.options.itl_ms / 1000)

    def render(self, model: str, cache_config: str | None = None) -> str:
        """Return the Prometheus text exposition (with vLLM's cache_config_info gauge when given its labels)."""
        label = f'model_name="{model}"'
        lines = []
        if cache_config:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(json.loads(cache_config).items()))
            lines += ["# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
                      "# TYPE vllm:cache_config_info gauge", f"vllm:cache_config_info{{{labels}}} 1.0"]
        lines += [
            "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in tokens.",
            "# TYPE vllm:prefix_cache_queries_total counter",
            f"vllm:prefix_cache_queries_total{{{label}}} {float(self.queries)}",
            "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in tokens.",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f"vllm:prefix_cache_hits_total{{{label}}} {float(self.hits)}",
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{label}}} {float(self.running)}",
        ]
        for histogram in (self.ttft, self.e2e, self.queue, self.prefill, self.itl):
            lines += histogram.render(label)
        return "\n".join(lines) + "\n"


class _Reset(Exception):
    """Raised by an event plan to drop the connection abruptly."""


class _Stall(Exception):
    """Raised by an event plan to stop sending and hold the connection open."""


class FaultApp:
    """Serves the endpoints of one fault mode over raw asyncio streams."""

    def __init__(self, options: FaultOptions, *, exit_process_on_crash: bool = False) -> None:
        self.options = options
        self.received: deque[ReceivedRequest] = deque(maxlen=1000)
        self.completions_served = 0
        self._exit_process_on_crash = exit_process_on_crash
        self._metrics = _Metrics()
        self._cached_blocks: set[int] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._slots = asyncio.Semaphore(options.slots) if options.slots > 0 else None

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: Any = None) -> int:
        """Bind and start serving (over TLS when given a server `ssl_context`); return the bound port."""
        self._server = await asyncio.start_server(self._serve_connection, host, port, backlog=1024,
                                                  ssl=ssl_context)
        return self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop accepting and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve HTTP/1.1 requests on one keep-alive connection."""
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.received.append(request)
                await self._dispatch(request, reader, writer)
                if request.headers.get("connection", "").lower() == "close":
                    break
        except _Reset:
            writer.transport.abort()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _dispatch(
        self, request: ReceivedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Route one request."""
        mode, path, post = self.options.mode, request.path, request.method == "POST"
        if path == "/metrics":
            await _respond(writer, 200, self._metrics.render(self.options.model, self.options.cache_config),
                           "text/plain")
        elif mode == "never_ready":
            await _respond_json(writer, 503, _error_body("server is starting", 503))
        elif path == "/health":
            await _respond(writer, 200, "", "application/json")
        elif path == "/v1/models":
            await _respond_json(writer, 200, self._models_body())
        elif path == "/reset_prefix_cache" and post:
            self._cached_blocks.clear()
            await _respond_json(writer, 200, {"success": True})
        elif path in ("/v1/chat/completions", "/v1/completions") and post:
            await self._serve_completion(request, reader, writer)
            self.completions_served += 1
            if mode == "crash_after_n" and self.completions_served >= self.options.crash_after:
                self._crash()
        else:
            await _respond_json(writer, 404, _error_body(f"no route {path}", 404))

    async def _serve_completion(
        self, request: ReceivedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer a chat or text completion according to the mode."""
        options, body = self.options, request.body or {}
        if options.mode in ("http_500", "http_503"):
            status = 500 if options.mode == "http_500" else 503
            message = "injected failure"
            if options.echo_auth:
                message += f" (auth: {request.headers.get('authorization', '')})"
            return await _respond_json(writer, status, _error_body(message, status))
        served_model = OTHER_MODEL if options.mode == "wrong_model" else options.model
        if body.get("model") != served_model:
            message = f"The model `{body.get('model')}` does not exist."
            return await _respond_json(writer, 404, _error_body(message, 404))
        chat = request.path == "/v1/chat/completions"
        prompt_tokens, cached = self._count_prompt(body, chat)
        plan = _ResponsePlan(options, body, chat, prompt_tokens, cached)
        self._metrics.running += 1
        if options.api_delay_ms:
            await asyncio.sleep(options.api_delay_ms / 1000)
        engine_start = time.perf_counter()  # the engine's clock (vLLM's arrival stamp)
        if self._slots is not None:  # wait for a free slot: the wait is queue time inside the engine's TTFT
            await self._slots.acquire()
        try:
            if body.get("stream"):
                await self._stream(plan, reader, writer, engine_start)
            elif options.mode == "stall":
                await reader.read()  # never answer; returns once the client closes
                raise _Reset
            elif options.mode == "reset":
                raise _Reset
            else:
                await asyncio.sleep(options.queue_ms / 1000 + plan.total_delay_s)
                self._metrics.observe_ttft(time.perf_counter() - engine_start)
                self._metrics.observe_finished(plan, time.perf_counter() - engine_start)
                await _respond_json(writer, 200, plan.whole_response())
        finally:
            self._metrics.running -= 1
            if self._slots is not None:
                self._slots.release()

    async def _stream(
        self,
        plan: _ResponsePlan,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        engine_start: float,
    ) -> None:
        """Stream the plan's SSE events as HTTP chunks, injecting the mode's fault; TTFT is observed at the
        engine's first token, sent or held."""
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        first = True
        try:
            for delay_s, event, is_token in plan.events():
                if delay_s > 0:
                    await writer.drain()
                    await asyncio.sleep(delay_s)
                if is_token and first:
                    first = False
                    self._metrics.observe_ttft(time.perf_counter() - engine_start)
                if event is not None:
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        except _Stall:
            await writer.drain()
            await reader.read()  # returns once the client gives up and closes
            raise _Reset from None
        except _Reset:
            await writer.drain()
            await asyncio.sleep(0.02)  # let the client read what was sent before the reset
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise
        self._metrics.observe_finished(plan, time.perf_counter() - engine_start)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def _count_prompt(self, body: dict[str, Any], chat: bool) -> tuple[int, int]:
        """Count prompt words as tokens and look their full blocks up in the prefix cache."""
        if chat:
            text = " ".join(_message_text(m.get("content")) for m in body.get("messages") or [])
        else:
            prompt = body.get("prompt", "")
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        words = text.split()
        cached, chain, missed = 0, 0, False
        for start in range(0, len(words) - len(words) % PREFIX_BLOCK_TOKENS, PREFIX_BLOCK_TOKENS):
            chain = hash((chain, tuple(words[start : start + PREFIX_BLOCK_TOKENS])))
            if not missed and chain in self._cached_blocks:
                cached += PREFIX_BLOCK_TOKENS
            else:
                missed = True
                self._cached_blocks.add(chain)
        self._metrics.queries += len(words)
        self._metrics.hits += cached
        return len(words), cached

    def _models_body(self) -> dict[str, Any]:
        """Return the /v1/models listing."""
        name = OTHER_MODEL if self.options.mode == "wrong_model" else self.options.model
        card = {
            "id": name,
            "object": "model",
            "owned_by": "vllm",
            "root": name,
            "max_model_len": self.options.max_model_len,
        }
        return {"object": "list", "data": [card]}

    def _crash(self) -> None:
        """Die like a crashed server: exit the process, or in a thread stop serving."""
        if self._exit_process_on_crash:
            os._exit(_CRASH_EXIT_CODE)
        self.stop()


class _ResponsePlan:
    """The events of one completion response for the configured mode."""

    def __init__(
        self,
        options: FaultOptions,
        body: dict[str, Any],
        chat: bool,
        prompt_tokens: int,
        cached: int,
    ) -> None:
        self.options = options
        self.body = body
        self.chat = chat
        self.model = body.get("model", options.model)
        self.id = ("chatcmpl-" if chat else "cmpl-") + os.urandom(8).hex()
        self.created = int(time.time())
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        self.content_tokens = min(options.tokens, limit) if limit else options.tokens
        self.finish_reason = "length" if limit and limit <= options.tokens else "stop"
        if options.mode == "tool_calls":
            self.finish_reason = "tool_calls"
        self.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    @property
    def completion_tokens(self) -> int:
        """Tokens generated: reasoning plus content, or one per tool-call fragment."""
        if self.options.mode == "tool_calls":
            return sum(1 + len(parts) for _, parts in TOOL_CALLS)
        return self.options.reasoning_tokens + self.content_tokens

    @property
    def total_delay_s(self) -> float:
        """Seconds the whole generation takes."""
        return self.options.first_token_s + self.options.itl_ms / 1000 * max(
            self.completion_tokens - 1, 0
        )

    def _deltas(self) -> list[dict[str, Any]]:
        """Return the token deltas (chat) or text pieces (completions), in order."""
        options = self.options
        if options.mode == "tool_calls" and self.chat:
            deltas: list[dict[str, Any]] = []
            for index, (name, parts) in enumerate(TOOL_CALLS):
                head = {"id": f"chatcmpl-tool-{index}", "type": "function"}
                head.update(index=index, function={"name": name, "arguments": ""})
                deltas.append({"tool_calls": [head]})
                for part in parts:
                    deltas.append(
                        {"tool_calls": [{"index": index, "function": {"arguments": part}}]}
                    )
            return deltas
        field_name = options.reasoning_field
        reasoning = [{field_name: f"think{i} "} for i in range(options.reasoning_tokens)]
        return reasoning + [{"content": piece} for piece in self.content_pieces()]

    def content_pieces(self) -> list[str]:
        """The content tokens' texts: tok0 tok1 ... (alt{i} from diverge_at on), or for a response_format JSON
        schema the first instance it allows, as one piece."""
        response_format = self.body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            return [json.dumps(_first_instance(response_format["json_schema"]["schema"]))]
        start = self.options.diverge_at
        return [f"{'alt' if start is not None and i >= start else 'tok'}{i} " for i in range(self.content_tokens)]

    def token_ids(self) -> list[int]:
        """The generated tokens' ids (vLLM's return_token_ids): 500 + i for think{i}, i for tok{i}, 1000 + i for
        alt{i}."""
        reasoning = [500 + i for i in range(self.options.reasoning_tokens)]
        return reasoning + [(1000 if p.startswith("alt") else 0) + i for i, p in enumerate(self.content_pieces())]

    def _chunk(self, piece: dict[str, Any] | None, finish_reason: str | None = None) -> bytes:
        """Return one SSE event carrying a delta (chat) or text (completions)."""
        if self.chat:
            choice = {
                "index": 0,
                "delta": piece or {},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            kind = "chat.completion.chunk"
        else:
            text = (piece or {}).get("content", "")
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            kind = "text_completion"
        return self._event({"choices": [choice]}, kind)

    def _event(self, payload: dict[str, Any], kind: str) -> bytes:
        """Wrap a payload with the response's id, model and time as one SSE event."""
        envelope = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        envelope.update(payload)
        return b"data: " + json.dumps(envelope, separators=(",", ":")).encode() + b"\n\n"

    def events(self) -> Iterator[tuple[float, bytes | None, bool]]:
        """Yield (delay before, SSE event, carries a token) and raise _Reset/_Stall on faults; a held token's
        event is None (its text goes out with the next delta)."""
        options, mode = self.options, self.options.mode
        first_delay = options.queue_ms / 1000 + options.first_token_s
        role_late = self.chat and options.role_at_first_token
        if self.chat:
            yield first_delay if role_late else 0.0, self._chunk({"role": "assistant", "content": ""}), False
        if mode == "malformed_sse":
            yield 0.0, b'data: {"choices": [{"delta": \n\n', False
        deltas = self._deltas()
        held: list[dict[str, Any]] = []
        for i, delta in enumerate(deltas):
            if mode in ("reset", "stall") and i == options.fail_after_chunks:
                raise _Reset if mode == "reset" else _Stall
            delay = (0.0 if role_late else first_delay) if i == 0 else options.itl_ms / 1000
            last = i == len(deltas) - 1
            if i < options.held_tokens and not last:
                held.append(delta)
                yield delay, None, True
                continue
            piece = _joined([*held, delta])
            held = []
            yield delay, self._chunk(piece, self.finish_reason if last else None), True
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        yield 0.0, self._event({"choices": [], "usage": self.usage}, kind), False
        yield 0.0, b"data: [DONE]\n\n", False

    def whole_response(self) -> dict[str, Any]:
        """Return the non-streamed response body."""
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": None}
            if self.options.mode == "tool_calls":
                message["tool_calls"] = [
                    {
                        "id": f"chatcmpl-tool-{index}",
                        "type": "function",
                        "function": {"name": name, "arguments": "".join(parts)},
                    }
                    for index, (name, parts) in enumerate(TOOL_CALLS)
                ]
            else:
                message["content"] = "".join(self.content_pieces())
                if self.options.reasoning_tokens:
                    reasoning = "".join(f"think{i} " for i in range(self.options.reasoning_tokens))
                    message[self.options.reasoning_field] = reasoning
            choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
            if self.body.get("return_token_ids"):
                choice["token_ids"] = self.token_ids()
            kind = "chat.completion"
        else:
            text = "".join(f"tok{i} " for i in range(self.content_tokens))
            choice = {"index": 0, "text": text, "finish_reason": self.finish_reason}
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage,
        }


def _first_instance(schema: dict[str, Any]) -> Any:
    """The first value a JSON schema allows: an enum's first, an object's required properties, 0, "", false, []."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {key: _first_instance(schema["properties"][key]) for key in schema.get("required", [])}
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": []}.get(kind)


def _joined(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """Several token deltas as one: text fields concatenated, tool-call fragments listed in order."""
    out: dict[str, Any] = {}
    for delta in deltas:
        for key, value in delta.items():
            out[key] = out[key] + value if key in out else value
    return out


def _message_text(content: Any) -> str:
    """Return the text of a chat message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _error_body(message: str, status: int) -> dict[str, Any]:
    """Return a vLLM-style error body."""
    return {
        "error": {"message": message, "type": _STATUS_TEXT.get(status, "Error"), "code": status}
    }


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    """Read one request (Content-Length bodies only); None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    raw = await reader.readexactly(length) if length else b""
    body = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
    return ReceivedRequest(method, target.split("?", 1)[0], headers, body)


async def _respond(writer: asyncio.StreamWriter, status: int, text: str, content_type: str) -> None:
    """Write a complete response with a Content-Length body."""
    payload = text.encode()
    head = (
        f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Status')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    writer.write(head.encode() + b"\r\n" + payload)
    await writer.drain()


async def _respond_json(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
    """Write a complete JSON response."""
    await _respond(writer, status, json.dumps(payload), "application/json")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a uvloop loop when available (faster), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class FaultServer:
    """Runs a FaultApp on 127.0.0.1 in a thread: `with FaultServer("ok") as s: s.base_url`."""

    def __init__(self, mode: str = "ok", *, port: int = 0, ssl_context: Any = None, **options: Any) -> None:
        self.app = FaultApp(FaultOptions(mode=mode, **options))
        self.port = port
        self.ssl_context = ssl_context
        self._loop = _new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-server", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """Root URL of the server, without /v1."""
        return f"{'https' if self.ssl_context is not None else 'http'}://127.0.0.1:{self.port}"

    @property
    def received(self) -> deque[ReceivedRequest]:
        """The last requests the server received."""
        return self.app.received

    def __enter__(self) -> FaultServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault server did not start within 10 s")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        """Thread body: bind, then run the loop until stopped."""
        asyncio.set_event_loop(self._loop)
        try:
            self.port = self._loop.run_until_complete(self.app.start(port=self.port, ssl_context=self.ssl_context))
        except BaseException as exc:  # reported to the thread that called __enter__
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self.app.stop()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()


class FaultServerProcess:
    """Runs the fault server as a subprocess: `with FaultServerProcess("ok") as s: s.base_url`."""

    def __init__(self, mode: str = "ok", *, max_lifetime_s: float = 120.0, **options: Any) -> None:
        self.options = FaultOptions(mode=mode, **options)
        self.max_lifetime_s = max_lifetime_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """Root URL of the server, without /v1."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultServerProcess:
        argv = [sys.executable, __file__, "--port", "0", "--max-lifetime", str(self.max_lifetime_s)]
        self.process = subprocess.Popen(argv + self.options.to_argv(), stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 10)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on "):
            self.__exit__()
            raise RuntimeError(f"fault server subprocess did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


async def _serve_until(app: FaultApp, port: int, max_lifetime_s: float) -> None:
    """Serve on `port` for at most `max_lifetime_s` seconds, announcing the bound port."""
    bound = await app.start(port=port)
    print(f"listening on http://127.0.0.1:{bound}", flush=True)
    await asyncio.sleep(max_lifetime_s)
    app.stop()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: serve one mode until --max-lifetime seconds have passed."""
    defaults = FaultOptions()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default=defaults.mode)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--max-lifetime", type=float, default=600.0, help="seconds before exiting")
    parser.add_argument("--tokens", type=int, default=defaults.tokens)
    parser.add_argument("--ttft-ms", type=float, default=defaults.ttft_ms)
    parser.add_argument("--itl-ms", type=float, default=defaults.itl_ms)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--fail-after-chunks", type=int, default=defaults.fail_after_chunks)
    parser.add_argument("--crash-after", type=int, default=defaults.crash_after)
    parser.add_argument("--reasoning-tokens", type=int, default=defaults.reasoning_tokens)
    parser.add_argument("--reasoning-field", default=defaults.reasoning_field)
    parser.add_argument("--echo-auth", action="store_true")
    parser.add_argument("--api-delay-ms", type=float, default=defaults.api_delay_ms)
    parser.add_argument("--queue-ms", type=float, default=defaults.queue_ms)
    parser.add_argument("--held-tokens", type=int, default=defaults.held_tokens)
    parser.add_argument("--role-at-first-token", action="store_true")
    parser.add_argument("--cache-config", default=defaults.cache_config)
    parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
    parser.add_argument("--diverge-at", type=int, default=defaults.diverge_at)
    parser.add_argument("--slots", type=int, default=defaults.slots)
    args = vars(parser.parse_args(argv))
    port, max_lifetime_s = args.pop("port"), args.pop("max_lifetime")
    app = FaultApp(FaultOptions(**args), exit_process_on_crash=True)
    loop = _new_event_loop()
    try:
        loop.run_until_complete(_serve_until(app, port, max_lifetime_s))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
