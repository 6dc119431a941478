"""The compliance ledger at the proxy: ciphertext, key endpoints, erasure, redact-on-ban,
and federation transactions judged event by event (docs/rules.md, sections 5 and 7.1)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from dmz_api.gateway.enforce.federation import NOT_DELIVERED, reference_event_id

from .conftest import Gateway, Upstream, raw, x_matrix

PARTNER = "hs1.partner.example"
ROOM = "!room:corp.example"
FED = {"Authorization": x_matrix(PARTNER), "Content-Type": "application/json"}


def pdu(event_type: str, n: int, **content: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "room_id": ROOM,
        "sender": f"@p:{PARTNER}",
        "origin_server_ts": 1_700_000_000_000 + n,
        "depth": n,
        "prev_events": [],
        "auth_events": [],
        "content": content or {"body": f"m{n}", "msgtype": "m.text"},
        "hashes": {"sha256": "x"},
        "signatures": {PARTNER: {"ed25519:a": "sig"}},
    }


def to_device(message_type: str) -> dict[str, Any]:
    return {
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": f"@p:{PARTNER}",
            "type": message_type,
            "message_id": "m1",
            "messages": {"@a:corp.example": {"DEV": {"ciphertext": "..."}}},
        },
    }


async def put_txn(
    http: aiohttp.ClientSession, gateway: Gateway, body: bytes, txn: str = "t1"
) -> tuple[int, Any]:
    url = raw(gateway.url, f"/_matrix/federation/v1/send/{txn}")
    async with http.put(url, data=body, headers=FED) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.encrypted/t1", {"ciphertext": "x"}),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.room_key/t1", {"messages": {}}),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/t2", {"messages": {}}),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.room_key_request/t3", {"messages": {}}),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.forwarded_room_key/t4", {"messages": {}}),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/state/m.room.retention/", {"max_lifetime": 1}),
        ("POST", "/_matrix/client/v3/keys/upload", {"one_time_keys": {}}),
        ("POST", "/_matrix/client/v3/keys/claim", {"one_time_keys": {}}),
        ("POST", "/_matrix/client/v3/keys/device_signing/upload", {}),
        ("POST", "/_matrix/client/v3/keys/signatures/upload", {}),
        ("PUT", "/_matrix/client/v3/room_keys/keys?version=1", {"rooms": {}}),
        ("POST", "/_matrix/client/v3/room_keys/version", {"algorithm": "x"}),
        ("PUT", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device", {}),
        ("POST", "/_matrix/client/v3/account/deactivate", {"erase": True}),
        (
            "POST",
            f"/_matrix/client/v3/rooms/{ROOM}/ban",
            {"user_id": "@g:corp.example", "org.matrix.msc4293.redact_events": True},
        ),
        (
            "POST",
            f"/_matrix/client/v3/rooms/{ROOM}/kick",
            {"user_id": "@g:corp.example", "org.matrix.msc4293.redact_events": True},
        ),
    ],
)
async def test_the_ledger_refuses_what_hides_or_alters_history(
    gateway: Gateway,
    upstream: Upstream,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    await gateway.compliance_ledger()
    async with http.request(method, raw(gateway.url, path), json=body) as resp:
        assert resp.status == 403
        assert (await resp.json())["errcode"] == "M_FORBIDDEN"
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_matrix/client/v3/account/deactivate", {"erase": False}),
        ("POST", "/_matrix/client/v3/account/deactivate", {"auth": {"type": "m.login.dummy"}}),
        ("POST", "/_matrix/client/v3/keys/query", {"device_keys": {}}),
        ("POST", f"/_matrix/client/v3/rooms/{ROOM}/ban", {"user_id": "@g:corp.example"}),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/t9", {"body": "hi"}),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.key.verification.request/t5", {}),
    ],
)
async def test_the_ledger_lets_the_rest_through(
    gateway: Gateway,
    upstream: Upstream,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    await gateway.compliance_ledger()
    data = json.dumps(body).encode()
    async with http.request(method, raw(gateway.url, path), data=data) as resp:
        assert resp.status == 200
    [seen] = upstream.seen
    assert seen.body == data


async def test_a_deactivation_body_that_cannot_be_read_is_refused(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    url = raw(gateway.url, "/_matrix/client/v3/account/deactivate")
    async with http.post(url, data=b"erase") as resp:
        assert resp.status == 403
        assert "not a JSON object" in (await resp.json())["error"]
    assert upstream.seen == []


async def test_a_clean_transaction_is_forwarded_untouched(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    await gateway.compliance_ledger()
    body = json.dumps(
        {"origin": PARTNER, "pdus": [pdu("m.room.message", 1)], "edus": [to_device("m.x")]}
    ).encode()
    status, _ = await put_txn(http, gateway, body)
    assert status == 200
    [seen] = upstream.seen
    assert seen.body == body
    rows = await gateway.decisions(3)
    [message] = [r for r in rows if r["event_type"] == "m.room.message"]
    assert message["outcome"] == "allow"
    assert message["event_id"] == reference_event_id(pdu("m.room.message", 1))


async def test_a_transaction_with_a_refused_event_is_answered_here(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    await gateway.compliance_ledger()
    events = [
        pdu("m.room.message", 1),
        pdu("m.room.encryption", 2, algorithm="m.megolm.v1.aes-sha2"),
        pdu("m.room.redaction", 3),
    ]
    ids = [reference_event_id(e) for e in events]
    body = json.dumps({"origin": PARTNER, "pdus": events, "edus": []}).encode()
    status, answer = await put_txn(http, gateway, body)
    assert status == 200
    assert upstream.seen == []
    assert answer["pdus"][ids[0]] == {"error": NOT_DELIVERED}
    assert "m.room.encryption is blocked" in answer["pdus"][ids[1]]["error"]
    assert "m.room.redaction is blocked" in answer["pdus"][ids[2]]["error"]
    rows = await gateway.decisions(4)
    refused = {r["event_id"]: r for r in rows if r["outcome"] == "block"}
    assert set(refused) == {ids[1], ids[2]}
    for row in refused.values():
        assert (row["room"], row["origin"], row["rule"]) == (ROOM, PARTNER, "compliance-ledger")


@pytest.mark.parametrize("message_type", ["m.room_key", "m.room.encrypted", "m.secret.send"])
async def test_a_transaction_with_key_sharing_to_device_messages_is_not_forwarded(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession, message_type: str
) -> None:
    await gateway.compliance_ledger()
    body = json.dumps({"origin": PARTNER, "pdus": [], "edus": [to_device(message_type)]})
    status, answer = await put_txn(http, gateway, body.encode())
    assert (status, answer) == (200, {"pdus": {}})
    assert upstream.seen == []


async def test_a_ban_that_redacts_over_federation_is_refused(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    await gateway.compliance_ledger()
    ban = pdu("m.room.member", 1, membership="ban", **{"org.matrix.msc4293.redact_events": True})
    ban["state_key"] = "@g:corp.example"
    body = json.dumps({"origin": PARTNER, "pdus": [ban]}).encode()
    status, answer = await put_txn(http, gateway, body)
    assert status == 200
    assert "membership.redact_events is blocked" in answer["pdus"][reference_event_id(ban)]["error"]
    assert upstream.seen == []


@pytest.mark.parametrize(
    "body",
    [
        {"pdus": [pdu("m.room.message", n) for n in range(51)]},
        {"pdus": [], "edus": [to_device("m.x")] * 101},
        {"pdus": {"not": "a list"}},
        [],
    ],
)
async def test_a_transaction_beyond_the_spec_is_refused_as_malformed(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession, body: Any
) -> None:
    status, answer = await put_txn(http, gateway, json.dumps(body).encode())
    assert status == 403 and answer["errcode"] == "M_FORBIDDEN"
    assert upstream.seen == []


async def test_a_transaction_larger_than_the_limit_is_refused(
    make_gateway: Any, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(upstream.url, max_transaction_body=64 * 1024)
    body = json.dumps({"pdus": [pdu("m.room.message", 1, body="x" * 70_000)]}).encode()
    status, answer = await put_txn(http, gateway, body)
    assert status == 403 and "larger than the gateway inspects" in answer["error"]
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("path", "wrap"),
    [
        ("/_matrix/federation/v2/send_join/{room}/{event}", False),
        ("/_matrix/federation/v2/invite/{room}/{event}", True),
        ("/_matrix/federation/v1/send_leave/{room}/{event}", False),
    ],
)
async def test_the_event_of_a_membership_request_is_judged(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession, path: str, wrap: bool
) -> None:
    await gateway.compliance_ledger()
    leave = pdu("m.room.member", 1, membership="leave", **{"redact_events": True})
    leave["state_key"] = "@g:corp.example"
    url = raw(gateway.url, path.format(room=ROOM, event="$ev1"))
    data = {"event": leave, "room_version": "10"} if wrap else leave
    async with http.put(url, json=data, headers=FED) as resp:
        assert resp.status == 403
    assert upstream.seen == []
    rows = await gateway.decisions(1)
    [row] = [r for r in rows if r["outcome"] == "block"]
    assert (row["event_id"], row["actions"]) == ("$ev1", "membership.redact_events")
    plain = pdu("m.room.member", 2, membership="join")
    plain["state_key"] = f"@p:{PARTNER}"
    data = {"event": plain, "room_version": "10"} if wrap else plain
    async with http.put(url, json=data, headers=FED) as resp:
        assert resp.status == 200
    assert len(upstream.seen) == 1
