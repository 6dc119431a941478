"""The proxy's upstream client on its own: keep-alive reuse, stale pooled connections,
framing both ways, timeouts, and connections that must not go back to the pool."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.synapse import make_self_signed_cert
from dmz_api.gateway.http.upstream import (
    UpstreamBroken,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class RawServer:
    """A loopback server that reads each request head and lets ``answer`` reply;
    ``answer`` gets the request number on its connection and returns False to hang up."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                number += 1
                if not await self.answer(reader, writer, number):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[tuple[RawServer, UpstreamPool]]]]:
    made: list[tuple[RawServer, UpstreamPool]] = []

    async def make(answer: Answer, read: float = 5.0) -> tuple[RawServer, UpstreamPool]:
        server = RawServer(answer)
        port = await server.start()
        pool = UpstreamPool(f"http://127.0.0.1:{port}", connect_timeout=2, read_timeout=read)
        made.append((server, pool))
        return server, pool

    yield make
    for server, pool in made:
        await pool.close()
        await server.stop()


async def get(pool: UpstreamPool, method: str = "GET", body: bytes | None = None) -> bytes:
    head = b"Host: x\r\n" + (b"Content-Length: %d\r\n" % len(body) if body is not None else b"")
    response = await pool.request(method, "/_matrix/x", head, body)
    try:
        return await response.read()
    finally:
        response.release()


async def test_connections_are_reused(
    serve: Callable[..., Awaitable[tuple[RawServer, UpstreamPool]]],
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(OK)
        return True

    server, pool = await serve(answer)
    for _ in range(3):
        assert await get(pool) == b"ok"
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /_matrix/x HTTP/1.1\r\nHost: x\r\n")


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("PUT", True), ("POST", False)])
async def test_a_stale_pooled_connection(
    serve: Callable[..., Awaitable[tuple[RawServer, UpstreamPool]]], method: str, retried: bool
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:
            return False  # closed as the second request arrives, unanswered
        if method != "GET":
            await reader.readexactly(2)
        writer.write(OK)
        return True

    body = None if method == "GET" else b"{}"
    server, pool = await serve(answer)
    assert await get(pool, method, body) == b"ok"
    if retried:
        assert await get(pool, method, body) == b"ok"
        assert server.connections == 2
    else:
        # A POST may have had its effect: it is not sent twice.
        with pytest.raises(UpstreamBroken):
            await get(pool, method, body)


async def test_body_until_close_and_interim_answers(
    serve: Callable[..., Awaitable[tuple[RawServer, UpstreamPool]]],
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        return False

    server, pool = await serve(answer)
    response = await pool.request("GET", "/", b"Host: x\r\n", None)
    assert response.status == 200 and response.reason == "OK"
    assert await response.read() == b"until the end"
    response.release()
    assert await get(pool) == b"until the end"
    assert server.connections == 2


async def test_chunked_both_ways(
    serve: Callable[..., Awaitable[tuple[RawServer, UpstreamPool]]],
) -> None:
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if b"chunked" in server.requests[-1]:
            received.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        return True

    parts = [b"hello", b" world", b""]

    async def source() -> bytes:
        return parts.pop(0)

    server, pool = await serve(answer)
    response = await pool.request(
        "POST", "/", b"Host: x\r\nTransfer-Encoding: chunked\r\n", source, chunked=True
    )
    assert await response.read() == b"abcde"
    response.release()
    assert received == [b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"]
    assert await get(pool) == b"abcde"  # the chunked answer left the connection reusable
    assert server.connections == 1


async def test_head_and_abandoned_bodies_are_not_pooled(
    serve: Callable[..., Awaitable[tuple[RawServer, UpstreamPool]]],
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        if not server.requests[-1].startswith(b"HEAD"):
            writer.write(b"x" * 1000)
        return True

    server, pool = await serve(answer)
    response = await pool.request("HEAD", "/", b"Host: x\r\n", None)
    assert response.content_length == 100000
    assert await response.read() == b""
    response.release()
    response = await pool.request("GET", "/", b"Host: x\r\n", None)
    assert await response.readany()
    response.release()  # the rest of the body is not wanted
    response = await pool.request("GET", "/", b"Host: x\r\n", None)
    response.close()
    assert server.connections == 3


async def test_timeouts_and_errors(
    serve: Callable[..., Awaitable[tuple[RawServer, UpstreamPool]]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(5)
        return False

    _, pool = await serve(silent, read=0.2)
    with pytest.raises(UpstreamTimeout):
        await get(pool)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return True

    _, pool = await serve(garbage)
    with pytest.raises(UpstreamBroken):
        await get(pool)

    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        return False

    _, pool = await serve(truncated)
    response: UpstreamResponse = await pool.request("GET", "/", b"Host: x\r\n", None)
    with pytest.raises(UpstreamBroken):
        await response.read()
    response.release()

    pool = UpstreamPool(f"http://127.0.0.1:{free_port()}", connect_timeout=2, read_timeout=5)
    with pytest.raises(UpstreamConnectError):
        await get(pool)
    await pool.close()


async def test_https_upstream_certificates_are_verified(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"https://127.0.0.1:{port}", connect_timeout=2, read_timeout=5)
    try:
        # A certificate nobody vouches for is refused, as ClientSession refused it.
        with pytest.raises(UpstreamConnectError):
            await get(pool)
        # With its CA given (gateway.upstream_ca_file) the same upstream is trusted.
        trusting = UpstreamPool(
            f"https://127.0.0.1:{port}", connect_timeout=2, read_timeout=5, ca_file=str(cert)
        )
        try:
            assert await get(trusting) == b"ok"
        finally:
            await trusting.close()
    finally:
        await pool.close()
        server.close()
