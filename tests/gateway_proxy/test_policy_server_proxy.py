"""The proxy answers the policy server's paths itself: nothing of them reaches the homeserver."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from dmz_api.gateway.signing.keys import KEY_ID, load_or_create

from .conftest import SERVER_NAME, MakeGateway, Upstream, raw, x_matrix

SIGN = "/_matrix/policy/v1/sign"
EVENT = {
    "type": "m.room.message",
    "room_id": "!r:corp.example",
    "sender": "@bob:partner.example",
    "content": {"body": "hi"},
    "depth": 1,
    "prev_events": [],
    "auth_events": [],
    "origin_server_ts": 1,
    "hashes": {"sha256": "aGFzaA"},
    "signatures": {},
}


async def test_sign_and_well_known_are_answered_not_forwarded(
    make_gateway: MakeGateway, upstream: Upstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key_file = tmp_path / "policy.key"
    gateway = await make_gateway(
        upstream.url, policy_server={"key_file": str(key_file), "verify_origin": False}
    )
    headers = {"Authorization": x_matrix("partner.example")}
    async with http.post(raw(gateway.url, SIGN), json=EVENT, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert list((await resp.json())[SERVER_NAME]) == [KEY_ID]
    async with http.get(raw(gateway.url, "/.well-known/matrix/policy_server")) as resp:
        assert resp.status == 200
        assert (await resp.json())["public_keys"]["ed25519"] == load_or_create(key_file).public_key
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    async with http.get(raw(gateway.url, SIGN)) as resp:
        assert resp.status == 405
    big = b'{"a": "' + b"x" * 200_000 + b'"}'
    async with http.post(raw(gateway.url, SIGN), data=big, headers=headers) as resp:
        assert resp.status == 413
        assert (await resp.json())["errcode"] == "M_TOO_LARGE"
    assert upstream.seen == []
    # Other paths are still forwarded.
    async with http.get(raw(gateway.url, "/.well-known/matrix/server")) as resp:
        assert resp.status == 200
    assert [s.raw_path for s in upstream.seen] == ["/.well-known/matrix/server"]


async def test_the_asking_servers_keys_are_looked_up_on_the_upstream(
    make_gateway: MakeGateway, upstream: Upstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gateway = await make_gateway(
        upstream.url, policy_server={"key_file": str(tmp_path / "policy.key")}
    )
    headers = {"Authorization": x_matrix("partner.example")}
    async with http.post(raw(gateway.url, SIGN), json=EVENT, headers=headers) as resp:
        # The stand-in upstream knows no keys: the signature cannot be verified.
        assert resp.status == 401
        body = await resp.json()
        assert body["errcode"] == "M_UNAUTHORIZED" and "partner.example" in body["error"]
    assert [s.raw_path for s in upstream.seen] == ["/_matrix/key/v2/query/partner.example"]
    assert await gateway.decisions(0) == []
