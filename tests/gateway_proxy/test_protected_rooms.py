"""The proxy's guard of protected rooms: our users' state writes that would loosen a
protected room are refused before the homeserver sees them; writes that keep it pass."""

from __future__ import annotations

import json
from urllib.parse import quote

import aiohttp

from .conftest import ADMIN, Gateway, Upstream, raw

ROOM = "!ledger:corp.example"
OTHER = "!open:corp.example"
STATE = "/_matrix/client/v3/rooms/{}/state/{}"
LEVELS = {
    "users": {"@bastion:corp.example": 100, "@bob:partner.example": 0},
    "events": {
        "m.room.encryption": 100,
        "m.room.encrypted": 100,
        "m.room.redaction": 100,
        "m.room.power_levels": 100,
        "m.room.server_acl": 100,
        "m.room.policy": 100,
        "m.room.tombstone": 100,
    },
    "redact": 100,
}


async def test_loosening_writes_are_refused_and_recorded(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    resp = await gateway.admin.put(f"/v1/rooms/{quote(ROOM)}", json={}, headers=ADMIN)
    assert resp.status == 201
    lowered = {**LEVELS, "events": {**LEVELS["events"], "m.room.encryption": 0}}
    headers = {"Authorization": "Bearer user-token"}
    for method, path in (
        ("PUT", STATE.format(ROOM, "m.room.power_levels")),
        ("PUT", STATE.format(quote(ROOM), "m.room.power_levels/")),
        ("POST", STATE.format(ROOM, "m%2Eroom%2Epower_levels")),
    ):
        async with http.request(
            method, raw(gateway.url, path), json=lowered, headers=headers
        ) as resp:
            assert resp.status == 403
            assert await resp.json() == {
                "errcode": "M_FORBIDDEN",
                "error": f"Refused by the gateway: {ROOM} is a protected room and "
                "m.room.encryption can be sent at level 0, below the top level 100",
            }
    acl = {"allow": ["*"], "deny": ["corp.example"], "allow_ip_literals": False}
    async with http.put(
        raw(gateway.url, STATE.format(ROOM, "m.room.server_acl")), json=acl, headers=headers
    ) as resp:
        assert resp.status == 403
        assert "ACL deny differs from the rules (-corp.example)" in (await resp.json())["error"]
    async with http.put(
        raw(gateway.url, STATE.format(ROOM, "m.room.server_acl")), data=b"[1]", headers=headers
    ) as resp:
        assert resp.status == 403
        assert "the m.room.server_acl content cannot be inspected" in (await resp.json())["error"]
    assert upstream.seen == []

    # What keeps the protection passes, byte for byte; so does any write elsewhere.
    promoted = {**LEVELS, "users": {**LEVELS["users"], "@carol:corp.example": 50}}
    writes = [
        (STATE.format(ROOM, "m.room.power_levels"), promoted),
        (STATE.format(ROOM, "m.room.server_acl"), {**acl, "deny": []}),
        (STATE.format(ROOM, "m.room.topic"), {"topic": "ledger"}),
        (STATE.format(ROOM, "m.room.power_levels/other-key"), {}),
        (STATE.format(OTHER, "m.room.power_levels"), lowered),
    ]
    for path, content in writes:
        body = json.dumps(content).encode()
        async with http.put(raw(gateway.url, path), data=body, headers=headers) as resp:
            assert resp.status == 200, (path, await resp.text())
    assert [(s.raw_path, json.loads(s.body)) for s in upstream.seen] == writes

    rows = await gateway.decisions(3)
    refused = [r for r in rows if r["rule"] == "protected-room"]
    assert len(refused) == 5
    assert {(r["outcome"], r["mode"], r["room"]) for r in refused} == {("block", "enforce", ROOM)}

    # Unprotected, the room is no longer guarded.
    await gateway.admin.delete(f"/v1/rooms/{quote(ROOM)}", headers=ADMIN)
    async with http.put(
        raw(gateway.url, STATE.format(ROOM, "m.room.power_levels")), json=lowered, headers=headers
    ) as resp:
        assert resp.status == 200
