"""The compliance ledger through the proxy to a real Synapse: ciphertext, key sharing, key
publishing, retention and erasure are refused; deactivation without erasure still works."""

from __future__ import annotations

import secrets
from urllib.parse import quote

import aiohttp
import pytest

from devstack.synapse import Synapse

from .conftest import Gateway, MakeGateway
from .test_synapse import Account, call

pytestmark = pytest.mark.slow

MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "session_id": "s"}


@pytest.fixture
async def ledger(make_gateway: MakeGateway, dmz_synapse: Synapse) -> Gateway:
    gateway = await make_gateway(dmz_synapse.base_url)
    await gateway.compliance_ledger()
    return gateway


def new_account(hs: Synapse) -> tuple[Account, str, str]:
    localpart = f"ledger{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    return Account(hs, hs.register_user(localpart, password)), hs.user_id(localpart), password


async def test_ciphertext_and_key_sharing_are_refused(
    ledger: Gateway, dmz_synapse: Synapse, http: aiohttp.ClientSession
) -> None:
    account, _, _ = new_account(dmz_synapse)
    base = ledger.url
    status, body = await call(http, base, "POST", "/_matrix/client/v3/createRoom", account, {})
    assert status == 200, body
    room = quote(body["room_id"], safe="")
    refused = [
        ("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/t1", MEGOLM),
        ("PUT", f"/_matrix/client/v3/rooms/{room}/state/m.room.retention/", {"max_lifetime": 1}),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.room_key/t2", {"messages": {}}),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/t3", {"messages": {}}),
        ("POST", "/_matrix/client/v3/keys/upload", {"one_time_keys": {"signed_curve25519:A": {}}}),
        ("POST", "/_matrix/client/v3/keys/claim", {"one_time_keys": {}}),
        ("POST", "/_matrix/client/v3/room_keys/version", {"algorithm": "m.x", "auth_data": {}}),
    ]
    for method, path, payload in refused:
        status, body = await call(http, base, method, path, account, payload)
        assert status == 403, (path, body)
        assert "compliance-ledger" in body["error"]
    status, body = await call(
        http, base, "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b", account, None
    )
    assert status == 200
    assert {e["type"] for e in body["chunk"]} & {"m.room.encrypted", "m.room.retention"} == set()
    # Reads a client makes at start-up still work.
    status, body = await call(
        http, base, "POST", "/_matrix/client/v3/keys/query", account, {"device_keys": {}}
    )
    assert status == 200, body


async def test_deactivation_without_erasure_works_and_erasure_is_refused(
    ledger: Gateway, dmz_synapse: Synapse, http: aiohttp.ClientSession
) -> None:
    account, user_id, password = new_account(dmz_synapse)
    base = ledger.url
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    path = "/_matrix/client/v3/account/deactivate"
    status, body = await call(http, base, "POST", path, account, {"erase": True, "auth": auth})
    assert status == 403 and "account.erase" in body["error"]
    status, body = await call(http, base, "GET", "/_matrix/client/v3/account/whoami", account, None)
    assert status == 200 and body["user_id"] == user_id

    status, body = await call(http, base, "POST", path, account, {"erase": False, "auth": auth})
    assert status == 200, body
    status, body = await call(http, base, "GET", "/_matrix/client/v3/account/whoami", account, None)
    assert status == 401
    rows = await ledger.decisions(3)
    [erase] = [r for r in rows if r["outcome"] == "block"]
    assert (erase["actions"], erase["rule"]) == ("account.erase", "compliance-ledger")
