"""Every spelling of an event-creating request, through the proxy to a real Synapse.

Each variant is sent once under a blocking rule (refused by the gateway, nothing changes
in the room) and once after the rule was removed through the admin API (Synapse accepts
it): the change takes effect on the very next request. Synapse 1.163 routes all of these
(``api/v1`` included), so a gap in the gateway's classification would let an event through.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from devstack.synapse import Synapse

from .conftest import Gateway, MakeGateway, raw

pytestmark = pytest.mark.slow

ENCRYPTION = {"algorithm": "m.megolm.v1.aes-sha2"}
CREATE_ENCRYPTED = {
    "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": ENCRYPTION}]
}
R = "/_matrix/client/{v}/rooms/{room}"

# (name, method, path, body); {room}, {txn} and {event} are filled in per request.
VARIANTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("send v3", "PUT", R + "/send/m.room.encryption/{txn}", ENCRYPTION),
    ("send r0", "PUT", R.replace("{v}", "r0") + "/send/m.room.encryption/{txn}", ENCRYPTION),
    ("send unstable", "PUT", R.replace("{v}", "unstable") + "/send/m.room.encryption/{txn}", {}),
    ("send api/v1", "PUT", R.replace("{v}", "api/v1") + "/send/m.room.encryption/{txn}", {}),
    ("send encoded type", "PUT", R + "/send/m%2Eroom%2Eencryption/{txn}", ENCRYPTION),
    ("POST send, no txn id", "POST", R + "/send/m.room.encryption", ENCRYPTION),
    ("state, trailing slash", "PUT", R + "/state/m.room.encryption/", ENCRYPTION),
    ("state, no state key", "PUT", R + "/state/m.room.encryption", ENCRYPTION),
    ("state encoded type", "PUT", R + "/state/m%2Eroom%2Eencryption/", ENCRYPTION),
    ("state encoded lower", "PUT", R + "/state/m%2eroom%2eencryption", ENCRYPTION),
    ("state r0", "PUT", R.replace("{v}", "r0") + "/state/m.room.encryption/", ENCRYPTION),
    ("state unstable", "PUT", R.replace("{v}", "unstable") + "/state/m.room.encryption/", {}),
    ("state api/v1", "PUT", R.replace("{v}", "api/v1") + "/state/m.room.encryption/", {}),
    ("createRoom initial_state", "POST", "/_matrix/client/{v}/createRoom", CREATE_ENCRYPTED),
    ("createRoom r0", "POST", "/_matrix/client/r0/createRoom", CREATE_ENCRYPTED),
    ("createRoom api/v1", "POST", "/_matrix/client/api/v1/createRoom", CREATE_ENCRYPTED),
    ("redact v3", "PUT", R + "/redact/{event}/{txn}", {"reason": "gone"}),
    ("redact api/v1", "PUT", R.replace("{v}", "api/v1") + "/redact/{event}/{txn}", {}),
    ("POST redact, no txn id", "POST", R + "/redact/{event}", {}),
    ("send redaction type", "PUT", R + "/send/m.room.redaction/{txn}", {"redacts": "{event}"}),
]

RULES = {
    "compliance-ledger": None,
    "event_type_block": {
        "id": "no-e2ee-no-redaction",
        "kind": "event_type_block",
        "params": {"event_types": ["m.room.encryption", "m.room.redaction"], "scope": "client"},
    },
}


@dataclass
class Account:
    hs: Synapse
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def account(dmz_synapse: Synapse) -> Iterator[Account]:
    localpart = f"proxy{secrets.token_hex(4)}"
    token = dmz_synapse.register_user(localpart, secrets.token_urlsafe(12))
    # About a hundred rooms are made here: lift the room-creation rate limit for this user.
    status, body = dmz_synapse.admin(
        "POST",
        f"/_synapse/admin/v1/users/{quote(dmz_synapse.user_id(localpart))}/override_ratelimit",
        {"messages_per_second": 0, "burst_count": 0},
    )
    assert status == 200, body
    yield Account(dmz_synapse, token)


async def call(
    http: aiohttp.ClientSession, base: str, method: str, path: str, account: Account, body: Any
) -> tuple[int, Any]:
    async with http.request(method, raw(base, path), json=body, headers=account.headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def new_room(http: aiohttp.ClientSession, account: Account) -> tuple[str, str]:
    """(room id, an m.room.message event id in it), made directly on Synapse."""
    base = account.hs.base_url
    status, body = await call(http, base, "POST", "/_matrix/client/v3/createRoom", account, {})
    assert status == 200, body
    room = body["room_id"]
    path = f"/_matrix/client/v3/rooms/{quote(room, safe='')}/send/m.room.message/m1"
    status, body = await call(http, base, "PUT", path, account, {"msgtype": "m.text", "body": "1"})
    assert status == 200, body
    return room, body["event_id"]


async def encryption_state(http: aiohttp.ClientSession, account: Account, room: str) -> int:
    path = f"/_matrix/client/v3/rooms/{quote(room, safe='')}/state/m.room.encryption/"
    status, _ = await call(http, account.hs.base_url, "GET", path, account, None)
    return status


def fill(text: str, room: str, event: str) -> str:
    return (
        text.replace("{v}", "v3")
        .replace("{room}", quote(room, safe=""))
        .replace("{event}", quote(event, safe=""))
        .replace("{txn}", secrets.token_hex(6))
    )


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize(("name", "method", "path", "body"), VARIANTS, ids=[v[0] for v in VARIANTS])
async def test_variant_blocked_then_allowed(
    make_gateway: MakeGateway,
    account: Account,
    http: aiohttp.ClientSession,
    rule: str,
    name: str,
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    gateway: Gateway = await make_gateway(account.hs.base_url)
    spec = RULES[rule]
    if spec is None:
        await gateway.compliance_ledger()
        rule_id = "compliance-ledger"
    else:
        rule_id = (await gateway.add_rule(spec))["rule"]["id"]
    room, event = await new_room(http, account)
    payload = {k: fill(v, room, event) if isinstance(v, str) else v for k, v in body.items()}

    status, answer = await call(
        http, gateway.url, method, fill(path, room, event), account, payload
    )
    assert status == 403, answer
    assert answer["errcode"] == "M_FORBIDDEN" and rule_id in answer["error"]
    assert await encryption_state(http, account, room) == 404

    # An ordinary message still passes under the rule.
    message = fill(R + "/send/m.room.message/{txn}", room, event)
    status, answer = await call(
        http, gateway.url, "PUT", message, account, {"msgtype": "m.text", "body": "hi"}
    )
    assert status == 200 and answer["event_id"].startswith("$")

    await gateway.delete_rule(rule_id)
    status, answer = await call(
        http, gateway.url, method, fill(path, room, event), account, payload
    )
    assert status == 200, answer
    assert answer.get("event_id", answer.get("room_id", "")).startswith(("$", "!"))
    if "/state/" in path:
        assert await encryption_state(http, account, room) == 200
    if "createRoom" in path:
        assert await encryption_state(http, account, answer["room_id"]) == 200

    rows = await gateway.decisions(3)
    blocked = [row for row in rows if row["outcome"] == "block"]
    assert len(blocked) == 1 and blocked[0]["rule"] == rule_id
    assert blocked[0]["class"] == "client" and blocked[0]["source"] == "proxy"


async def test_sync_and_media_through_the_proxy(
    gateway_to_synapse: Gateway, account: Account, http: aiohttp.ClientSession
) -> None:
    base = gateway_to_synapse.url
    status, answer = await call(
        http, base, "GET", "/_matrix/client/v3/sync?timeout=0", account, None
    )
    assert status == 200 and "next_batch" in answer
    content = secrets.token_bytes(300_000)
    async with http.post(
        raw(base, "/_matrix/media/v3/upload?filename=a.bin"),
        data=content,
        headers={**account.headers, "Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        uri = (await resp.json())["content_uri"]
    server, media_id = uri.removeprefix("mxc://").split("/")
    async with http.get(
        raw(base, f"/_matrix/client/v1/media/download/{server}/{media_id}"), headers=account.headers
    ) as resp:
        assert resp.status == 200 and await resp.read() == content
    status, answer = await call(http, base, "GET", "/_matrix/client/versions", account, None)
    assert status == 200 and "v1.1" in answer["versions"]


@pytest.fixture
async def gateway_to_synapse(make_gateway: MakeGateway, account: Account) -> Gateway:
    return await make_gateway(account.hs.base_url)
