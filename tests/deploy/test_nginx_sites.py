"""The nginx sites of deploy/nginx/: ``nginx -t`` for each, then each run for real on
loopback (ports and addresses rewritten, nothing else) in front of the real gateway and
stand-in upstreams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from devstack.nginx import NGINX
from devstack.ports import free_port
from dmz_api.app import init_app
from dmz_api.config import parse_config
from dmz_api.gateway import GATEWAY

from .conftest import (
    AUTHZ_SECRET,
    DEPLOY,
    NGINX_SITES,
    NginxSite,
    Recorder,
    load_yaml,
    secret_files,
    write_secrets,
)

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")

SITES = DEPLOY / "nginx"
ENCRYPTION = "/_matrix/client/v3/rooms/%21room%3Acorp.example/state/m%2Eroom%2Eencryption/"
MESSAGES = "/_matrix/client/v3/rooms/%21room%3Acorp.example/messages?dir=b&limit=5"
TOKEN = "SeCrEtToKeN-0123456789"


def test_every_site_is_tested() -> None:
    assert {p.name for p in NGINX_SITES} == {
        "gateway-proxy.conf",
        "gateway-auth-request.conf",
        "gateway-admin.conf",
        "registrar-public.conf",
        "registrar-admin.conf",
    }


@pytest.mark.parametrize("conf", NGINX_SITES, ids=lambda p: p.name)
def test_nginx_accepts_the_site(conf: Path, tmp_path: Path) -> None:
    result = NginxSite(conf, tmp_path).check()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


class RunningGateway:
    def __init__(self, runner: web.AppRunner, port: int, proxy_port: int | None) -> None:
        self.runner = runner
        self.address = f"127.0.0.1:{port}"
        self.proxy_address = f"127.0.0.1:{proxy_port}" if proxy_port else ""

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_gateway(tmp_path: Path, *, upstream: str | None) -> RunningGateway:
    """deploy/dmz_api/gateway.yaml on free ports; proxy mode when ``upstream`` is given,
    forward-auth mode (no listen, no upstream) otherwise, as the file's header says."""
    data: dict[str, Any] = load_yaml(DEPLOY / "dmz_api" / "gateway.yaml")
    write_secrets(tmp_path, secret_files(data))
    (tmp_path / data["gateway"]["authz"]["secret_file"]).write_text(AUTHZ_SECRET)
    port, proxy_port = free_port(), None
    data["server"]["port"] = port
    data["database"] = f"sqlite:{tmp_path / 'gateway.db'}"
    data["gateway"]["decision_log"]["flush_interval"] = 0.05
    if upstream is None:
        del data["gateway"]["listen"], data["gateway"]["upstream"]
    else:
        proxy_port = data["gateway"]["listen"]["port"] = free_port()
        data["gateway"]["upstream"] = f"http://{upstream}"
    app = init_app(parse_config(data, tmp_path))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await app[GATEWAY].apply_preset("compliance-ledger", {}, author="@sec:corp.example")
    return RunningGateway(runner, port, proxy_port)


@pytest.fixture
async def homeserver() -> AsyncIterator[Recorder]:
    recorder = await Recorder("homeserver").start()
    yield recorder
    await recorder.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False), timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, Any]:
    async with http.request(method, URL(url, encoded=True), **kwargs) as response:
        text = await response.text()
        try:
            body: Any = await response.json(content_type=None)
        except ValueError:
            body = text
        return response.status, body, response.headers


async def test_auth_request_site(
    tmp_path: Path,
    homeserver: Recorder,
    http: aiohttp.ClientSession,
    nginx_sites: list[NginxSite],
) -> None:
    gateway = await start_gateway(tmp_path / "gateway", upstream=None)
    upstreams = {"10.0.10.8:8008": homeserver.address, "127.0.0.1:8451": gateway.address}
    site = NginxSite(SITES / "gateway-auth-request.conf", tmp_path / "nginx", upstreams=upstreams)
    nginx_sites.append(site.start())
    base = site.url("443")
    try:
        # Allowed: reaches the homeserver with the URI as sent, and without the secret.
        status, body, _ = await call(http, "GET", base + MESSAGES)
        assert status == 200 and body["raw_path"] == MESSAGES
        assert body["authz_secret"] is None
        assert body["x_forwarded_for"] == "127.0.0.1"
        # Federation port, same pipeline.
        status, body, _ = await call(http, "GET", site.url("8448") + "/_matrix/key/v2/server")
        assert status == 200 and body["upstream"] == "homeserver"

        # Blocked by compliance-ledger (percent-encoded type): JSON 403 with the reason.
        seen = len(homeserver.seen)
        status, body, headers = await call(http, "PUT", base + ENCRYPTION, json={})
        assert status == 403 and headers["Content-Type"].startswith("application/json")
        assert body["errcode"] == "M_FORBIDDEN" and "m.room.encryption" in body["error"]
        assert len(homeserver.seen) == seen

        # Not Matrix: never proxied.
        for path in ("/_synapse/admin/v1/users", "/v1/rules", "/"):
            status, _, _ = await call(http, "GET", base + path)
            assert status == 404, path
        assert len(homeserver.seen) == seen
    finally:
        await gateway.stop()

    # The decision endpoint is gone: refused with a JSON 500, nothing let through.
    status, body, _ = await call(http, "GET", base + MESSAGES)
    assert status == 500 and body["errcode"] == "M_UNKNOWN"
    assert len(homeserver.seen) == seen


async def test_auth_request_site_with_a_wrong_secret_refuses(
    tmp_path: Path,
    homeserver: Recorder,
    http: aiohttp.ClientSession,
    nginx_sites: list[NginxSite],
) -> None:
    gateway = await start_gateway(tmp_path / "gateway", upstream=None)
    upstreams = {"10.0.10.8:8008": homeserver.address, "127.0.0.1:8451": gateway.address}
    site = NginxSite(
        SITES / "gateway-auth-request.conf",
        tmp_path / "nginx",
        upstreams=upstreams,
        authz_secret="not-the-gateway-secret-" + "x" * 20,
    )
    nginx_sites.append(site.start())
    try:
        status, body, _ = await call(http, "GET", site.url("443") + MESSAGES)
        assert status == 403 and "wrong gateway secret" in body["error"]
        assert homeserver.seen == []
    finally:
        await gateway.stop()


async def test_proxy_site(
    tmp_path: Path,
    homeserver: Recorder,
    http: aiohttp.ClientSession,
    nginx_sites: list[NginxSite],
) -> None:
    gateway = await start_gateway(tmp_path / "gateway", upstream=homeserver.address)
    site = NginxSite(
        SITES / "gateway-proxy.conf",
        tmp_path / "nginx",
        upstreams={"127.0.0.1:8009": gateway.proxy_address},
    )
    nginx_sites.append(site.start())
    base = site.url("443")
    try:
        status, body, _ = await call(
            http, "GET", base + MESSAGES, headers={"X-Forwarded-For": "6.6.6.6"}
        )
        assert status == 200 and body["raw_path"] == MESSAGES
        # nginx overwrote the client's claim; the gateway forwards the address it judged.
        assert body["x_forwarded_for"] == "127.0.0.1"

        status, body, _ = await call(
            http, "POST", site.url("8448") + "/_matrix/federation/v1/version"
        )
        assert status == 200 and body["upstream"] == "homeserver"

        seen = len(homeserver.seen)
        status, body, _ = await call(http, "PUT", base + ENCRYPTION, json={})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        create_room = {"initial_state": [{"type": "m.room.encryption", "content": {}}]}
        status, body, _ = await call(
            http, "POST", base + "/_matrix/client/v3/createRoom", json=create_room
        )
        assert status == 403 and "m.room.encryption" in body["error"]
        status, _, _ = await call(http, "GET", base + "/_synapse/admin/v1/users")
        assert status == 404
        assert len(homeserver.seen) == seen

        # A streamed upload passes with its body intact.
        payload = b"x" * 300_000
        status, body, _ = await call(
            http, "POST", base + "/_matrix/media/v3/upload?filename=a.bin", data=payload
        )
        assert status == 200 and len(body["body"]) == len(payload)
    finally:
        await gateway.stop()

    status, _, _ = await call(http, "GET", base + MESSAGES)
    assert status == 502


async def test_registrar_public_site(
    tmp_path: Path,
    homeserver: Recorder,
    http: aiohttp.ClientSession,
    nginx_sites: list[NginxSite],
) -> None:
    registrar = await Recorder("registrar").start()
    upstreams = {"127.0.0.1:8450": registrar.address, "127.0.0.1:8008": homeserver.address}
    site = NginxSite(SITES / "registrar-public.conf", tmp_path / "nginx", upstreams=upstreams)
    nginx_sites.append(site.start())
    base = site.url("443")
    try:
        status, body, headers = await call(
            http, "GET", f"{base}/register?token={TOKEN}", headers={"X-Forwarded-For": "6.6.6.6"}
        )
        assert status == 200 and body["upstream"] == "registrar"
        assert body["raw_path"] == f"/register?token={TOKEN}"
        assert body["x_forwarded_for"] == "127.0.0.1"
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        form = {"token": TOKEN, "username": "guest", "password": "pw"}
        status, body, _ = await call(http, "POST", f"{base}/register", data=form)
        assert status == 200 and f"token={TOKEN}" in body["body"]
        status, body, _ = await call(http, "GET", f"{base}/register/static/registrar.css?v=1")
        assert status == 200 and body["upstream"] == "registrar"
        status, _, _ = await call(http, "DELETE", f"{base}/register")
        assert status == 403

        # The admin API and the service endpoints are not public.
        seen = len(registrar.seen)
        for path in ("/v1/tokens", "/v1/openapi.json", "/healthz", "/metrics", "/registerX"):
            status, _, _ = await call(http, "GET", base + path)
            assert status == 404, path
        status, _, _ = await call(http, "POST", f"{base}/v1/tokens", json={})
        assert status == 404
        assert len(registrar.seen) == seen

        # The DMZ homeserver's public side, never its admin API.
        validity = f"/_matrix/client/v1/register/m.login.registration_token/validity?token={TOKEN}"
        status, body, _ = await call(http, "GET", base + validity)
        assert status == 200 and body["upstream"] == "homeserver" and body["raw_path"] == validity
        status, body, _ = await call(http, "GET", site.url("8448") + "/_matrix/key/v2/server")
        assert status == 200 and body["upstream"] == "homeserver"
        status, _, _ = await call(http, "GET", base + "/_synapse/admin/v1/registration_tokens")
        assert status == 404

        # Plain HTTP only redirects.
        async with http.get(
            f"{site.url('80', 'http')}/register?token={TOKEN}", allow_redirects=False
        ) as response:
            assert response.status == 301
            assert response.headers["Location"].startswith("https://")

        # nginx's own limit in front of the registrar's.
        statuses = await asyncio.gather(
            *(call(http, "GET", f"{base}/register?token={TOKEN}") for _ in range(40))
        )
        assert 429 in {s for s, _, _ in statuses}
    finally:
        site.stop()
        await registrar.stop()

    logs = site.log_text()
    assert "/register" in logs and " 429 " in logs
    assert TOKEN not in logs + site.process.log_tail(10_000)


@pytest.mark.parametrize(
    ("conf", "upstream"),
    [("registrar-admin.conf", "127.0.0.1:8450"), ("gateway-admin.conf", "127.0.0.1:8451")],
)
async def test_admin_sites_admit_only_listed_callers(
    conf: str,
    upstream: str,
    tmp_path: Path,
    homeserver: Recorder,
    http: aiohttp.ClientSession,
    nginx_sites: list[NginxSite],
) -> None:
    """The test client (127.0.0.1) is none of the listed callers: refused before dmz_api."""
    site = NginxSite(SITES / conf, tmp_path, upstreams={upstream: homeserver.address})
    nginx_sites.append(site.start())
    (listen,) = site.ports
    base = site.url(listen)
    for path in ("/v1/tokens", "/v1/rules", "/v1/antispam/user_may_invite", "/healthz", "/metrics"):
        status, _, _ = await call(http, "GET", base + path)
        assert status == 403, path
    status, _, _ = await call(http, "GET", base + "/v1/authz")
    assert status == (404 if conf == "gateway-admin.conf" else 403)
    for path in ("/register", "/"):
        status, _, _ = await call(http, "GET", base + path)
        assert status == 404, path
    assert homeserver.seen == []
