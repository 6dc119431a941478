"""A real Synapse with synapse_http_antispam.HTTPAntispam, fail-closed, asking this gateway."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devstack.ports import free_port
from devstack.synapse import Synapse
from dmz_api.app import init_app
from dmz_api.gateway import GATEWAY
from dmz_api.gateway.service import GatewayService
from dmz_api.gateway.store import DecisionQuery

from .conftest import AUTHZ_SECRET, gateway_config

pytestmark = pytest.mark.slow

CALLBACKS = ["check_event_for_spam", "user_may_invite", "user_may_join_room"]


class Antispam:
    def __init__(self, hs: Synapse, port: int) -> None:
        self.hs = hs
        self.port = port


@pytest.fixture(scope="module")
def antispam_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Antispam]:
    port = free_port()
    module = {
        "module": "synapse_http_antispam.HTTPAntispam",
        "config": {
            "base_url": f"http://127.0.0.1:{port}/v1/antispam",
            "authorization": AUTHZ_SECRET,
            # List them: by default the module registers accept_make_join too, which
            # Synapse 1.163 does not know, and Synapse refuses to start.
            "enabled_callbacks": CALLBACKS,
            "fail_open": {name: False for name in CALLBACKS},
        },
    }
    hs = Synapse(
        tmp_path_factory.mktemp("antispam-synapse"), name="sbg", extra_config={"modules": [module]}
    )
    with hs:
        yield Antispam(hs, port)


class RunningGateway:
    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner
        self.service: GatewayService = runner.app[GATEWAY]
        self.stopped = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


@pytest.fixture
async def running(antispam_hs: Antispam, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = gateway_config(
        tmp_path, server_name=antispam_hs.hs.server_name, authz={"secret": AUTHZ_SECRET}
    )
    runner = web.AppRunner(init_app(config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", antispam_hs.port).start()
    gateway = RunningGateway(runner)
    try:
        yield gateway
    finally:
        await gateway.stop()


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session, self.base, self.token = session, base, token

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, json=body, headers={"Authorization": f"Bearer {self.token}"}
        ) as resp:
            return resp.status, await resp.json()


async def user(hs: Synapse, session: aiohttp.ClientSession, name: str) -> Client:
    token = await asyncio.to_thread(hs.register_user, name, secrets.token_urlsafe(12))
    return Client(session, hs.base_url, token)


async def test_rules_enforced_inside_synapse(
    antispam_hs: Antispam, running: RunningGateway
) -> None:
    hs, gateway = antispam_hs.hs, running.service
    suffix = secrets.token_hex(3)
    async with aiohttp.ClientSession() as session:
        alice = await user(hs, session, f"alice{suffix}")
        bob = await user(hs, session, f"bob{suffix}")
        status, body = await alice.call(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}
        )
        assert status == 200, body
        room = body["room_id"]
        txn = iter(range(100))

        # compliance-ledger: no encryption, no redaction, messages still flow
        await gateway.apply_preset("compliance-ledger", {}, author="@sec:corp.example")
        status, body = await alice.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/state/m.room.encryption/",
            {"algorithm": "m.megolm.v1.aes-sha2"},
        )
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
        assert "compliance-ledger" in body["error"]
        status, body = await alice.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t{next(txn)}",
            {"msgtype": "m.text", "body": "on the record"},
        )
        assert status == 200, body
        event_id = body["event_id"]
        status, body = await alice.call(
            "PUT", f"/_matrix/client/v3/rooms/{room}/redact/{event_id}/t{next(txn)}", {}
        )
        assert status == 403 and "m.room.redaction" in body["error"], body

        # user_may_invite: outbound zero trust for invites of remote users
        await gateway.add_rule(
            {"id": "partners", "kind": "server_allow", "params": {"servers": ["partner.example"]}},
            author="@sec:corp.example",
        )
        status, body = await alice.call(
            "POST", f"/_matrix/client/v3/rooms/{room}/invite", {"user_id": "@x:stranger.example"}
        )
        assert status == 403 and "allow list" in body["error"], body
        status, body = await alice.call(
            "POST",
            f"/_matrix/client/v3/rooms/{room}/invite",
            {"user_id": f"@bob{suffix}:{hs.server_name}"},
        )
        assert status == 200, body

        # audit first (allowed, recorded as would_block), then promoted (refused)
        await gateway.add_rule(
            {
                "id": "no-chat",
                "kind": "event_type_block",
                "mode": "audit",
                "params": {"event_types": ["m.room.message"], "scope": "client"},
            },
            author="@sec:corp.example",
        )
        message = {"msgtype": "m.text", "body": "audited"}
        path = f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t{{}}"
        status, body = await alice.call("PUT", path.format(next(txn)), message)
        assert status == 200, body
        await gateway.promote("no-chat", author="@sec:corp.example")
        status, body = await alice.call("PUT", path.format(next(txn)), message)
        assert status == 403 and "no-chat" in body["error"], body

        # user_may_join_room
        await gateway.add_rule(
            {
                "id": "no-joins",
                "kind": "event_type_block",
                "params": {"event_types": ["m.room.member"], "scope": "client"},
            },
            author="@sec:corp.example",
        )
        status, body = await bob.call("POST", f"/_matrix/client/v3/join/{room}", {})
        assert status == 403 and "no-joins" in body["error"], body

        await asyncio.sleep(0.2)
        await gateway.decision_log.flush()
        rows = await gateway.decisions(DecisionQuery(source="antispam", limit=500))
        blocked = {(r["path"], r["rule"]) for r in rows if r["outcome"] == "block"}
        assert ("/v1/antispam/check_event_for_spam", "compliance-ledger") in blocked
        assert ("/v1/antispam/user_may_invite", "partners") in blocked
        assert ("/v1/antispam/user_may_join_room", "no-joins") in blocked
        assert ("/v1/antispam/check_event_for_spam", "no-chat") in blocked
        would = [r for r in rows if r["outcome"] == "would_block"]
        assert [(r["rule"], r["mode"], r["event_type"]) for r in would] == [
            ("no-chat", "audit", "m.room.message")
        ]
        invite = next(
            r
            for r in rows
            if r["path"] == "/v1/antispam/user_may_invite" and r["outcome"] == "block"
        )
        assert (
            invite["origin"] == "stranger.example"
            and invite["user"] == f"@alice{suffix}:{hs.server_name}"
        )

        # fail closed: a ruleset that cannot be compiled refuses everything
        await gateway.store.db.execute(
            "UPDATE gateway_rules SET kind='no_such_kind' WHERE id='partners'"
        )
        await gateway.reload()
        status, body = await alice.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t{next(txn)}",
            {"msgtype": "m.text", "body": "refused"},
        )
        assert status == 403 and "cannot load its rules" in body["error"], body


async def test_gateway_down_fails_closed(antispam_hs: Antispam, running: RunningGateway) -> None:
    hs = antispam_hs.hs
    async with aiohttp.ClientSession() as session:
        alice = await user(hs, session, f"carol{secrets.token_hex(3)}")
        status, body = await alice.call("POST", "/_matrix/client/v3/createRoom", {})
        assert status == 200, body
        room = body["room_id"]
        await running.stop()
        status, body = await alice.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/send/m.room.message/x1",
            {"msgtype": "m.text", "body": "nobody to ask"},
        )
        assert status == 403 and body["errcode"] == "M_UNKNOWN", body
