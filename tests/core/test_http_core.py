"""The shared HTTP core: key auth and scopes, JSON errors, request ids, metrics."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dmz_api.app import metrics_handler
from dmz_api.auth import acting_user, auth_middleware, requires_scope
from dmz_api.errors import InvalidParam
from dmz_api.keys import KEYRING, ApiKey, KeyRing, hash_api_key
from dmz_api.metrics import METRICS, Metrics
from dmz_api.middlewares import error_middleware, request_id_middleware

TOKENS_KEY = "tokens-key-" + "a" * 24
RULES_KEY = "rules-key-" + "b" * 24


@requires_scope("tokens")
async def protected(request: web.Request) -> web.Response:
    return web.json_response({"acting": acting_user(request)})


@requires_scope("tokens")
async def bad_input(request: web.Request) -> web.Response:
    raise InvalidParam("uses must be a whole number from 1 to 100")


@requires_scope("tokens")
async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("secret-internal-detail")


async def public(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[web.Request, web.Application]:
    app = web.Application(middlewares=[request_id_middleware, error_middleware, auth_middleware])
    app[KEYRING] = KeyRing(
        [
            ApiKey("bot", hash_api_key(TOKENS_KEY), frozenset({"tokens"})),
            ApiKey("sec", hash_api_key(RULES_KEY), frozenset({"rules"})),
        ]
    )
    app[METRICS] = Metrics()
    app.router.add_get("/v1/protected", protected)
    app.router.add_get("/v1/bad", bad_input)
    app.router.add_get("/v1/crash", crash)
    app.router.add_get("/public", public)
    app.router.add_get("/metrics", metrics_handler)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def error(resp: Any) -> tuple[int, str, str]:
    body = await resp.json()
    return resp.status, body["errcode"], body["error"]


async def test_missing_malformed_unknown_key(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/protected")
    assert (await error(resp))[:2] == (401, "M_MISSING_TOKEN")
    resp = await client.get("/v1/protected", headers={"Authorization": f"Basic {TOKENS_KEY}"})
    assert (await error(resp))[:2] == (401, "M_MISSING_TOKEN")
    resp = await client.get("/v1/protected", headers={"Authorization": "Bearer nope"})
    assert (await error(resp))[:2] == (401, "M_UNKNOWN_TOKEN")


async def test_scope_enforced_and_acting_user(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/protected", headers={"Authorization": f"Bearer {RULES_KEY}"})
    status, errcode, message = await error(resp)
    assert (status, errcode) == (403, "M_FORBIDDEN") and "'tokens'" in message
    headers = {"Authorization": f"Bearer {TOKENS_KEY}", "X-Acting-User": "@alice:corp.example"}
    resp = await client.get("/v1/protected", headers=headers)
    assert resp.status == 200
    assert await resp.json() == {"acting": "@alice:corp.example"}
    headers["X-Acting-User"] = "alice"
    resp = await client.get("/v1/protected", headers=headers)
    status, errcode, message = await error(resp)
    assert (status, errcode) == (400, "M_INVALID_PARAM") and "X-Acting-User" in message


async def test_errors_are_json_and_hide_internals(client: TestClient[Any, Any]) -> None:
    auth = {"Authorization": f"Bearer {TOKENS_KEY}"}
    resp = await client.get("/v1/bad", headers=auth)
    assert await error(resp) == (
        400,
        "M_INVALID_PARAM",
        "uses must be a whole number from 1 to 100",
    )
    resp = await client.get("/v1/crash", headers=auth)
    status, errcode, message = await error(resp)
    assert (status, errcode) == (500, "M_UNKNOWN") and "secret" not in message
    resp = await client.get("/v1/nowhere")
    assert (await error(resp))[:2] == (404, "M_UNRECOGNIZED")
    resp = await client.post("/public")
    assert (await error(resp))[:2] == (405, "M_UNRECOGNIZED")
    assert set(resp.headers["Allow"].split(",")) >= {"GET"}  # RFC 9110: a 405 lists them


async def test_request_id_kept_or_made(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/public", headers={"X-Request-Id": "bot-123"})
    assert resp.headers["X-Request-Id"] == "bot-123"
    resp = await client.get("/public", headers={"X-Request-Id": "bad id\twith spaces"})
    assert resp.headers["X-Request-Id"] != "bad id\twith spaces"
    assert len(resp.headers["X-Request-Id"]) == 16


async def test_metrics_count_requests(client: TestClient[Any, Any]) -> None:
    await client.get("/public")
    await client.get("/v1/protected")
    text = await (await client.get("/metrics")).text()
    assert 'dmz_api_requests_total{route="/public",status="200"} 1.0' in text
    assert 'dmz_api_requests_total{route="/v1/protected",status="401"} 1.0' in text
