"""Every client request tied to its user: the gateway asks a real Synapse whose token it is.

Both enforcement points that see client requests do it: the built-in proxy and the
forward-auth endpoint (``/v1/authz``, for nginx ``auth_request``), with one lookup and one
cache between them.

An expression rule that names one user refuses that user's requests and nobody else's; the
decision log records the user; a second request with the same token is answered from the
cache (no new whoami); a made-up token is judged without a user (Synapse refuses it); when
the homeserver cannot be asked, ``on_failure`` decides (``decide`` or ``refuse``); the
token never appears in the log.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import aiohttp
import pytest

from devstack.synapse import Synapse
from dmz_api.gateway.config import UserLookupConfig
from dmz_api.gateway.enforce.users import LookupFailed, UserLookup, access_token
from dmz_api.metrics import Metrics

from .conftest import MakeGateway

pytestmark = pytest.mark.slow

PROFILE = "/_matrix/client/v3/profile/{user}"


def lookups(gateway: Any, result: str) -> float:
    users = gateway.proxy.users
    counter = {"cached": users._hits, "asked": users._asked, "failed": users._failed}[result]
    return float(counter._value.get())


async def test_rules_and_log_see_the_user(
    make_gateway: MakeGateway,
    dmz_synapse: Synapse,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    alice_local, bob_local = f"alice{secrets.token_hex(3)}", f"bob{secrets.token_hex(3)}"
    alice = dmz_synapse.register_user(alice_local, secrets.token_urlsafe(12))
    bob = dmz_synapse.register_user(bob_local, secrets.token_urlsafe(12))
    alice_id = dmz_synapse.user_id(alice_local)
    gateway = await make_gateway(
        dmz_synapse.base_url, user_lookup={"enabled": True, "cache_ttl": 600}
    )
    await gateway.add_rule(
        {
            "id": "no-alice",
            "kind": "expr",
            "params": {"expression": f'request.user == "{alice_id}"'},
        }
    )
    path = PROFILE.format(user=alice_id)

    async def get(token: str) -> tuple[int, Any]:
        async with http.get(
            gateway.url + path, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    status, body = await get(alice)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert "no-alice" in body["error"]
    asked = lookups(gateway, "asked")
    status, _ = await get(alice)  # the same token again: from the cache
    assert status == 403
    assert lookups(gateway, "asked") == asked and lookups(gateway, "cached") >= 1
    status, body = await get(bob)
    assert status == 200, body
    status, body = await get("made-up-" + secrets.token_hex(8))
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")  # Synapse's own answer

    rows = await gateway.decisions(4)
    users = {(row["rule"], row["user"]) for row in rows}
    assert ("no-alice", alice_id) in users
    assert (None, dmz_synapse.user_id(bob_local)) in users
    assert (None, None) in users  # the made-up token: judged without a user
    for secret in (alice, bob):
        assert secret not in caplog.text


async def test_homeserver_cannot_say(
    make_gateway: MakeGateway, http: aiohttp.ClientSession
) -> None:
    # Nothing listens on port 9 (discard) on loopback: every whoami fails at once.
    decide = await make_gateway("http://127.0.0.1:9", user_lookup={"enabled": True})
    await decide.add_rule(
        {"id": "nobody", "kind": "expr", "params": {"expression": "request.user == null"}}
    )
    headers = {"Authorization": "Bearer whatever"}
    async with http.get(decide.url + "/_matrix/client/v3/sync", headers=headers) as resp:
        # Judged without a user (the rule refuses requests without one), not 503.
        assert resp.status == 403 and "nobody" in (await resp.json())["error"]
    assert lookups(decide, "failed") == 1

    refuse = await make_gateway(
        "http://127.0.0.1:9", user_lookup={"enabled": True, "on_failure": "refuse"}
    )
    async with http.get(refuse.url + "/_matrix/client/v3/sync", headers=headers) as resp:
        assert resp.status == 503
        assert (await resp.json())["errcode"] == "M_UNKNOWN"
    # No token, no lookup, no refusal for it: judged without a user (both gateways share
    # one database, so the rule "nobody" applies here too).
    async with http.get(refuse.url + "/_matrix/client/versions") as resp:
        assert resp.status == 403 and "nobody" in (await resp.json())["error"]
    assert lookups(refuse, "failed") == 1


async def test_forward_auth_sees_the_user_too(
    make_gateway: MakeGateway, dmz_synapse: Synapse, http: aiohttp.ClientSession
) -> None:
    alice_local, bob_local = f"alice{secrets.token_hex(3)}", f"bob{secrets.token_hex(3)}"
    alice = dmz_synapse.register_user(alice_local, secrets.token_urlsafe(12))
    bob = dmz_synapse.register_user(bob_local, secrets.token_urlsafe(12))
    alice_id = dmz_synapse.user_id(alice_local)
    gateway = await make_gateway(dmz_synapse.base_url, user_lookup={"enabled": True})
    await gateway.add_rule(
        {
            "id": "no-alice",
            "kind": "expr",
            "params": {"expression": f'request.user == "{alice_id}"'},
        }
    )
    path = PROFILE.format(user=alice_id)

    async def ask(headers: dict[str, str], uri: str = path) -> tuple[int, Any]:
        headers = {"X-Original-Method": "GET", "X-Original-URI": uri, **headers}
        resp = await gateway.admin.get("/v1/authz", headers=headers)
        return resp.status, await resp.json()

    status, body = await ask({"Authorization": f"Bearer {alice}"})
    assert status == 403 and "no-alice" in body["error"], body
    # The token in the original URI, as Synapse accepts it, is looked up just the same.
    assert (await ask({}, f"{path}?access_token={alice}"))[0] == 403
    assert (await ask({"Authorization": f"Bearer {bob}"}))[0] == 200
    assert (await ask({}))[0] == 200  # no token: judged without a user
    asked = lookups(gateway, "asked")
    # The proxy shares the lookup and its cache: alice's token is not asked about again.
    async with http.get(gateway.url + path, headers={"Authorization": f"Bearer {alice}"}) as r:
        assert r.status == 403
    assert lookups(gateway, "asked") == asked == 2
    rows = await gateway.decisions(5)
    authz = {(row["rule"], row["user"]) for row in rows if row["source"] == "authz"}
    assert authz == {
        ("no-alice", alice_id),
        (None, dmz_synapse.user_id(bob_local)),
        (None, None),
    }

    refuse = await make_gateway(
        "http://127.0.0.1:9", user_lookup={"enabled": True, "on_failure": "refuse"}
    )
    headers = {
        "X-Original-Method": "GET",
        "X-Original-URI": "/_matrix/client/v3/sync",
        "Authorization": "Bearer whatever",
    }
    resp = await refuse.admin.get("/v1/authz", headers=headers)
    assert resp.status == 503 and (await resp.json())["errcode"] == "M_UNKNOWN"
    assert "cannot tell whose access token" in resp.headers["X-Authz-Reason"]


def test_access_token_sources() -> None:
    assert access_token(["Bearer abc"], "/x") == "abc"
    assert access_token(["bearer  abc "], "/x") == "abc"
    assert access_token([], "/x?a=1&access_token=q%2Bt") == "q+t"
    assert access_token(['X-Matrix origin="a"'], "/x") is None
    assert access_token([], "/x") is None


async def test_cache_is_bounded_and_ages(dmz_synapse: Synapse) -> None:
    now = [0.0]
    lookup = UserLookup(
        dmz_synapse.base_url,
        UserLookupConfig(enabled=True, cache_size=2, cache_ttl=10),
        Metrics(),
        clock=lambda: now[0],
    )
    await lookup.start()
    try:
        tokens = []
        for _ in range(3):
            local = f"c{secrets.token_hex(3)}"
            tokens.append(dmz_synapse.register_user(local, secrets.token_urlsafe(12)))
            assert await lookup.user_for(tokens[-1]) == dmz_synapse.user_id(local)
        assert len(lookup._cache) == 2
        assert lookup.cached(tokens[0]) == (False, None)  # the oldest was dropped
        assert lookup.cached(tokens[2])[0]
        now[0] = 10.0
        assert lookup.cached(tokens[2]) == (False, None)  # aged out
        assert all(t.encode() not in key for key in lookup._cache for t in tokens)
    finally:
        await lookup.stop()
    with pytest.raises(LookupFailed):
        await lookup.user_for("x")  # stopped: cannot ask
