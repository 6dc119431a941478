"""One request id from the bot to the homeserver: dmz_api logs it on every line of the
request (JSON logs carry it as ``request_id``), sends it on as ``X-Request-Id`` with each
homeserver call, and counts those calls by outcome. Paths holding a token are masked.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from devstack.dmz import DmzApi
from devstack.synapse import Synapse
from dmz_api.app import init_app
from dmz_api.logs import JsonFormatter, RequestIdFilter

from .conftest import API_KEY, SPONSOR, app_config, auth, registrar_section

RID = "cmd-4f2a9c1e"


class AdminApiDouble:
    """Synapse's registration-token admin calls, recording what each request carried."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.tokens: dict[str, dict[str, Any]] = {}
        self.status = 200

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/_synapse/admin/v1/registration_tokens/new", self.handle)
        app.router.add_get("/_synapse/admin/v1/registration_tokens", self.handle)
        app.router.add_delete("/_synapse/admin/v1/registration_tokens/{token}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.headers.get("X-Request-Id")))
        if self.status == 200 and request.method == "POST":
            body = await request.json()
            self.tokens[body["token"]] = {**body, "pending": 0, "completed": 0}
        elif request.method == "DELETE":
            self.tokens.pop(request.match_info["token"], None)
        listing = {"registration_tokens": list(self.tokens.values())}
        return web.json_response(listing, status=self.status)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """dmz_api's records as ``python -m dmz_api`` with ``log_format: json`` writes them."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("dmz_api")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield buffer
    logger.removeHandler(handler)
    logger.setLevel(previous)


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_the_request_id_reaches_the_homeserver_and_every_log_line(
    aiohttp_client: Any, tmp_path: Path, json_log: io.StringIO
) -> None:
    double = AdminApiDouble()
    async with TestServer(double.app(), host="127.0.0.1") as hs:
        section = registrar_section(homeserver={"url": str(hs.make_url("")).rstrip("/")})
        client = await aiohttp_client(init_app(app_config(f"sqlite:{tmp_path / 'a.db'}", section)))
        minted = await client.post("/v1/tokens", json={}, headers=auth(**{"X-Request-Id": RID}))
        assert minted.status == 201
        assert minted.headers["X-Request-Id"] == RID
        body = await minted.json()
        revoked = await client.delete(f"/v1/tokens/{body['id']}", headers=auth())
        assert revoked.status == 200
        revoke_rid = revoked.headers["X-Request-Id"]  # made up by dmz_api: none was sent
        double.status = 500
        failed = await client.post("/v1/tokens", json={}, headers=auth())
        assert failed.status == 503
        metrics = await (await client.get("/metrics")).text()

    failed_rid = failed.headers["X-Request-Id"]
    assert ("POST", RID) in double.seen and ("DELETE", revoke_rid) in double.seen
    assert ("POST", failed_rid) in double.seen
    assert {rid for _method, rid in double.seen} == {RID, revoke_rid, failed_rid}
    calls = {
        (r["request_id"], r["message"].partition(" in ")[0])
        for r in records(json_log)
        if r["logger"] == "dmz_api.registrar.homeserver.calls"
    }
    assert (RID, "Homeserver POST /_synapse/admin/v1/registration_tokens/new: HTTP 200") in calls
    delete = "Homeserver DELETE /_synapse/admin/v1/registration_tokens/<token>: HTTP 200"
    assert (revoke_rid, delete) in calls
    assert body["token"] not in json_log.getvalue()
    # The adapter's own warning about the 500 carries the id of its request too.
    warning = next(r for r in records(json_log) if r["level"] == "WARNING")
    assert warning["request_id"] == failed_rid
    ok = sum(1 for _method, rid in double.seen if rid != failed_rid)
    assert f'dmz_api_registrar_homeserver_requests_total{{outcome="2xx"}} {ok}.0' in metrics
    assert 'dmz_api_registrar_homeserver_requests_total{outcome="5xx"} 1.0' in metrics
    assert f"dmz_api_registrar_homeserver_request_seconds_count {ok + 1}.0" in metrics


@pytest.mark.slow
def test_json_logs_of_a_running_registrar_follow_the_request_id(
    tmp_path: Path, dmz_synapse: Synapse
) -> None:
    api = DmzApi(
        tmp_path,
        {
            "log_format": "json",
            "api_keys": [{"name": "bot", "key": API_KEY, "scopes": ["tokens"]}],
            "registrar": registrar_section(
                homeserver={
                    "url": dmz_synapse.base_url,
                    "server_name": dmz_synapse.server_name,
                    "admin_token": dmz_synapse.admin_token,
                }
            ),
        },
    )
    api.api_key = API_KEY
    with api:
        status, body = api.call(
            "POST", "/v1/tokens", {}, acting_user=SPONSOR, **{"X-Request-Id": RID}
        )
        assert status == 201
    lines = (tmp_path / "dmz_api.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert entries
    assert any(
        e.get("request_id") == RID
        and e["logger"] == "dmz_api.registrar.homeserver.calls"
        and "/_synapse/admin/v1/registration_tokens/new: HTTP 200" in e["message"]
        for e in entries
    ), lines
    assert body["token"] not in "\n".join(lines)
