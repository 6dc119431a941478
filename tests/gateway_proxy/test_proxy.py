"""The reverse proxy against a tiny recording upstream: routing, raw paths and bodies,
headers, decisions, failing closed, upstream failures and TLS on the listener."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from devstack.ports import free_port
from devstack.synapse import make_self_signed_cert
from dmz_api.gateway.store import CorruptRuleset

from .conftest import (
    ADMIN,
    CHUNK,
    GZIPPED,
    Gateway,
    MakeGateway,
    Upstream,
    pattern,
    raw,
    x_matrix,
)

SEND = "/_matrix/client/v3/rooms/!room:corp.example/send/{}/t1"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/_synapse/admin/v1/users/@a:corp.example",
        "/_matrix",
        "/_matrixfoo/client/versions",
        "/.well-known/other",
        "/%5Fmatrix/client/versions",
        "//_matrix/client/versions",
    ],
)
async def test_other_paths_are_not_forwarded(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(raw(gateway.url, path)) as resp:
        assert resp.status == 404
        assert await resp.json() == {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}
    assert upstream.seen == []


async def test_raw_path_query_and_body_pass_unchanged(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    path = "/_matrix/federation/v1/send/1%2F2?a=%2F&b=+c&d=%E2%9C%93"
    body = b'{ "pdus" : [ ],\n "origin":"hs1.partner.example"  }'
    headers = {"Authorization": x_matrix("hs1.partner.example"), "Content-Type": "application/json"}
    async with http.put(raw(gateway.url, path), data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["raw_path"] == path
    seen = upstream.seen[-1]
    assert (seen.method, seen.raw_path, seen.body) == ("PUT", path, body)
    assert dict(seen.headers)["Authorization"] == headers["Authorization"]
    async with http.get(raw(gateway.url, "/.well-known/matrix/server")) as resp:
        assert resp.status == 200
    assert upstream.seen[-1].raw_path == "/.well-known/matrix/server"


async def test_compressed_bodies_pass_untouched(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    sent = gzip.compress(b'{"pdus": []}')
    headers = {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"}
    async with http.put(raw(gateway.url, "/_matrix/test/gzip"), data=sent, headers=headers) as resp:
        assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == GZIPPED
    assert upstream.seen[-1].body == sent


async def test_forwarding_headers(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    headers = {
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "secret",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "TE": "trailers",
        "X-Forwarded-For": "6.6.6.6",
        "X-Real-IP": "6.6.6.6",
        "Forwarded": "for=6.6.6.6;proto=https",
        "X-Forwarded-Host": "spoofed.example",
        "X-Custom": "kept",
        "User-Agent": "Element/1.11.50",
    }
    async with http.get(raw(gateway.url, "/_matrix/client/versions"), headers=headers) as resp:
        assert resp.status == 200
        # The upstream's own hop-by-hop headers stay on its side too.
        assert "X-Upstream-Private" not in resp.headers
    seen = dict(upstream.seen[-1].headers)
    for name in ("X-Private-Hop", "Keep-Alive", "Proxy-Authorization", "TE"):
        assert name not in seen
    # The client's own claims are dropped: every address header names the peer.
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Real-IP"] == "127.0.0.1"
    assert seen["Forwarded"] == "for=127.0.0.1;proto=http"
    assert [name for name, _ in upstream.seen[-1].headers].count("X-Real-IP") == 1
    assert seen["X-Forwarded-Proto"] == "http"
    host = gateway.url.removeprefix("http://")
    assert seen["X-Forwarded-Host"] == host and seen["Host"] == host
    assert seen["X-Custom"] == "kept" and seen["User-Agent"] == "Element/1.11.50"


async def test_trusted_proxy_forwards_exactly_the_judged_address(
    make_gateway: MakeGateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(upstream.url, trusted_proxies=["127.0.0.1"])
    await gateway.add_rule({"kind": "client_allow", "params": {"networks": ["10.0.0.0/8"]}})
    # The leftmost entry was written by the client; the rules judge the rightmost one the
    # trusted proxy added, and the homeserver (which believes the first entry) gets only it.
    headers = {
        "X-Forwarded-For": "192.0.2.66, 10.1.2.3",
        "X-Real-IP": "192.0.2.66",
        "Forwarded": "for=192.0.2.66",
        "X-Forwarded-Proto": "https",
    }
    async with http.get(raw(gateway.url, "/_matrix/client/versions"), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    seen = dict(upstream.seen[-1].headers)
    assert seen["X-Forwarded-For"] == "10.1.2.3"
    assert seen["X-Real-IP"] == "10.1.2.3"
    assert seen["Forwarded"] == "for=10.1.2.3;proto=https"
    assert seen["X-Forwarded-Proto"] == "https"
    headers = {"X-Real-IP": "10.9.9.9"}  # a trusted proxy that sends only X-Real-IP
    async with http.get(raw(gateway.url, "/_matrix/client/versions"), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    seen = dict(upstream.seen[-1].headers)
    assert seen["X-Forwarded-For"] == seen["X-Real-IP"] == "10.9.9.9"
    headers = {"X-Forwarded-For": "192.0.2.7"}
    headers["X-Forwarded-For"] = "192.0.2.7"
    async with http.get(raw(gateway.url, "/_matrix/client/versions"), headers=headers) as resp:
        assert resp.status == 403  # client_allow judged the forwarded address


async def test_blocks_federation_by_x_matrix_origin(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    await gateway.add_rule(
        {"id": "no-evil", "kind": "server_block", "params": {"servers": ["evil.example"]}}
    )
    url = raw(gateway.url, "/_matrix/federation/v1/send/42")
    async with http.put(url, data=b"{}", headers={"Authorization": x_matrix("evil.example")}) as r:
        assert r.status == 403
        body = await r.json()
        assert body["errcode"] == "M_FORBIDDEN" and "no-evil" in body["error"]
    async with http.put(url, data=b"{}", headers={"Authorization": x_matrix("good.example")}) as r:
        assert r.status == 200
    assert [s.raw_path for s in upstream.seen] == ["/_matrix/federation/v1/send/42"]
    rows = await gateway.decisions(2)
    blocked = [r for r in rows if r["outcome"] == "block"]
    assert blocked and blocked[0]["rule"] == "no-evil" and blocked[0]["origin"] == "evil.example"
    assert blocked[0]["source"] == "proxy"


async def test_conflicting_origins_are_refused(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    headers = [
        ("Authorization", x_matrix("good.example")),
        ("Authorization", x_matrix("evil.example")),
    ]
    async with http.put(
        raw(gateway.url, "/_matrix/federation/v1/send/1"), data=b"{}", headers=headers
    ) as resp:
        assert resp.status == 403
    assert upstream.seen == []


async def test_rule_change_applies_to_the_next_request(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    url = raw(gateway.url, SEND.format("m.room.encryption"))
    async with http.put(url, data=b"{}") as resp:
        assert resp.status == 200
    await gateway.compliance_ledger()
    async with http.put(url, data=b"{}") as resp:
        assert resp.status == 403
    resp = await gateway.admin.patch(
        "/v1/rules/compliance-ledger", json={"mode": "audit"}, headers=ADMIN
    )
    assert resp.status == 200
    async with http.put(url, data=b"{}") as resp:
        assert resp.status == 200  # audit: recorded as would_block, let through
    await gateway.delete_rule("compliance-ledger")
    async with http.put(url, data=b"{}") as resp:
        assert resp.status == 200
    assert len(upstream.seen) == 3
    outcomes = [row["outcome"] for row in await gateway.decisions(4)]
    assert sorted(outcomes) == ["allow", "allow", "block", "would_block"]


async def test_fails_closed_while_the_rules_cannot_be_loaded(
    gateway: Gateway,
    upstream: Upstream,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = gateway.service

    async def corrupt() -> None:
        raise CorruptRuleset("version 9 does not validate")

    monkeypatch.setattr(service.store, "load", corrupt)
    await service.reload()
    async with http.get(raw(gateway.url, "/_matrix/client/versions")) as resp:
        assert resp.status == 503
        assert (await resp.json())["errcode"] == "M_FORBIDDEN"
    monkeypatch.undo()
    await service.reload()
    async with http.get(raw(gateway.url, "/_matrix/client/versions")) as resp:
        assert resp.status == 200
    assert len(upstream.seen) == 1


@pytest.mark.parametrize(
    ("body", "headers", "problem"),
    [
        (b"not json", {}, "not a JSON object"),
        (b"[1, 2]", {}, "not a JSON object"),
        (gzip.compress(b"{}"), {"Content-Encoding": "gzip"}, "compressed"),
        (b'{"name": "' + b"x" * 2048 + b'"}', {}, "larger than"),
    ],
)
async def test_create_room_bodies_that_cannot_be_judged(
    make_gateway: MakeGateway,
    upstream: Upstream,
    http: aiohttp.ClientSession,
    body: bytes,
    headers: dict[str, str],
    problem: str,
) -> None:
    gateway = await make_gateway(upstream.url, max_inspect_body=1024)
    url = raw(gateway.url, "/_matrix/client/v3/createRoom")
    async with http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 403
        assert problem in (await resp.json())["error"]
    assert upstream.seen == []


async def test_create_room_body_is_inspected_and_forwarded_unchanged(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    await gateway.compliance_ledger()
    url = raw(gateway.url, "/_matrix/client/r0/createRoom")
    encrypted = {"initial_state": [{"type": "m.room.encryption", "content": {}}]}
    async with http.post(url, json=encrypted) as resp:
        assert resp.status == 403
    plain = b'{"name": "ledger",  "initial_state": [{"type": "m.room.topic", "content": {}}]}'

    async def chunks() -> object:
        yield plain[:10]
        yield plain[10:]

    for data in (plain, chunks()):  # with Content-Length, then chunked
        async with http.post(url, data=data) as resp:
            assert resp.status == 200
        assert upstream.seen[-1].body == plain
    assert len(upstream.seen) == 2


async def test_large_request_with_expect_continue(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    await gateway.compliance_ledger()
    body = pattern(3 * CHUNK)
    blocked = raw(gateway.url, SEND.format("m.room.redaction"))
    async with http.put(blocked, data=body, expect100=True) as resp:
        assert resp.status == 403
    allowed = raw(gateway.url, SEND.format("m.room.message"))
    async with http.put(allowed, data=body, expect100=True) as resp:
        assert resp.status == 200 and (await resp.json())["length"] == len(body)
    assert [s.body == body for s in upstream.seen] == [True]


async def test_head_keeps_content_length(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    url = raw(gateway.url, "/_matrix/media/v3/download/test/123456")
    async with http.head(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "123456"
        assert await resp.read() == b""


async def test_upstream_down_is_a_502(
    make_gateway: MakeGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(f"http://127.0.0.1:{free_port()}")
    async with http.get(raw(gateway.url, "/_matrix/client/versions")) as resp:
        assert resp.status == 502 and (await resp.json())["errcode"] == "M_UNKNOWN"


async def test_upstream_read_timeout_is_a_504(
    make_gateway: MakeGateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(upstream.url, timeouts={"read": 0.2})
    async with http.get(raw(gateway.url, "/_matrix/test/slow?delay=2")) as resp:
        assert resp.status == 504


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_a_broken_upstream_body_is_not_passed_off_as_complete(
    gateway: Gateway, http: aiohttp.ClientSession, chunked: str
) -> None:
    url = raw(gateway.url, f"/_matrix/test/broken?chunked={chunked}")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(url) as resp:
            assert resp.status == 200
            await resp.read()


async def test_a_client_that_leaves_does_not_stop_the_proxy(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(raw(gateway.url, "/_matrix/media/v3/download/test/20000000")) as resp:
        await resp.content.readexactly(CHUNK)
    # Closing mid-body drops the connection; the next request gets a fresh one.
    async with http.get(raw(gateway.url, "/_matrix/client/versions")) as resp:
        assert resp.status == 200


async def test_http_1_0_and_absolute_form(gateway: Gateway) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")

    async def exchange(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer

    answer = await exchange(b"GET /_matrix/client/versions HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["raw_path"] == "/_matrix/client/versions"
    answer = await exchange(
        b"GET http://evil.example/_matrix/client/versions HTTP/1.1\r\nHost: evil.example\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 404")


async def test_tls_listener(make_gateway: MakeGateway, upstream: Upstream, tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    gateway = await make_gateway(
        upstream.url, listen={"tls_certificate": str(cert), "tls_private_key": str(key)}
    )
    assert gateway.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))
    async with (
        aiohttp.ClientSession() as http,
        http.get(raw(gateway.url, "/_matrix/key/v2/server"), ssl=context) as resp,
    ):
        assert resp.status == 200
    assert dict(upstream.seen[-1].headers)["X-Forwarded-Proto"] == "https"
    # No plain HTTP on a TLS port.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy.port)
    writer.write(b"GET /_matrix/key/v2/server HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(100), 5)
    except ConnectionError:
        answer = b""
    writer.close()
    assert not answer.startswith(b"HTTP/1.1 200")
