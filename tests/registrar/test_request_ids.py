"""One request id from the bot to the homeserver: dmz_api logs it on every line of the
request (JSON logs carry it as ``request_id``), sends it on as ``X-Request-Id`` with each
homeserver call, and counts those calls by outcome. Paths holding a token are masked.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.parse
import urllib.request
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
from dmz_api.registrar import REGISTRAR
from dmz_api.registrar.store import GuestRow

from .conftest import API_KEY, SPONSOR, app_config, auth, csrf_of, registrar_section

RID = "cmd-4f2a9c1e"
GUEST = "@guest1:dmz.test"
OTHER_GUEST = "@guest2:dmz.test"


class AdminApiDouble:
    """Synapse's deactivation admin call, recording the request id each request carried."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.status = 200

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/_synapse/admin/v1/deactivate/{user_id}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.match_info["user_id"], request.headers.get("X-Request-Id")))
        return web.json_response({"id_server_unbind_result": "success"}, status=self.status)


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
        minted = await client.post("/v1/tokens", json={}, headers=auth())
        assert minted.status == 201
        body = await minted.json()
        store = client.app[REGISTRAR].store
        for guest in (GUEST, OTHER_GUEST):
            await store.insert_guest(GuestRow(guest, SPONSOR, body["id"], 1, "active", None, None))
        done = await client.post(
            f"/v1/guests/{GUEST}/deactivate", headers=auth(**{"X-Request-Id": RID})
        )
        assert done.status == 200
        assert done.headers["X-Request-Id"] == RID
        double.status = 500
        failed = await client.post(f"/v1/guests/{OTHER_GUEST}/deactivate", headers=auth())
        assert failed.status == 503
        metrics = await (await client.get("/metrics")).text()

    failed_rid = failed.headers["X-Request-Id"]  # made up by dmz_api: none was sent
    assert double.seen == [(GUEST, RID), (OTHER_GUEST, failed_rid)]
    calls = {
        (r["request_id"], r["message"].partition(" in ")[0])
        for r in records(json_log)
        if r["logger"] == "dmz_api.registrar.homeserver.calls"
    }
    deactivate = "Homeserver POST /_synapse/admin/v1/deactivate/{}: HTTP {}"
    assert (RID, deactivate.format(GUEST, 200)) in calls
    assert (failed_rid, deactivate.format(OTHER_GUEST, 500)) in calls
    assert body["token"] not in json_log.getvalue()
    # The adapter's own warning about the 500 carries the id of its request too.
    warning = next(r for r in records(json_log) if r["level"] == "WARNING")
    assert warning["request_id"] == failed_rid
    assert 'dmz_api_registrar_homeserver_requests_total{outcome="2xx"} 1.0' in metrics
    assert 'dmz_api_registrar_homeserver_requests_total{outcome="5xx"} 1.0' in metrics
    assert "dmz_api_registrar_homeserver_request_seconds_count 2.0" in metrics


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
        status, body = api.call("POST", "/v1/tokens", {}, acting_user=SPONSOR)
        assert status == 201
        # The page's registration is the call that reaches the homeserver (the URL token is
        # the registrar's own): a one-use native token is made for it and deleted after.
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        query = urllib.parse.urlencode({"token": body["token"]})
        with opener.open(f"{api.base_url}/register?{query}", timeout=10) as page:
            csrf = csrf_of(page.read().decode())
        fields = {
            "token": body["token"],
            "csrf_token": csrf,
            "username": "traced",
            "password": "correct horse battery staple 9",
            "password_confirm": "correct horse battery staple 9",
            "display_name": "",
        }
        request = urllib.request.Request(
            f"{api.base_url}/register",
            data=urllib.parse.urlencode(fields).encode(),
            headers={"X-Request-Id": RID},
        )
        with opener.open(request, timeout=30) as done:
            assert done.status == 200
            assert "@traced:" in done.read().decode()
    lines = (tmp_path / "dmz_api.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    traced = [
        e["message"]
        for e in entries
        if e.get("request_id") == RID and e["logger"] == "dmz_api.registrar.homeserver.calls"
    ]
    assert any("POST /_synapse/admin/v1/registration_tokens/new: HTTP 200" in m for m in traced)
    assert any("/_matrix/client/v3/register" in m for m in traced), lines
    assert any("DELETE /_synapse/admin/v1/registration_tokens/<token>" in m for m in traced)
    assert body["token"] not in "\n".join(lines)
