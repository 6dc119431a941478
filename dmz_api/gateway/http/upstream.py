"""A lean HTTP/1.1 client for the proxy's one upstream: pooled keep-alive connections
(asyncio protocols), responses parsed by ``httptools``, bodies streamed both ways.

It does only what a reverse proxy needs, and so skips most of what ``ClientSession``
pays for per request (URL objects, cookie handling, header defaults, tracing, a
``StreamReader`` per response). The caller sends the client's headers as they are, with
the framing it chooses: a whole body (``Content-Length``), a stream with the client's
``Content-Length``, or a stream sent chunked.

Timeouts: ``connect`` bounds opening a connection; ``read`` is an idle timeout, the
longest the upstream may stay silent while an answer is awaited (no total: a long poll or
a large download lasts as long as it keeps sending). A connection goes back to the pool
only when its response was read to the end and both sides allow keep-alive; anything
else (a client that left, a broken body, a HEAD answer) closes it.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from .flow import WriteFlow

# Response body buffered per connection before reading from the upstream pauses.
_HIGH_WATER = 2**18
_LOW_WATER = 2**16
# Methods never sent twice: a request on a reused connection that broke is not retried.
_NOT_RETRIED = frozenset({"POST", "PATCH", "LOCK"})

BodySource = Callable[[], Awaitable[bytes]]


class UpstreamError(Exception):
    """The exchange with the upstream failed."""


class UpstreamConnectError(UpstreamError):
    """No connection to the upstream could be opened."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (or connect) in time."""


class UpstreamBroken(UpstreamError):
    """The connection dropped or the answer is not valid HTTP."""


class _Connection(WriteFlow):
    """One upstream connection; at most one request at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__()
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle = False
        self.idle_since = 0.0
        self._error: UpstreamError | None = None
        # Per exchange:
        self._head_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._head_only = False
        self.received = False
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self._in_head = False
        self.head_done = False
        self.complete = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._last_data = 0.0
        # True while an answer is awaited: the pool's ticker checks the read timeout.
        self.watched = False
        self._keep_alive = True
        self.sending = False

    # ---- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.idle:
            # Nothing was asked (a 408 before the upstream hangs up): not reusable.
            self.close()
            return
        self.received = True
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamBroken("the upstream's answer is not valid HTTP"))
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroken("the upstream switched protocols"))

    def eof_received(self) -> bool | None:
        self._lost()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self._end_drain(UpstreamBroken("the upstream connection was lost"))

    # ---- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self.headers = []

    def on_status(self, status: bytes) -> None:
        self.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # not chunked trailers
            self.headers.append(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            )

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer: the real one follows
        self.status = status
        self.head_done = True
        if self._head_only:
            # The answer to HEAD announces a body it does not send; httptools cannot be told,
            # so the exchange ends here and the connection is not reused.
            self.complete = True
            self._keep_alive = False
            self.watched = False
        self._wake_head()

    def on_body(self, body: bytes) -> None:
        if self.status == 0 or self._head_only:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        if not self._head_only:
            self.complete = True
            self._keep_alive = self._parser.should_keep_alive()
            self.watched = False
        self._wake_body()

    # ---- internals -------------------------------------------------------------------

    def _wake_head(self) -> None:
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._pool.forget(self)
        if self.head_done and not self.complete and self._until_eof():
            # A body without Content-Length or chunking ends when the connection does.
            self.complete = True
            self._keep_alive = False
            self.watched = False
            self._wake_body()
            return
        self._fail(UpstreamBroken("the upstream connection was lost"))

    def _until_eof(self) -> bool:
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length" or (
                lower == "transfer-encoding" and "chunked" in value.lower()
            ):
                return False
        return True

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self.watched = False
        self.close()
        self._wake_head()
        self._wake_body()

    def check_timeout(self, now: float, timeout: float) -> None:
        """Called by the pool's ticker while an answer is awaited."""
        # A paused read (the client is slow) or an upload in progress is not the upstream's
        # silence.
        if self._read_paused or self.sending or now - self._last_data < timeout:
            return
        self._fail(UpstreamTimeout("the upstream did not answer in time"))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self.transport is not None:
                self.transport.close()
        if not self.complete and self._error is None:
            # Whoever waits on this exchange learns that it will not finish.
            self._error = UpstreamBroken("the upstream connection was closed")
            self.watched = False
            self._wake_head()
            self._wake_body()

    def reset(self, head_only: bool) -> None:
        self._head_waiter = None
        self._body_waiter = None
        self._head_only = head_only
        self.received = False
        self.status = 0
        self.reason = ""
        self.headers = []
        self.head_done = False
        self.complete = False
        self._keep_alive = True
        self._chunks.clear()
        self._buffered = 0

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self._keep_alive
            and self._error is None
            and not self.closed
            and not self.sending
            and not self._chunks
        )

    # ---- used by UpstreamPool and UpstreamResponse -----------------------------------

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        if self._error is not None:
            raise self._error
        self.transport.write(data)

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise UpstreamBroken("the upstream connection was lost")
        await self._writable(self._loop)

    def watch(self) -> None:
        self._last_data = self._loop.time()
        self.watched = True
        self._pool.watch()

    async def wait_head(self) -> None:
        if not self.head_done and self._error is None:
            waiter = self._loop.create_future()
            self._head_waiter = waiter
            try:
                await waiter
            finally:
                self._head_waiter = None
        if self._error is not None and not self.head_done:
            raise self._error

    async def read_chunk(self) -> bytes:
        """The next part of the body; b"" at its end. Raises on a broken body."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._read_paused and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            waiter = self._loop.create_future()
            self._body_waiter = waiter
            try:
                await waiter
            finally:
                self._body_waiter = None


class UpstreamResponse:
    """The status and headers of an upstream answer, and its body as a stream."""

    __slots__ = ("_conn", "_done", "_sender", "headers", "reason", "status")

    def __init__(self, conn: _Connection, sender: asyncio.Task[None] | None) -> None:
        self._conn = conn
        self._sender = sender
        self.status = conn.status
        self.reason = conn.reason
        self.headers = conn.headers
        self._done = False

    @property
    def content_length(self) -> int | None:
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == "content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    async def readany(self) -> bytes:
        return await self._conn.read_chunk()

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while chunk := await self._conn.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Back to the pool when the exchange ended cleanly, closed otherwise."""
        if self._done:
            return
        self._done = True
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()
            self._conn.close()
            return
        conn = self._conn
        if conn.reusable:
            conn._pool.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Discard the connection (the rest of the body is not wanted)."""
        self._done = True
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        self._conn.close()


class UpstreamPool:
    """Keep-alive connections to one ``http://`` or ``https://`` upstream."""

    def __init__(
        self,
        base: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive_timeout: float = 30.0,
        ca_file: str | None = None,
    ) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream {base!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.netloc = host if default_port else f"{host}:{self.port}"
        # The path prefix of the upstream URL, if any, goes before every request path.
        self.prefix = parts.path.rstrip("/")
        # Full verification (hostname and chain), against ca_file or the system's store.
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
        )
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._active: set[_Connection] = set()
        # One ticker checks every awaited answer for the read timeout, instead of a timer
        # armed and cancelled per request; it runs only while connections are in use.
        self._tick = min(1.0, read_timeout / 4)
        self._ticker: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        if self._ticker is None:
            self._ticker = self.loop.call_later(self._tick, self._on_tick)

    def _on_tick(self) -> None:
        self._ticker = None
        now = self.loop.time()
        timeout = self.read_timeout
        for conn in [c for c in self._active if c.watched]:
            conn.check_timeout(now, timeout)
        if self._active:
            self._ticker = self.loop.call_later(self._tick, self._on_tick)

    def forget(self, conn: _Connection) -> None:
        self._active.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def put(self, conn: _Connection) -> None:
        self._active.discard(conn)
        conn.idle = True
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    async def _connect(self) -> _Connection:
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("connecting to the upstream timed out") from None
        except (OSError, ssl.SSLError) as e:
            raise UpstreamConnectError(f"cannot connect to the upstream: {e!r}") from None
        return conn

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            conn.idle = False
            transport = conn.transport
            if (
                conn.closed
                or transport is None
                or transport.is_closing()
                or now - conn.idle_since > self.keepalive_timeout
            ):
                conn.close()
                continue
            return conn
        return None

    async def request(
        self,
        method: str,
        target: str,
        head: bytes,
        body: bytes | BodySource | None,
        *,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """Send ``method target`` with the serialised header lines ``head`` (each ending in
        CRLF, framing included) and ``body``: whole bytes, or a source of parts that
        returns b"" at the end, sent as they come (chunk-encoded with ``chunked``)."""
        start = f"{method} {self.prefix}{target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")
        message = start + head + b"\r\n"
        retry = method not in _NOT_RETRIED and not callable(body)
        while True:
            conn = self._take_idle()
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            self._active.add(conn)
            conn.reset(method == "HEAD")
            try:
                return await self._exchange(conn, message, body, chunked)
            except UpstreamBroken:
                conn.close()
                if reused and retry and not conn.received:
                    continue  # the upstream closed an idle connection as we reused it
                raise
            except BaseException:
                conn.close()
                raise

    async def _exchange(
        self,
        conn: _Connection,
        message: bytes,
        body: bytes | BodySource | None,
        chunked: bool,
    ) -> UpstreamResponse:
        sender: asyncio.Task[None] | None = None
        if body is None:
            conn.send(message)
        elif isinstance(body, bytes):
            conn.send(message + body)
        else:
            conn.send(message)
            conn.sending = True
            sender = asyncio.create_task(self._send_body(conn, body, chunked))
        conn.watch()
        try:
            await conn.wait_head()
        except BaseException:
            if sender is not None:
                sender.cancel()
            raise
        return UpstreamResponse(conn, sender)

    @staticmethod
    async def _send_body(conn: _Connection, source: BodySource, chunked: bool) -> None:
        try:
            while chunk := await source():
                if chunked:
                    conn.send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    conn.send(chunk)
                await conn.drain()
            if chunked:
                conn.send(b"0\r\n\r\n")
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:
            # The client's body broke off (or the upstream left): the request cannot be
            # completed on this connection.
            conn.close()
        finally:
            conn.sending = False

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for conn in [*self._idle, *self._active]:
            conn.close()
        self._idle.clear()
        self._active.clear()


__all__ = [
    "UpstreamBroken",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
]
