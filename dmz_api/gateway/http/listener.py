"""The proxy's HTTP/1.1 server side: asyncio protocols and ``httptools``, nothing else.

A connection handles one request at a time (pipelined requests wait, reading paused, each
with the body that came with it); each request runs the handler in its own task, which the
connection cancels when the client leaves. Request bodies are buffered up to a high-water
mark before reading pauses; responses are written whole, or streamed with ``drain`` on
the transport's flow control. Keep-alive follows the request (HTTP/1.0 or
``Connection: close``); a connection whose request body was not received in full closes
after the response, so an unread body is never taken for the next request.

Reading a request is bounded in time: a request whose head or body goes ``body_timeout``
seconds without a byte, or is not complete ``request_timeout`` seconds after its first
byte, is answered ``408`` (when no answer was started) and its connection closed. While
the gateway itself pauses reading (flow control), the client is not idle; the total time
counts regardless.
Framing that two parsers could read differently is refused with ``400`` before any
handler sees it: more than one ``Transfer-Encoding``, one other than ``chunked``, one
beside a ``Content-Length``, and several or non-numeric ``Content-Length`` values.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import cast

import httptools

from .flow import WriteFlow

log = logging.getLogger("dmz_api.gateway.http.listener")

# Request body buffered per connection before reading from the client pauses.
_HIGH_WATER = 2**18
_LOW_WATER = 2**16
# The longest request head (line and headers) accepted.
_MAX_HEAD = 2**16
# Idle keep-alive connections are closed after this long (aiohttp's default).
_IDLE_TIMEOUT = 75.0
_SWEEP = 5.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TIMED_OUT = "The request was not received in time"

Handler = Callable[["ServerRequest"], Awaitable[None]]


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


_date_second = 0
_date_line = b""


def date_line() -> bytes:
    """A ``Date`` header line, formatted once a second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("ascii")
    return _date_line


def json_body(errcode: str, error: str) -> bytes:
    """The body ``json_error`` answers with."""
    return json.dumps({"errcode": errcode, "error": error}).encode()


_JSON_TYPE = b"Content-Type: application/json; charset=utf-8\r\n"


class ServerRequest:
    """One request: its head, its body as a stream, and the means to answer it."""

    __slots__ = (
        "_chunked_out",
        "_chunks",
        "_complete",
        "_conn",
        "_continued",
        "_error",
        "_waiter",
        "body_exists",
        "buffered",
        "content_length",
        "fields",
        "finished",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "raw_path",
        "repeated_framing",
        "started",
    )

    def __init__(self, conn: _HttpConnection) -> None:
        self._conn = conn
        self.method = ""
        self.raw_path = ""
        self.http11 = True
        # (lower-cased name, name, value) as received, and the first value of each name.
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.fields: dict[bytes, bytes] = {}
        self.keep_alive = True
        self.body_exists = False
        self.content_length: int | None = None
        self.repeated_framing = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self._complete = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continued = False
        self.started = False
        self.finished = False
        self._chunked_out = False

    # ---- the head --------------------------------------------------------------------

    def header(self, lower: bytes) -> str | None:
        value = self.fields.get(lower)
        return None if value is None else _decode(value)

    def header_all(self, lower: bytes) -> list[str]:
        if lower not in self.fields:
            return []
        return [_decode(v) for name, _, v in self.headers if name == lower]

    @property
    def peer(self) -> str | None:
        return self._conn.peer

    @property
    def host(self) -> str:
        host = self.fields.get(b"host")
        return _decode(host) if host is not None else self._conn.listener.fqdn

    # ---- the body --------------------------------------------------------------------

    @property
    def received(self) -> bool:
        """Whether the whole body has arrived (read or not)."""
        return self._complete

    def is_eof(self) -> bool:
        return self._complete and not self._chunks

    def send_continue(self) -> None:
        """Answer ``Expect: 100-continue`` (once, and only while no answer was started)."""
        if self._continued or self.started:
            return
        self._continued = True
        expect = self.fields.get(b"expect")
        if expect is not None and self.http11 and expect.lower() == b"100-continue":
            self._conn.write(_CONTINUE)

    async def readany(self) -> bytes:
        """The next part of the body; b"" at its end. Raises when the client left."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                self._conn.body_consumed()
                return data
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            waiter = self._conn.loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def _end(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- the answer ------------------------------------------------------------------

    def _head(self, status: int, reason: str, headers: bytes, framing: bytes) -> bytes:
        if not self._complete or self._conn.listener.closing:
            # The rest of the body would be taken for the next request.
            self.keep_alive = False
        if self.keep_alive:
            connection = b"" if self.http11 else b"Connection: keep-alive\r\n"
        else:
            connection = b"Connection: close\r\n"
        self.started = True
        return b"HTTP/1.1 %d %b\r\n%b%b%b\r\n" % (
            status,
            reason.encode("latin-1", "replace"),
            headers,
            framing,
            connection,
        )

    def respond(self, status: int, reason: str, headers: bytes, body: bytes) -> None:
        """Answer in one write: ``headers`` are the header lines (each ending in CRLF) less
        framing, ``body`` the whole body (not sent to HEAD)."""
        head = self._head(status, reason, headers, b"Content-Length: %d\r\n" % len(body))
        self.finished = True
        self._conn.write(head if self.method == "HEAD" else head + body)

    def respond_json(self, status: int, errcode: str, error: str) -> None:
        reason = _REASONS.get(status, "")
        self.respond(status, reason, date_line() + _JSON_TYPE, json_body(errcode, error))

    def start(self, status: int, reason: str, headers: bytes, length: int | None) -> None:
        """Send the head of a streamed answer. ``length`` is the body's Content-Length (None:
        chunked to HTTP/1.1 clients, until the connection closes to HTTP/1.0 ones)."""
        no_body = self.method == "HEAD" or status in (204, 304) or status < 200
        if length is not None:
            framing = b"Content-Length: %d\r\n" % length
        elif no_body:
            framing = b""
        elif self.http11:
            framing = b"Transfer-Encoding: chunked\r\n"
            self._chunked_out = True
        else:
            framing = b""
            self.keep_alive = False
        self._conn.write(self._head(status, reason, headers, framing))

    async def write(self, data: bytes) -> None:
        """Send a part of a streamed body, waiting while the client is slow."""
        conn = self._conn
        if conn.closed:
            raise ConnectionResetError("the client left")
        if self._chunked_out:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        await conn.drain()

    def finish(self) -> None:
        """End a streamed answer."""
        if self._chunked_out and not self._conn.closed:
            self._conn.write(b"0\r\n\r\n")
        self.finished = True

    def abort(self) -> None:
        """End the connection without ending the answer (its body is incomplete)."""
        self.keep_alive = False
        self._conn.close()


_FRAMING = frozenset({b"transfer-encoding", b"content-length"})


class BadFraming(Exception):
    """The request's framing headers are ambiguous; the text says which."""


def check_framing(request: ServerRequest) -> None:
    """Refuse framing that a parser behind us could read differently (RFC 9112 §6.1, §6.3)."""
    encodings = [v for name, _, v in request.headers if name == b"transfer-encoding"]
    lengths = [v for name, _, v in request.headers if name == b"content-length"]
    if encodings:
        if len(encodings) > 1 or encodings[0].strip().lower() != b"chunked":
            raise BadFraming("Transfer-Encoding must be one chunked")
        if lengths:
            raise BadFraming("Transfer-Encoding and Content-Length together")
    if lengths and (len(lengths) > 1 or not lengths[0].strip().isdigit()):
        raise BadFraming("Content-Length must be one number")


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _HttpConnection(WriteFlow):
    """One client connection."""

    def __init__(self, listener: HttpListener) -> None:
        super().__init__()
        self.listener = listener
        self.loop = listener.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.closed = False
        self.last_active = 0.0
        self._url = b""
        self._parsing: ServerRequest | None = None
        self._in_head = False
        self._head_size = 0
        self._queue: collections.deque[ServerRequest] = collections.deque()
        self.current: ServerRequest | None = None
        self.task: asyncio.Task[None] | None = None
        self._read_paused = False
        self._ignore = False
        # loop.time() of the request's first byte and of the last byte read from the client.
        self.read_started = 0.0
        self.last_read = 0.0
        self.timed_out = False

    # ---- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple | list) and peername:
            self.peer = str(peername[0])
        self.last_active = self.loop.time()
        self.listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._ignore or self.closed:
            return
        self.last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded()
        except httptools.HttpParserError as e:
            cause = e.__context__ or e.__cause__
            text = str(cause) if isinstance(cause, BadFraming) else "Malformed HTTP request"
            self._bad_request(400, "Bad Request", text)
            return
        if self._in_head:
            self._head_size += len(data)
            if self._head_size > _MAX_HEAD:
                self._bad_request(431, "Request Header Fields Too Large")
                return
        if self.current is None and self._queue:
            self._start_next()
        elif self._queue and not self._read_paused:
            self._pause()

    def eof_received(self) -> bool | None:
        return None  # the client is done: close (and cancel what it asked for)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        gone = ConnectionResetError("the client left")
        for request in (self.current, self._parsing, *self._queue):
            if request is not None:
                request._fail(gone)
        self._queue.clear()
        task = self.task
        if task is not None and not task.done():
            task.cancel()
        self._end_drain(gone)

    # ---- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = ServerRequest(self)
        self._url = b""
        self._in_head = True
        self._head_size = 0
        self.read_started = self.last_read = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        if request is None or not self._in_head:
            return  # chunked trailers
        lower = name.lower()
        request.headers.append((lower, name, value))
        if lower not in request.fields:
            request.fields[lower] = value
        elif lower in _FRAMING:
            request.repeated_framing = True

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        self._in_head = False
        parser = self._parser
        request.method = parser.get_method().decode("ascii", "replace")
        request.raw_path = _decode(self._url)
        request.http11 = parser.get_http_version() != "1.0"
        request.keep_alive = parser.should_keep_alive()
        fields = request.fields
        length = fields.get(b"content-length")
        encoding = fields.get(b"transfer-encoding")
        if (
            encoding is not None
            or request.repeated_framing
            or (length is not None and not length.isdigit())
        ):
            check_framing(request)  # raises: httptools stops, data_received answers 400
        if length is not None:
            request.content_length = int(length)
        if encoding is not None:
            request.body_exists = True  # chunked, the only encoding check_framing admits
        else:
            request.body_exists = bool(request.content_length)
        self._queue.append(request)

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is None:
            return
        request._feed(body)
        if request.buffered > _HIGH_WATER and not self._read_paused:
            self._pause()

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None:
            request._end()
            self._parsing = None

    # ---- internals -------------------------------------------------------------------

    def _upgraded(self) -> None:
        # Nothing here switches protocols (Upgrade is hop-by-hop and dropped): the request
        # is answered as a plain one and what follows on the connection is ignored.
        self._ignore = True
        request = self._parsing
        if request is None and self._queue:
            request = self._queue[-1]
        if request is None:
            return
        request.keep_alive = False
        if request.body_exists and not request._complete:
            self._bad_request(400, "Bad Request")
            return
        request._end()
        self._parsing = None

    def _bad_request(self, status: int, reason: str, error: str | None = None) -> None:
        self._ignore = True
        if self.current is None:
            body = json_body("M_UNKNOWN", error) if error is not None else b""
            head = b"HTTP/1.1 %d %b\r\n%bContent-Length: %d\r\nConnection: close\r\n\r\n" % (
                status,
                reason.encode(),
                _JSON_TYPE if body else b"",
                len(body),
            )
            self.write(head + body)
            self.close()
        else:
            # Answer the request in progress, then close.
            self.current.keep_alive = False
            self._queue.clear()
            self._pause()

    def _pause(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def body_consumed(self) -> None:
        if self._read_paused and not self._queue and not self._ignore:
            request = self._parsing
            if request is None or request.buffered < _LOW_WATER:
                self._read_paused = False
                self.last_read = self.loop.time()  # the pause was ours, not the client's
                if self.transport is not None and not self.closed:
                    self.transport.resume_reading()

    def _start_next(self) -> None:
        request = self._queue.popleft()
        self.current = request
        self.task = self.loop.create_task(self._run(request))

    async def _run(self, request: ServerRequest) -> None:
        try:
            await self.listener.handler(request)
        except asyncio.CancelledError:
            if self.timed_out and not request.started and not self.closed:
                request.keep_alive = False
                request.respond_json(408, "M_UNKNOWN", TIMED_OUT)
            self.close()
            return
        except Exception:
            log.exception("The gateway proxy failed on %s", request.method)
            if not request.started and not self.closed:
                request.keep_alive = False
                request.respond_json(500, "M_UNKNOWN", "Internal server error")
        self._done(request)

    def _done(self, request: ServerRequest) -> None:
        self.current = None
        self.task = None
        if self.closed:
            return
        if not request.started:
            request.keep_alive = False
            request.respond_json(500, "M_UNKNOWN", "Internal server error")
        if not request.finished or not request.keep_alive or self.listener.closing:
            self.close()
            return
        self.last_active = self.loop.time()
        if self._queue:
            self._start_next()
        else:
            self.body_consumed()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("the client left")
        await self._writable(self.loop)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def check_read_timeout(self, now: float, idle: float, total: float) -> None:
        """End the request being read when the client stalls or takes too long (408)."""
        request = self._parsing
        if request is None or self._read_paused or self.closed or self._ignore:
            return
        current = self.current
        if current is not None and current is not request:
            return  # a pipelined request: reading waits for the one in flight
        if now - self.last_read <= idle and now - self.read_started <= total:
            return
        self.timed_out = True
        self._ignore = True
        request._fail(TimeoutError(TIMED_OUT))
        task = self.task
        if current is None:
            # Still in its head, or queued with no handler yet: nothing was answered.
            self._bad_request(408, "Request Timeout", TIMED_OUT)
        elif task is not None and not task.done():
            task.cancel()  # _run answers 408 if nothing was sent yet, and closes
        else:
            self.close()


class HttpListener:
    """A listening socket whose requests go to ``handler``."""

    def __init__(
        self, handler: Handler, *, body_timeout: float = 60.0, request_timeout: float = 600.0
    ) -> None:
        self.handler = handler
        self.body_timeout = body_timeout
        self.request_timeout = request_timeout
        # Often enough that a timeout is noticed within a quarter of its length.
        self._sweep_every = max(0.01, min(_SWEEP, body_timeout / 4, request_timeout / 4))
        self.loop = asyncio.get_running_loop()
        self.connections: set[_HttpConnection] = set()
        self.closing = False
        self.fqdn = socket.getfqdn()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, backlog: int
    ) -> int:
        """Listen; returns the bound port."""
        self._server = await self.loop.create_server(
            lambda: _HttpConnection(self),
            host or None,
            port,
            ssl=ssl_context,
            backlog=backlog,
            reuse_address=True,
        )
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        now = self.loop.time()
        idle, total = self.body_timeout, self.request_timeout
        for conn in list(self.connections):
            conn.check_read_timeout(now, idle, total)
            if (
                conn.current is None
                and conn._parsing is None
                and now - conn.last_active > _IDLE_TIMEOUT
            ):
                conn.close()
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    async def stop(self, grace: float) -> None:
        """Stop listening, close idle connections, give requests in flight ``grace``
        seconds, then end them."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.current is None:
                conn.close()
        tasks = {c.task for c in self.connections if c.task is not None and not c.task.done()}
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.connections):
            if conn.task is not None and not conn.task.done():
                conn.task.cancel()
            conn.close()
        tasks = {t for t in tasks if not t.done()}
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


__all__ = ["HttpListener", "ServerRequest", "date_line", "json_body"]
