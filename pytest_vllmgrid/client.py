"""Async OpenAI-compatible client over httpx that times every streamed chunk of a request.

TTFT is the first chunk carrying content, reasoning or a tool-call delta (role-only chunks do not
count). The first data event of any kind is kept apart (`first_output_time`): vLLM sends the chat role
chunk when the engine's first token reaches the API server, so the two differ by what a reasoning or
tool parser held back (the `<think>` token a reasoning parser swallows, a tool call's header). Failures never raise; they land in RequestRecord.error with one of ERROR_KINDS:
http_status (4xx/5xx, with a body excerpt), timeout (a read stalled past `timeout`, or no free
connection), connect (refused or unreachable), malformed_sse (a line that is not SSE or JSON),
disconnect (the server dropped the connection or ended the stream before [DONE]),
invalid_response (an unexpected body, or an error event inside the stream).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import ssl
import uuid
from dataclasses import asdict, dataclass, field
from time import perf_counter
from typing import Any

import httpx

from pytest_vllmgrid.http1 import Http1Connection

ERROR_KINDS = (
    "http_status",
    "timeout",
    "connect",
    "malformed_sse",
    "disconnect",
    "invalid_response",
)
_EXCERPT_CHARS = 200
_ERROR_BODY_BYTES = 4096
_REDACTED = "[REDACTED]"
_TIME_DIGITS = 7  # to_dict keeps times to 0.1 µs
_SSE_IGNORED_PREFIXES = (b":", b"event:", b"id:", b"retry:")  # comments and unused fields
_decode_json = json.JSONDecoder().decode  # skips json.loads' per-call type and encoding checks


@dataclass
class RequestError:
    """Why a request failed: a kind from ERROR_KINDS and a one-line message free of secrets."""

    kind: str
    message: str
    status_code: int | None = None


class _ErrorEvent(Exception):
    """Internal: the server sent an error object inside a stream."""


class _MalformedLine(Exception):
    """Internal: a line of the stream is neither SSE nor JSON data."""


class _RequestFailure(Exception):
    """Internal: aborts reading a response with the RequestError it carries."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(error.message)
        self.error = error


_RELATIVE_TIMES = ("planned_send_time", "first_token_time", "first_output_time", "end_time")


@dataclass
class RequestRecord:
    """One request's timings, usage, output and error; all times from time.perf_counter()."""

    request_id: str
    send_time: float
    planned_send_time: float | None = None
    first_token_time: float | None = None
    first_output_time: float | None = None  # the first data event with choices, role-only included
    chunk_times: list[float] = field(default_factory=list)
    end_time: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    finish_reason: str | None = None
    output_text: str = ""
    reasoning_text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    error: RequestError | None = None
    streamed: bool = True
    token_ids: list[int] | None = None  # generated token ids, when the request asked vLLM for them (non-streamed)

    @property
    def ok(self) -> bool:
        """True when the request completed without error."""
        return self.error is None

    @property
    def e2e(self) -> float | None:
        """Seconds from send to the end of the response."""
        return None if self.end_time is None else self.end_time - self.send_time

    @property
    def ttft(self) -> float | None:
        """Seconds from send to the first token chunk (equals e2e when not streamed)."""
        return None if self.first_token_time is None else self.first_token_time - self.send_time

    @property
    def first_output(self) -> float | None:
        """Seconds from send to the server's first data event (its role chunk), counted or not."""
        return None if self.first_output_time is None else self.first_output_time - self.send_time

    @property
    def itl(self) -> list[float]:
        """Gaps in seconds between consecutive token chunks."""
        return [later - earlier for earlier, later in itertools.pairwise(self.chunk_times)]

    @property
    def tpot(self) -> float | None:
        """Seconds per output token after the first: (e2e - ttft) / (completion_tokens - 1)."""
        e2e, ttft, tokens = self.e2e, self.ttft, self.completion_tokens
        if e2e is None or ttft is None or tokens is None or tokens < 2:
            return None
        return (e2e - ttft) / (tokens - 1)

    @property
    def scheduling_lag(self) -> float | None:
        """Seconds the send started after its planned time (load runs only)."""
        if self.planned_send_time is None:
            return None
        return self.send_time - self.planned_send_time

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict; times are relative to send_time, which is kept absolute."""
        data = asdict(self)
        base = self.send_time
        for name in _RELATIVE_TIMES:
            value = data[name]
            data[name] = None if value is None else round(value - base, _TIME_DIGITS)
        data["chunk_times"] = [round(t - base, _TIME_DIGITS) for t in self.chunk_times]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """Rebuild a record from `to_dict` output."""
        values = dict(data)
        base = values["send_time"]
        for name in _RELATIVE_TIMES:
            if values.get(name) is not None:
                values[name] = base + values[name]
        values["chunk_times"] = [base + t for t in values.get("chunk_times", [])]
        if values.get("error") is not None:
            values["error"] = RequestError(**values["error"])
        return cls(**values)


class _StreamAssembler:
    """Turns SSE lines (chat deltas or completion text) into a RequestRecord's fields."""

    __slots__ = ("record", "done", "_content", "_reasoning", "_tools")

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.done = False
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._tools: dict[int, dict[str, Any]] = {}

    def feed_lines(self, lines: list[bytes], now: float) -> None:
        """Apply SSE lines that arrived at `now`; raise _MalformedLine on a line that is not SSE."""
        for line in lines:
            if self.done:
                return
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                    self.record.end_time = now
                    continue
                try:
                    event = _decode_json(payload.decode())
                except ValueError:
                    raise _MalformedLine(line) from None
                self.feed_event(event, now)
            elif line.strip() and not line.startswith(_SSE_IGNORED_PREFIXES):
                raise _MalformedLine(line)

    def feed_event(self, event: Any, now: float) -> None:
        """Apply one parsed SSE data object received at `now`."""
        record = self.record
        choices = event.get("choices")
        if choices:
            if record.first_output_time is None:
                record.first_output_time = now
            choice = choices[0]
            token = False
            delta = choice.get("delta")
            if delta is not None:
                content = delta.get("content")
                if content:
                    self._content.append(content)
                    token = True
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    self._reasoning.append(reasoning)
                    token = True
                tool_deltas = delta.get("tool_calls")
                if tool_deltas:
                    self._add_tool_deltas(tool_deltas)
                    token = True
            else:
                text = choice.get("text")
                if text:
                    self._content.append(text)
                    token = True
            if token:
                record.chunk_times.append(now)
                if record.first_token_time is None:
                    record.first_token_time = now
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                record.finish_reason = finish_reason
        usage = event.get("usage")
        if usage:
            _apply_usage(record, usage)
        elif "error" in event or event.get("object") == "error":
            raise _ErrorEvent(str(event.get("error") or event.get("message")))

    def _add_tool_deltas(self, tool_deltas: list[dict[str, Any]]) -> None:
        """Merge tool-call deltas into calls keyed by their index."""
        for position, tool_delta in enumerate(tool_deltas):
            index = tool_delta.get("index", position)
            call = self._tools.get(index)
            if call is None:
                call = self._tools[index] = {
                    "id": "",
                    "type": "function",
                    "function": {"name": "", "arguments": ""},
                }
            if tool_delta.get("id"):
                call["id"] = tool_delta["id"]
            if tool_delta.get("type"):
                call["type"] = tool_delta["type"]
            function = tool_delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]

    def finish(self) -> None:
        """Write the joined text and tool calls into the record."""
        record = self.record
        record.output_text = "".join(self._content)
        record.reasoning_text = "".join(self._reasoning)
        record.tool_calls = [self._tools[index] for index in sorted(self._tools)]


def _apply_usage(record: RequestRecord, usage: dict[str, Any]) -> None:
    """Copy token counts, including cached prompt tokens when reported, into the record."""
    record.prompt_tokens = usage.get("prompt_tokens")
    record.completion_tokens = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    if details and details.get("cached_tokens") is not None:
        record.cached_prompt_tokens = details["cached_tokens"]


def _tool_call_from_message(call: dict[str, Any]) -> dict[str, Any]:
    """Normalise one complete tool call of a non-streamed message."""
    function = call.get("function") or {}
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": call.get("id", ""),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name", ""), "arguments": arguments},
    }


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every https client of the process: building one costs ~20 ms."""
    return httpx.create_ssl_context()


class _ConnectionSlots:
    """Single-connection transports lent one request at a time, at most `limit` at once.

    httpx's shared pool scans all its connections on every request and release (milliseconds per
    request at tens of connections) and its client layer (auth, redirects, cookies, hooks) adds
    ~0.4 ms per request; one transport per connection, used directly, avoids both. The transport
    is our lean HTTP/1.1 connection (http1.py): httpx's own costs ~2 ms of CPU per streamed request.
    """

    def __init__(self, limit: int, ssl_context: ssl.SSLContext | None) -> None:
        if limit < 1:
            raise ValueError(f"max_connections must be >= 1, got {limit}")
        self._ssl_context = ssl_context
        self._free = asyncio.Semaphore(limit)
        self._idle: list[Http1Connection] = []
        self._transports: list[Http1Connection] = []

    async def acquire(self, timeout: float) -> Http1Connection | None:
        """Return an idle transport (or a new one); None if none is free within `timeout` s."""
        if self._free.locked():
            try:
                await asyncio.wait_for(self._free.acquire(), timeout)
            except asyncio.TimeoutError:
                return None
        else:
            await self._free.acquire()
        if self._idle:
            return self._idle.pop()
        # No proxy from the environment: it would sit inside every latency.
        transport = Http1Connection(self._ssl_context)
        self._transports.append(transport)
        return transport

    def release(self, transport: Http1Connection) -> None:
        """Give a transport back for reuse."""
        self._idle.append(transport)
        self._free.release()

    async def aclose(self) -> None:
        """Close every connection."""
        transports, self._transports, self._idle = self._transports, [], []
        await asyncio.gather(*(transport.aclose() for transport in transports))


class ChatClient:
    """OpenAI-compatible chat and completions client for one server and model (async with)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        max_connections: int = 256,
        deadline: float | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key or None
        self._timeout = timeout
        # `timeout` bounds every read: a stream that stalls longer fails with "timeout". `deadline` bounds a
        # whole request: a stream that keeps trickling and never ends fails with "timeout" too.
        self._timeouts = httpx.Timeout(timeout, connect=connect_timeout).as_dict()
        if deadline is not None and not deadline > 0:
            raise ValueError(f"deadline must be a positive number of seconds or None, got {deadline!r}")
        self._deadline = deadline
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream, application/json",
            "Accept-Encoding": "identity",  # the body is read raw, undecoded
        }
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._urls = {
            path: httpx.URL(self.base_url + path)
            for path in ("/v1/chat/completions", "/v1/completions")
        }
        self._slots = _ConnectionSlots(max_connections, _tls_context() if self.base_url.startswith("https://") else None)
        self.succeeded = 0  # requests answered in full without error (a /metrics window waits for them)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection."""
        await self._slots.aclose()

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        stream: bool = True,
        extra_body: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> RequestRecord:
        """Send one chat completion and return its record; failures land in record.error."""
        body = self._body(messages=messages, max_tokens=max_tokens, temperature=temperature)
        if tools is not None:
            body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        return await self._request("/v1/chat/completions", body, stream, extra_body, request_id)

    async def completion(
        self,
        prompt: str | list[int],
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        stream: bool = True,
        extra_body: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> RequestRecord:
        """Send one text completion and return its record; failures land in record.error."""
        body = self._body(prompt=prompt, max_tokens=max_tokens, temperature=temperature)
        return await self._request("/v1/completions", body, stream, extra_body, request_id)

    def _body(self, **fields: Any) -> dict[str, Any]:
        """A request body for this client's model."""
        return {"model": self.model, **fields}

    async def _request(
        self,
        path: str,
        body: dict[str, Any],
        stream: bool,
        extra_body: dict[str, Any] | None,
        request_id: str | None,
    ) -> RequestRecord:
        """Send `body` to `path`, timing it and classifying any failure into the record."""
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        if extra_body:
            body.update(extra_body)
        request_id = request_id or uuid.uuid4().hex
        request = httpx.Request(
            "POST",
            self._urls[path],
            content=json.dumps(body).encode(),
            headers={**self._headers, "X-Request-Id": request_id},
            extensions={"timeout": self._timeouts},
        )
        transport = await self._slots.acquire(self._timeout)
        record = RequestRecord(request_id=request_id, send_time=perf_counter(), streamed=stream)
        if transport is None:
            record.error = self._error("timeout", f"no free connection within {self._timeout} s")
            record.end_time = record.send_time
            return record
        try:
            async with asyncio.timeout(self._deadline):
                response = await transport.handle_async_request(request)
                try:
                    if response.status_code >= 400:
                        raise _RequestFailure(await self._status_error(response))
                    if stream:
                        await self._read_stream(response, record)
                    else:
                        await self._read_whole(response, record)
                finally:
                    await response.aclose()
        except _RequestFailure as failure:
            record.error = failure.error
        except httpx.HTTPError as exc:
            record.error = self._transport_error(exc)
        except TimeoutError:  # the deadline, not a read timeout (those are httpx errors)
            await transport.aclose()  # a half-read exchange: the next request needs a fresh connection
            record.error = self._error("timeout", f"request still unfinished after its {self._deadline:g} s deadline")
        finally:
            self._slots.release(transport)
        if record.end_time is None:
            record.end_time = perf_counter()
        if record.error is None:
            self.succeeded += 1
        return record

    async def _read_stream(self, response: httpx.Response, record: RequestRecord) -> None:
        """Parse the SSE body line by line, timestamping each network read once."""
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            raise _RequestFailure(
                self._error("invalid_response", f"expected text/event-stream, got {content_type!r}")
            )
        assembler = _StreamAssembler(record)
        pending = b""
        try:
            async for data in response.aiter_raw():
                now = perf_counter()
                if pending:
                    data = pending + data
                lines = data.split(b"\n")
                pending = lines.pop()
                assembler.feed_lines(lines, now)
            if pending:
                assembler.feed_lines([pending], perf_counter())
        except _MalformedLine as exc:
            line = exc.args[0].decode("utf-8", "replace")
            raise _RequestFailure(self._error("malformed_sse", f"bad SSE line: {line}")) from None
        except _ErrorEvent as exc:
            raise _RequestFailure(
                self._error("invalid_response", f"error event in stream: {exc}")
            ) from None
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise _RequestFailure(
                self._error("invalid_response", f"unexpected event shape: {exc!r}")
            ) from None
        finally:
            assembler.finish()
        if not assembler.done and record.finish_reason is None:
            raise _RequestFailure(self._error("disconnect", "stream ended before [DONE]"))

    async def _read_whole(self, response: httpx.Response, record: RequestRecord) -> None:
        """Read a non-streamed JSON response; its first token time is its end time."""
        raw = await response.aread()
        record.end_time = perf_counter()
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            message = choice.get("message")
            if message is not None:
                record.output_text = message.get("content") or ""
                record.reasoning_text = (
                    message.get("reasoning_content") or message.get("reasoning") or ""
                )
                record.tool_calls = [
                    _tool_call_from_message(call) for call in message.get("tool_calls") or []
                ]
            else:
                record.output_text = choice.get("text") or ""
            record.finish_reason = choice.get("finish_reason")
            record.token_ids = choice.get("token_ids")
            if payload.get("usage"):
                _apply_usage(record, payload["usage"])
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise _RequestFailure(
                self._error("invalid_response", f"unreadable JSON response: {exc!r}")
            ) from None
        if record.output_text or record.reasoning_text or record.tool_calls:
            record.first_token_time = record.first_output_time = record.end_time
            record.chunk_times.append(record.end_time)

    async def _status_error(self, response: httpx.Response) -> RequestError:
        """Build an http_status error carrying a short excerpt of the response body."""
        excerpt = b""
        try:
            async for data in response.aiter_raw():
                excerpt += data
                if len(excerpt) >= _ERROR_BODY_BYTES:
                    break
        except httpx.HTTPError:
            pass
        text = excerpt.decode("utf-8", "replace")
        return self._error(
            "http_status", f"HTTP {response.status_code}: {text}", response.status_code
        )

    def _transport_error(self, exc: httpx.HTTPError) -> RequestError:
        """Classify an httpx exception into a RequestError."""
        reason = str(exc) or str(exc.__cause__ or exc.__context__ or "") or "no detail"
        detail = f"{type(exc).__name__}: {reason}"
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return self._error("connect", detail)
        if isinstance(exc, httpx.TimeoutException):
            return self._error("timeout", detail)
        if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.CloseError)):
            return self._error("disconnect", detail)
        if isinstance(exc, httpx.RemoteProtocolError):
            text = str(exc).lower()
            kind = (
                "disconnect" if ("disconnect" in text or "closed" in text) else "invalid_response"
            )
            return self._error(kind, detail)
        if isinstance(exc, httpx.DecodingError):
            return self._error("invalid_response", detail)
        return self._error("connect", detail)

    def _error(self, kind: str, message: str, status_code: int | None = None) -> RequestError:
        """Build a RequestError whose message is one short line with the API key redacted."""
        line = " ".join(message.split())
        if self._api_key:
            line = line.replace(self._api_key, _REDACTED)
        if len(line) > _EXCERPT_CHARS:
            line = line[: _EXCERPT_CHARS - 3] + "..."
        return RequestError(kind, line, status_code)
