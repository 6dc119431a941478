"""The proxy's border on raw sockets: requests that stall are timed out (408), framing two
parsers could read differently is refused (400), paths are judged as the homeserver routes
them, and X-Matrix origins in every spelling meet the server rules."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from .conftest import ADMIN, Gateway, MakeGateway, Upstream
from .test_listener import read_response

PUT_HEAD = (
    b"PUT /_matrix/client/v3/rooms/!r:corp.example/send/m.room.message/t1 HTTP/1.1\r\n"
    b"Host: x\r\nContent-Length: %d\r\n\r\n"
)
# Small timeouts, so a stalled request is given up on quickly; nothing here is timed.
QUICK = {"body_timeout": 0.3, "request_timeout": 30}


async def open_to(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert gateway.proxy.port
    return await asyncio.open_connection("127.0.0.1", gateway.proxy.port)


async def answer_and_close(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], Any]:
    status, headers, body = await read_response(reader)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # and the connection is closed
    return status, headers, json.loads(body) if body else None


@pytest.fixture
async def quick(make_gateway: MakeGateway, upstream: Upstream) -> Gateway:
    return await make_gateway(upstream.url, listen=QUICK)


@pytest.mark.parametrize(
    ("name", "head", "body"),
    [
        ("small body stalls", PUT_HEAD % 10, b'{"a"'),
        (
            "streamed upload stalls",
            b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n",
            b"x" * 100_000,
        ),
        (
            "chunked body stalls",
            b"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"4\r\nabcd\r\n",
        ),
        (
            "inspected createRoom body stalls",
            b"POST /_matrix/client/v3/createRoom HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n",
            b'{"name": ',
        ),
        ("head stalls", b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n", b""),
    ],
)
async def test_a_request_that_stalls_is_answered_408(
    quick: Gateway, upstream: Upstream, name: str, head: bytes, body: bytes
) -> None:
    reader, writer = await open_to(quick)
    writer.write(head + body)
    status, headers, error = await answer_and_close(reader)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408"), name
    assert headers["connection"] == "close"
    assert error == {"errcode": "M_UNKNOWN", "error": "The request was not received in time"}
    assert not any(s.raw_path.endswith("/t1") for s in upstream.seen)


async def test_a_body_that_trickles_meets_the_total_timeout(
    make_gateway: MakeGateway, upstream: Upstream
) -> None:
    gateway = await make_gateway(upstream.url, listen={"body_timeout": 5, "request_timeout": 0.5})
    reader, writer = await open_to(gateway)
    writer.write(PUT_HEAD % 1000)
    # One byte every 50 ms never trips the idle timeout; the total one ends it.
    answer = asyncio.ensure_future(answer_and_close(reader))
    for _ in range(400):
        if answer.done():
            break
        writer.write(b" ")
        await asyncio.sleep(0.05)
    status, _, error = await answer
    writer.close()
    assert status.startswith(b"HTTP/1.1 408") and error["errcode"] == "M_UNKNOWN"


async def test_a_slow_but_steady_request_and_idle_keepalive_are_not_cut(
    quick: Gateway, upstream: Upstream
) -> None:
    reader, writer = await open_to(quick)
    writer.write(PUT_HEAD % 4)
    for part in (b"{", b'"', b'"', b"}"):  # each well within body_timeout
        await asyncio.sleep(0.05)
        writer.write(part)
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200"), body
    await asyncio.sleep(0.5)  # longer than body_timeout between requests: not a stall
    writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_response(reader)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("name", "framing"),
    [
        ("identity then chunked", b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n"),
        ("chunked twice", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        ("a list", b"Transfer-Encoding: gzip, chunked\r\n"),
        ("not chunked", b"Transfer-Encoding: identity\r\n"),
        ("with Content-Length", b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"),
        ("two lengths", b"Content-Length: 4\r\nContent-Length: 4\r\n"),
        ("signed length", b"Content-Length: +4\r\n"),
    ],
)
async def test_ambiguous_framing_is_refused(
    gateway: Gateway, upstream: Upstream, name: str, framing: bytes
) -> None:
    reader, writer = await open_to(gateway)
    writer.write(
        b"PUT /_matrix/client/v3/rooms/!r:corp.example/send/m.room.message/t1 HTTP/1.1\r\n"
        b"Host: x\r\n" + framing + b"\r\n4\r\n{}{}\r\n0\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), (name, answer)
    assert upstream.seen == []


async def test_one_chunked_encoding_still_streams(gateway: Gateway, upstream: Upstream) -> None:
    reader, writer = await open_to(gateway)
    writer.write(
        b"PUT /_matrix/client/v3/rooms/!r:corp.example/send/m.room.message/t1 HTTP/1.1\r\n"
        b"Host: x\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200") and json.loads(body)["length"] == 2
    assert upstream.seen[-1].body == b"{}"


async def test_a_raw_hash_is_part_of_the_path(gateway: Gateway, upstream: Upstream) -> None:
    """Twisted routes ``/join/#alias:server`` as a join of that alias: so is it judged."""
    await gateway.add_rule(
        {"kind": "event_type_block", "params": {"event_types": ["m.room.member"]}, "mode": "audit"}
    )
    reader, writer = await open_to(gateway)
    writer.write(
        b"POST /_matrix/client/v3/join/#secret:corp.example?via=x HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 2\r\n\r\n{}"
    )
    status, _, _ = await read_response(reader)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200")
    assert upstream.seen[-1].raw_path == "/_matrix/client/v3/join/#secret:corp.example?via=x"
    [row] = [d for d in await gateway.decisions(1) if d["path"].endswith("{roomIdOrAlias}")]
    assert row["room"] == "#secret:corp.example" and row["event_type"] == "m.room.member"
    assert row["outcome"] == "would_block"


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3//rooms/!r:corp.example/send/m.room.encryption/t",
        "/_matrix/client/v3/rooms/!r:corp.example/send//t",
        "/_matrix/client/v3/rooms/!r:corp.example/./send/m.room.message/t",
        "/_matrix/client/v3/rooms/!r:corp.example/%2E%2E/send/m.room.message/t",
    ],
)
async def test_paths_the_homeserver_reads_otherwise_are_refused(
    gateway: Gateway, upstream: Upstream, path: str
) -> None:
    reader, writer = await open_to(gateway)
    writer.write(b"PUT %b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" % path.encode())
    status, _, body = await read_response(reader)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
    assert json.loads(body)["errcode"] == "M_FORBIDDEN"
    assert upstream.seen == []


def x_matrix(origin: str) -> bytes:
    return f'X-Matrix origin="{origin}",key="ed25519:a",sig="c2ln"'.encode()


async def federation(gateway: Gateway, authorization: bytes) -> tuple[bytes, Any]:
    reader, writer = await open_to(gateway)
    writer.write(
        b"GET /_matrix/federation/v1/query/profile?user_id=@a:corp.example HTTP/1.1\r\n"
        b"Host: x\r\nAuthorization: %b\r\n\r\n" % authorization
    )
    status, _, body = await read_response(reader)
    writer.close()
    return status, json.loads(body)


@pytest.mark.parametrize(
    "origin",
    ["evil.example:008448", "evil.example:+8448", "evil.example:8_448", "evil.example: 8448",
     "EVIL.example:8448"],
)  # fmt: skip
async def test_a_blocked_server_is_refused_in_every_spelling(
    gateway: Gateway, upstream: Upstream, origin: str
) -> None:
    await gateway.add_rule(
        {"id": "evil", "kind": "server_block", "params": {"servers": ["evil.example"]}}
    )
    status, error = await federation(gateway, x_matrix(origin))
    assert status.startswith(b"HTTP/1.1 403") and "rule evil" in error["error"]
    assert upstream.seen == []
    [row] = await gateway.decisions(1)
    assert row["origin"] == "evil.example:8448" and row["origin_raw"] == origin
    assert row["rule"] == "evil" and row["outcome"] == "block"
    # A query in any spelling finds it.
    resp = await gateway.admin.get(
        "/v1/decisions", params={"origin": "EVIL.Example:08448"}, headers=ADMIN
    )
    assert [d["id"] for d in (await resp.json())["decisions"]] == [row["id"]]


@pytest.mark.parametrize(
    "authorization",
    [x_matrix("evil.example:0x20fb"), x_matrix("evil_example"), b'X-Matrix origin="a.example"'],
)
async def test_an_unparseable_x_matrix_header_is_refused_as_malformed(
    gateway: Gateway, upstream: Upstream, authorization: bytes
) -> None:
    # No rule at all: such a request is never taken for an unsigned one.
    status, error = await federation(gateway, authorization)
    assert status.startswith(b"HTTP/1.1 403") and error["errcode"] == "M_FORBIDDEN"
    assert "X-Matrix Authorization header cannot be parsed" in error["error"]
    assert upstream.seen == []


async def test_policy_server_calls_meet_the_allow_list(
    gateway: Gateway, upstream: Upstream
) -> None:
    await gateway.add_rule(
        {"id": "zt", "kind": "server_allow", "params": {"servers": ["partner.example"]}}
    )
    reader, writer = await open_to(gateway)
    for origin, expected in (("other.example", b"403"), ("partner.example", b"200")):
        writer.write(
            b"POST /_matrix/policy/v1/sign HTTP/1.1\r\nHost: x\r\nAuthorization: %b\r\n"
            b"Content-Length: 2\r\n\r\n{}" % x_matrix(origin)
        )
        status, _, _ = await read_response(reader)
        assert expected in status, origin
    writer.close()
    assert [s.raw_path for s in upstream.seen] == ["/_matrix/policy/v1/sign"]


async def test_identity_server_onbind_needs_an_explicit_allowance(
    gateway: Gateway, upstream: Upstream
) -> None:
    onbind = (
        b"PUT /_matrix/federation/v1/3pid/onbind HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    )
    await gateway.add_rule(
        {"id": "zt", "kind": "server_allow", "params": {"servers": ["partner.example"]}}
    )
    reader, writer = await open_to(gateway)
    writer.write(onbind)
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 403") and "rule zt" in json.loads(body)["error"]
    await gateway.add_rule(
        {
            "id": "is",
            "kind": "server_allow",
            "params": {"servers": ["partner.example"], "allow_unsigned_endpoints": ["3pid/onbind"]},
        }
    )
    writer.write(onbind)
    status, _, _ = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200")
    # Only that endpoint: other unsigned federation requests stay refused.
    writer.write(b"GET /_matrix/federation/v1/query/profile HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_response(reader)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
    assert [s.raw_path for s in upstream.seen] == ["/_matrix/federation/v1/3pid/onbind"]
