"""A lean HTTP/1.1 keep-alive connection usable as an httpx async transport.

httpx's own transport (httpcore + h11 + anyio) spends ~2 ms of CPU per streamed request here,
mostly per received chunk (anyio cancel scopes, h11's event machinery); at hundreds of requests
per second that is the load generator's ceiling on one core. This transport keeps one connection,
writes a request in one call and decodes the response (chunked, Content-Length or until close) in
an asyncio.Protocol, so a chunk costs one buffer append and a slice. It raises httpx's exception
types, so callers classify failures as they would with httpx's transport.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import httpx

_MAX_HEAD_BYTES = 65536
_CRLF = b"\r\n"


class _Protocol(asyncio.Protocol):
    """Buffers what the socket delivers and wakes the one reader waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Return once more data, EOF or an error arrived; raise TimeoutError after `timeout` s."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


class _Stale(Exception):
    """The connection closed before any byte of the response: the request may be sent again."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Http1Connection(httpx.AsyncBaseTransport):
    """One HTTP/1.1 connection to one origin, one request at a time, reopened when needed."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._protocol: _Protocol | None = None
        self._origin: tuple[bytes, bytes, int] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` and return its response with a streaming body."""
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        origin = (request.url.raw_scheme, request.url.raw_host, request.url.port or
                  (443 if request.url.raw_scheme == b"https" else 80))
        reused = self._usable(origin)
        if not reused:
            await self._connect(request, origin, timeouts.get("connect"))
        head = _request_head(request)
        try:
            return await self._exchange(request, head, read_timeout)
        except _Stale as stale:
            if not reused:
                raise stale.error from None
        # the server closed an idle kept-alive connection just as we reused it: once more, fresh
        await self._connect(request, origin, timeouts.get("connect"))
        try:
            return await self._exchange(request, head, read_timeout)
        except _Stale as stale:
            raise stale.error from None

    def _usable(self, origin: tuple[bytes, bytes, int]) -> bool:
        protocol = self._protocol
        return (protocol is not None and origin == self._origin and not protocol.eof
                and not protocol.buffer and protocol.transport is not None
                and not protocol.transport.is_closing())

    async def _connect(self, request: httpx.Request, origin: tuple[bytes, bytes, int],
                       timeout: float | None) -> None:
        self._close_transport()
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        ssl_context = None
        if scheme == b"https":
            ssl_context = self._ssl_context or ssl.create_default_context()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, host.decode("ascii"), port, ssl=ssl_context), timeout)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host.decode()}:{port} timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        self._protocol, self._origin = protocol, origin

    async def _exchange(self, request: httpx.Request, head: bytes, read_timeout: float | None) -> httpx.Response:
        protocol = self._protocol
        assert protocol is not None and protocol.transport is not None
        body = request.content  # the client always sends a complete body
        protocol.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            protocol.transport.write(body)
        reader = _Reader(protocol, read_timeout, request)
        try:
            head_bytes = await reader.head()
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if protocol.eof and not protocol.buffer:
                raise _Stale(exc) from None  # closed before answering: safe to send again
            raise
        while True:
            status, reason, headers = _parse_head(head_bytes, request)
            if status >= 200 or status == 101:
                break
            head_bytes = await reader.head()  # 1xx informational responses precede the real one
        stream = _BodyStream(self, reader, headers)
        return httpx.Response(status, headers=headers, stream=stream, request=request,
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})

    def release(self, reusable: bool) -> None:
        """Called by the body stream when done: keep the connection for the next request or drop it."""
        if not reusable:
            self._close_transport()

    def _close_transport(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    async def aclose(self) -> None:
        """Close the connection."""
        self._close_transport()


class _Reader:
    """Reads from the protocol's buffer, waiting (bounded by the read timeout) when it runs dry."""

    def __init__(self, protocol: _Protocol, timeout: float | None, request: httpx.Request) -> None:
        self.protocol = protocol
        self.timeout = timeout
        self.request = request

    async def _more(self, what: str) -> None:
        protocol = self.protocol
        if protocol.eof:
            if isinstance(protocol.error, OSError):
                raise httpx.ReadError(str(protocol.error) or type(protocol.error).__name__,
                                      request=self.request) from protocol.error
            raise httpx.RemoteProtocolError(f"peer closed connection without sending {what}",
                                            request=self.request)
        try:
            await protocol.wait(self.timeout)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no data for {self.timeout} s", request=self.request) from None

    async def head(self) -> bytes:
        buffer = self.protocol.buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(buffer[:end])
                del buffer[:end + 4]
                return head
            if len(buffer) > _MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("response head too large", request=self.request)
            if self.protocol.eof and not buffer:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                                request=self.request)
            await self._more("a complete response head")

    async def line(self) -> bytes:
        buffer = self.protocol.buffer
        while True:
            end = buffer.find(_CRLF)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[:end + 2]
                return line
            await self._more("a complete message body")

    async def some(self, limit: int | None) -> bytes:
        """Up to `limit` bytes (any amount when None); waits only when nothing is buffered."""
        buffer = self.protocol.buffer
        while not buffer:
            if limit is None and self.protocol.eof and self.protocol.error is None:
                return b""
            await self._more("a complete message body")
        size = len(buffer) if limit is None else min(limit, len(buffer))
        data = bytes(buffer[:size])
        del buffer[:size]
        return data


def _request_head(request: httpx.Request) -> bytes:
    """The request line and headers (httpx already set Host and Content-Length)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    lines += [b"%s: %s" % (name, value) for name, value in request.headers.raw]
    return _CRLF.join(lines) + b"\r\n\r\n"


def _parse_head(head: bytes, request: httpx.Request) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status code, reason and headers of a response head."""
    lines = head.split(_CRLF)
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}", request=request)
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}", request=request)
        headers.append((name.strip(), value.strip()))
    return int(parts[1]), parts[2] if len(parts) > 2 else b"", headers


class _BodyStream(httpx.AsyncByteStream):
    """The response body, decoded from chunked framing, a Content-Length, or read until close."""

    def __init__(self, connection: Http1Connection, reader: _Reader, headers: list[tuple[bytes, bytes]]) -> None:
        self._connection = connection
        self._reader = reader
        values = {name.lower(): value for name, value in headers}
        self._chunked = b"chunked" in values.get(b"transfer-encoding", b"").lower()
        length = values.get(b"content-length")
        self._length = int(length) if length is not None and not self._chunked else None
        self._keep_alive = values.get(b"connection", b"").lower() != b"close"
        self._complete = False
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._chunked:
                async for data in self._read_chunked():
                    yield data
            elif self._length is not None:
                remaining = self._length
                while remaining:
                    data = await self._reader.some(remaining)
                    remaining -= len(data)
                    yield data
            else:
                self._keep_alive = False
                while data := await self._reader.some(None):
                    yield data
            self._complete = True
        finally:
            self._release()

    async def _read_chunked(self) -> AsyncIterator[bytes]:
        reader = self._reader
        while True:
            size_line = await reader.line()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"malformed chunk size {size_line[:40]!r}",
                                                request=reader.request) from None
            if size == 0:
                while await reader.line():  # trailers, up to the blank line
                    pass
                return
            remaining = size
            while remaining:
                data = await reader.some(remaining)
                remaining -= len(data)
                yield data
            if await reader.line():
                raise httpx.RemoteProtocolError("chunk not followed by CRLF", request=reader.request)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._connection.release(self._complete and self._keep_alive)

    async def aclose(self) -> None:
        self._release()

