"""Fixtures for the built-in reverse proxy: a recording upstream, the gateway app with its
proxy listener on a free port, and a raw HTTP client that never re-encodes paths.

The gateway runs in the test's event loop (``init_app`` through ``aiohttp_client``), so its
admin API is the test client and ``proxy.url`` is the second listener.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from dmz_api.app import init_app
from dmz_api.config import parse_config
from dmz_api.gateway import GATEWAY, GATEWAY_PROXY
from dmz_api.gateway.enforce.proxy import GatewayProxy
from dmz_api.gateway.service import GatewayService

RULES_KEY = "proxy-tests-rules-key-" + "r" * 24
SERVER_NAME = "corp.example"
ADMIN = {"Authorization": f"Bearer {RULES_KEY}", "X-Acting-User": "@sec:corp.example"}
CHUNK = 2**16

AdminClient = TestClient[web.Request, web.Application]


def pattern(size: int) -> bytes:
    """``size`` deterministic bytes (not all alike, so reordering would show)."""
    block = bytes(range(256)) * (CHUNK // 256)
    whole, rest = divmod(size, CHUNK)
    return block * whole + block[:rest]


def x_matrix(origin: str) -> str:
    return f'X-Matrix origin="{origin}",destination="{SERVER_NAME}",key="ed25519:a",sig="c2ln"'


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Upstream:
    """A tiny homeserver stand-in that records every request it gets."""

    server: TestServer
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[SEEN].append(
        Seen(request.method, request.raw_path, list(request.headers.items()), body)
    )
    return web.json_response(
        {"method": request.method, "raw_path": request.raw_path, "length": len(body)},
        headers={"Connection": "keep-alive, X-Upstream-Private", "X-Upstream-Private": "1"},
    )


async def _longpoll(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query["delay"]))
    return web.json_response({"next_batch": "s1"})


async def _upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response(
        {
            "size": size,
            "sha256": digest.hexdigest(),
            "content_length": request.headers.get("Content-Length"),
            "chunked": request.headers.get("Transfer-Encoding"),
        }
    )


async def _download(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info["size"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("chunked") != "1":
        response.content_length = size
    await response.prepare(request)
    block = pattern(CHUNK)
    sent = size if request.method == "HEAD" else 0
    try:
        while sent < size:
            part = block[: min(CHUNK, size - sent)]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
    except ConnectionError:
        pass  # the proxy hung up: its client left
    return response


async def _broken(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    if request.query.get("chunked") != "1":
        response.content_length = 10 * CHUNK
    await response.prepare(request)
    await response.write(pattern(CHUNK))
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return response


async def _gzip(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[SEEN].append(
        Seen(request.method, request.raw_path, list(request.headers.items()), body)
    )
    return web.Response(
        body=GZIPPED,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query["delay"]))
    return web.json_response({})


SEEN = web.AppKey("seen", list[Seen])
GZIPPED = gzip.compress(b'{"chunk": "' + b"z" * 5000 + b'"}')


def upstream_app(seen: list[Seen]) -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    app[SEEN] = seen
    app.router.add_get("/_matrix/client/v3/sync", _longpoll)
    app.router.add_post("/_matrix/media/v3/upload", _upload)
    app.router.add_get("/_matrix/media/v3/download/test/{size}", _download)
    app.router.add_get("/_matrix/test/broken", _broken)
    app.router.add_get("/_matrix/test/slow", _slow)
    app.router.add_route("*", "/_matrix/test/gzip", _gzip)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Upstream:
    seen: list[Seen] = []
    # Like a homeserver behind a proxy, it sees request bodies exactly as they arrive.
    server: TestServer = await aiohttp_server(upstream_app(seen), auto_decompress=False)
    return Upstream(server, seen)


@dataclass
class Gateway:
    admin: AdminClient
    proxy: GatewayProxy

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def service(self) -> GatewayService:
        return self.admin.app[GATEWAY]

    async def add_rule(self, rule: dict[str, Any]) -> Any:
        resp = await self.admin.post("/v1/rules", json=rule, headers=ADMIN)
        assert resp.status == 201, await resp.text()
        return await resp.json()

    async def delete_rule(self, rule_id: str) -> None:
        resp = await self.admin.delete(f"/v1/rules/{rule_id}", headers=ADMIN)
        assert resp.status == 200, await resp.text()

    async def compliance_ledger(self) -> None:
        resp = await self.admin.post("/v1/rules/preset/compliance-ledger", json={}, headers=ADMIN)
        assert resp.status in (200, 201), await resp.text()

    async def decisions(self, count: int) -> list[dict[str, Any]]:
        """The newest decisions once at least ``count`` are written (they are batched)."""
        for _ in range(200):
            resp = await self.admin.get("/v1/decisions?limit=1000", headers=ADMIN)
            rows: list[dict[str, Any]] = (await resp.json())["decisions"]
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.02)
        raise AssertionError(f"fewer than {count} decisions were recorded")


def gateway_config(tmp_path: Path, upstream: str, **gateway: Any) -> Any:
    listen = gateway.pop("listen", {})
    section: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "upstream": upstream,
        "decision_log": {"flush_interval": 0.05, "batch_size": 50, "allow": "full"},
        "reload_interval": 0.1,
        **gateway,
    }
    if listen is not None:  # None: no proxy listener
        section["listen"] = {"host": "127.0.0.1", "port": 0, **listen}
    return parse_config(
        {
            "server": {"public_url": "https://gateway.corp.example"},
            "database": f"sqlite:{tmp_path / 'gateway.db'}",
            "api_keys": [{"name": "sec", "key": RULES_KEY, "scopes": ["rules", "decisions"]}],
            "gateway": section,
        },
        tmp_path,
    )


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def make_gateway(aiohttp_client: Any, tmp_path: Path) -> MakeGateway:
    async def make(upstream: str, **gateway: Any) -> Gateway:
        app = init_app(gateway_config(tmp_path, upstream, **gateway))
        admin: AdminClient = await aiohttp_client(app)
        return Gateway(admin, app[GATEWAY_PROXY])

    return make


@pytest.fixture
async def gateway(make_gateway: MakeGateway, upstream: Upstream) -> Gateway:
    return await make_gateway(upstream.url)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that sends paths exactly as written (see ``raw``)."""
    async with aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        yield session


def raw(base: str, path: str) -> URL:
    """``base + path`` with ``path`` kept byte for byte (no re-encoding, no normalising)."""
    return URL(base + path, encoded=True)
