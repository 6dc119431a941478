"""Protected rooms on the gateway: the desired state from the rules, the differences, the
admin routes through the real application (SQLite), and the contract of the stub route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from dmz_api.gateway import GATEWAY
from dmz_api.gateway.policy.model import Mode
from dmz_api.gateway.protection import (
    PolicyServerRef,
    Protection,
    check_state,
    desired,
    judge_remote_event,
    judge_write,
    server_acl,
)

from .conftest import ADMIN, READER, GatewayClient, make_rule

ROOM = "!ledger:corp.example"
PATH = f"/v1/rooms/{quote(ROOM)}"
OWN = ("corp.example",)
ALL_ON = Protection(ROOM, True, True, True, None, 0, 0)
BOT = "@bastion:corp.example"
KEY = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ"


def protected_levels(**overrides: Any) -> dict[str, Any]:
    content: dict[str, Any] = {
        "users": {BOT: 100, "@partner:partner.example": 0},
        "users_default": 0,
        "events": {
            "m.room.encryption": 100,
            "m.room.encrypted": 100,
            "m.room.redaction": 100,
            "m.room.power_levels": 100,
            "m.room.server_acl": 100,
            "m.room.policy": 100,
            "m.room.tombstone": 100,
            "m.room.message": 0,
        },
        "redact": 100,
    }
    content.update(overrides)
    return content


# ---- the desired ACL ------------------------------------------------------------------


def test_acl_follows_enforced_rules_only_and_never_locks_us_out() -> None:
    rules = [
        make_rule("partners", "server_allow", {"servers": ["partner.example", "*.org:8448"]}),
        make_rule("later", "server_allow", {"servers": ["audit.example"]}, mode=Mode.AUDIT),
        make_rule("off", "server_allow", {"servers": ["off.example"]}, enabled=False),
        make_rule("evil", "server_block", {"servers": ["evil.example", "corp.*"]}),
        make_rule("maybe", "server_block", {"servers": ["maybe.example"]}, mode=Mode.AUDIT),
    ]
    acl, notes = server_acl(rules, ["corp.example", "localhost:8008"])
    assert acl == {
        "allow": ["corp.example", "localhost", "partner.example", "*.org"],
        "deny": ["evil.example"],
        "allow_ip_literals": False,
    }
    assert notes == [
        "rule partners: *.org:8448 is *.org in the ACL (an ACL names hosts, not ports)",
        "deny corp.* left out: it would lock out our own server corp.example",
    ]


def test_without_an_enforced_allow_rule_every_server_is_allowed() -> None:
    rules = [make_rule("later", "server_allow", {"servers": ["p.example"]}, mode=Mode.AUDIT)]
    acl, notes = server_acl(rules, OWN)
    assert acl == {"allow": ["*"], "deny": [], "allow_ip_literals": False} and notes == []


def test_desired_lists_the_top_level_events_by_protection() -> None:
    ledger = desired(ALL_ON, [], 3, OWN, PolicyServerRef("corp.example", KEY))
    assert ledger.top_level_events == (
        "m.room.encryption",
        "m.room.encrypted",
        "m.room.redaction",
        "m.room.power_levels",
        "m.room.server_acl",
        "m.room.policy",
        "m.room.tombstone",
    )
    assert ledger.top_level_fields == ("redact",)
    assert ledger.policy == {"via": "corp.example", "public_keys": {"ed25519": KEY}}
    acl_only = desired(Protection(ROOM, False, True, True, None, 0, 0), [], 3, OWN, None)
    assert acl_only.top_level_events == (
        "m.room.power_levels",
        "m.room.server_acl",
        "m.room.policy",
        "m.room.tombstone",
    )
    assert acl_only.top_level_fields == () and acl_only.policy is None
    assert acl_only.notes == ("no policy server configured: m.room.policy is not set",)


# ---- differences ----------------------------------------------------------------------


def test_a_room_that_meets_its_protection_is_in_order() -> None:
    want = desired(ALL_ON, [], 1, OWN, PolicyServerRef("corp.example", KEY))
    state = {
        "m.room.power_levels": protected_levels(),
        "m.room.server_acl": {"allow": ["*"], "deny": [], "allow_ip_literals": False},
        "m.room.policy": {"via": "corp.example", "public_keys": {"ed25519": KEY}},
    }
    assert check_state(want, state, OWN).in_order


def test_differences_name_what_is_loose() -> None:
    want = desired(
        ALL_ON, [make_rule("b", "server_block", {"servers": ["evil.example"]})], 1, OWN, None
    )
    levels = protected_levels(redact=50)
    del levels["events"]["m.room.encrypted"]  # falls back to events_default 0
    levels["events"]["m.room.encryption"] = 50
    levels["users"]["@boss:partner.example"] = 100
    state = {
        "m.room.power_levels": levels,
        "m.room.server_acl": {"allow": ["*"], "deny": ["other.example"]},
    }
    found = check_state(want, state, OWN).differences
    assert [(d.field, d.fixable) for d in found] == [
        ("events.m.room.encryption", True),
        ("events.m.room.encrypted", True),
        ("redact", True),
        ("users.@boss:partner.example", False),
        ("deny", True),
        ("allow_ip_literals", True),
    ]
    assert found[0].text == "m.room.encryption can be sent at level 50, below the top level 100"
    assert found[3].text == (
        "@boss:partner.example of another server holds the top level 100; only they can lower "
        "themselves"
    )
    assert found[4].text == "ACL deny differs from the rules (+evil.example, -other.example)"
    assert [d.text for d in check_state(want, {}, OWN).differences] == [
        "the room has no power levels",
        "the room has no server ACL",
    ]


def test_a_write_is_judged_on_what_the_writer_controls() -> None:
    want = desired(ALL_ON, [], 1, OWN, None)
    lowered = protected_levels()
    lowered["events"] = {**lowered["events"], "m.room.encryption": 0}
    assert judge_write(want, "m.room.power_levels", lowered, OWN) == (
        "m.room.encryption can be sent at level 0, below the top level 100"
    )
    # A partner already at the top is reported by a check, not blamed on the writer.
    partner_top = protected_levels(users={BOT: 100, "@boss:partner.example": 100})
    assert judge_write(want, "m.room.power_levels", partner_top, OWN) is None
    # Promoting a colleague to moderator loosens nothing.
    moderator = protected_levels(users={BOT: 100, "@carol:corp.example": 50})
    assert judge_write(want, "m.room.power_levels", moderator, OWN) is None
    acl = {"allow": ["*"], "deny": [], "allow_ip_literals": False}
    assert judge_write(want, "m.room.server_acl", acl, OWN) is None
    assert judge_write(want, "m.room.server_acl", {**acl, "allow_ip_literals": True}, OWN) == (
        "the ACL admits servers named by IP address"
    )
    # No policy server configured: m.room.policy is not judged.
    assert judge_write(want, "m.room.policy", {"via": "x.example"}, OWN) is None


def test_another_servers_event_is_judged_by_the_same_judge() -> None:
    """What the policy server refuses of a partner who holds the top level."""
    want = desired(ALL_ON, [], 1, OWN, PolicyServerRef("corp.example", KEY))
    lowered = protected_levels()
    lowered["events"] = {**lowered["events"], "m.room.server_acl": 0}
    assert judge_remote_event(want, "m.room.power_levels", "", lowered, OWN) == judge_write(
        want, "m.room.power_levels", lowered, OWN
    )
    assert judge_remote_event(want, "m.room.power_levels", "", lowered, OWN) is not None
    # Lowering themselves (or anything that keeps the protection) is signed.
    partner_top = protected_levels(users={BOT: 100, "@boss:partner.example": 100})
    assert judge_remote_event(want, "m.room.power_levels", "", partner_top, OWN) is None
    assert judge_remote_event(want, "m.room.power_levels", "", protected_levels(), OWN) is None
    # State with another state key is not the room's power levels or ACL.
    assert judge_remote_event(want, "m.room.server_acl", "x", {"allow": []}, OWN) is None
    acl = {"allow": ["*"], "deny": ["corp.example"], "allow_ip_literals": False}
    assert judge_remote_event(want, "m.room.server_acl", "", acl, OWN) == (
        "ACL deny differs from the rules (-corp.example)"
    )
    # The ledger events and the tombstone are reserved to our own top level.
    for event_type, state_key in [
        ("m.room.encryption", ""),
        ("m.room.encrypted", None),
        ("m.room.redaction", None),
        ("m.room.tombstone", ""),
    ]:
        why = judge_remote_event(want, event_type, state_key, {}, OWN)
        assert why == f"{event_type} is reserved to our own top level, not another server's user"
    for event_type in ("m.room.message", "m.reaction", "m.room.name", "m.room.member"):
        assert judge_remote_event(want, event_type, None, {"body": "x"}, OWN) is None
    # Without --ledger, encryption and redactions stay with the power levels alone.
    acl_only = desired(Protection(ROOM, False, True, False, None, 0, 0), [], 1, OWN, None)
    assert judge_remote_event(acl_only, "m.room.redaction", None, {}, OWN) is None
    assert judge_remote_event(acl_only, "m.room.tombstone", "", {}, OWN) is not None


# ---- routes ---------------------------------------------------------------------------


async def test_protect_list_desired_check_unprotect(client: GatewayClient) -> None:
    resp = await client.get("/v1/rooms", headers=ADMIN)
    assert resp.status == 200 and await resp.json() == {"rooms": []}
    resp = await client.put(PATH, json={"acl": True, "ledger": True}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    room = (await resp.json())["room"]
    # No policy server configured: a default true is stored as false.
    assert (room["room_id"], room["ledger"], room["acl"], room["policy_server"]) == (
        ROOM,
        True,
        True,
        False,
    )
    assert room["author"] == "@sec:corp.example"
    resp = await client.put(PATH, json={"ledger": False}, headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["room"]["ledger"] is False

    await client.post(
        "/v1/rules",
        json={"id": "evil", "kind": "server_block", "params": {"servers": ["evil.example"]}},
        headers=ADMIN,
    )
    await client.post(
        "/v1/rules",
        json={
            "id": "soon",
            "kind": "server_block",
            "mode": "audit",
            "params": {"servers": ["soon.example"]},
        },
        headers=ADMIN,
    )
    resp = await client.get(f"{PATH}/desired", headers=ADMIN)
    assert resp.status == 200
    want = await resp.json()
    assert want["version"] == 2
    assert want["server_acl"] == {
        "allow": ["*"],
        "deny": ["evil.example"],
        "allow_ip_literals": False,
    }
    assert want["power_levels"]["top_level_fields"] == []

    resp = await client.post(
        f"{PATH}/check",
        json={"state": {"m.room.power_levels": protected_levels(), "m.room.server_acl": None}},
        headers=ADMIN,
    )
    checked = await resp.json()
    assert resp.status == 200 and checked["in_order"] is False
    assert [d["text"] for d in checked["differences"]] == ["the room has no server ACL"]

    resp = await client.delete(PATH, headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["room"]["room_id"] == ROOM
    for method, path in (("DELETE", PATH), ("GET", f"{PATH}/desired")):
        resp = await client.request(method, path, headers=ADMIN)
        assert resp.status == 404
        assert await resp.json() == {
            "errcode": "M_NOT_FOUND",
            "error": f"Room {ROOM} is not protected",
        }


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/v1/rooms/not-a-room", {}, "room_id must be a room ID such as !abc:corp.example"),
        (PATH, {"ledger": "yes"}, "ledger must be true or false"),
        (PATH, {"encrypt": True}, "unknown field 'encrypt' (give ledger, acl, policy_server)"),
        (
            PATH,
            {"ledger": False, "acl": False, "policy_server": False},
            "give at least one of ledger, acl, policy_server",
        ),
        (PATH, {"policy_server": True}, "no policy server configured: policy_server cannot be set"),
    ],
)
async def test_bad_protections_are_refused_and_nothing_is_stored(
    client: GatewayClient, path: str, body: dict[str, Any], error: str
) -> None:
    resp = await client.put(path, json=body, headers=ADMIN)
    assert resp.status == 400
    assert await resp.json() == {"errcode": "M_INVALID_PARAM", "error": error}
    assert await (await client.get("/v1/rooms", headers=ADMIN)).json() == {"rooms": []}


async def test_room_routes_need_the_rules_scope(client: GatewayClient) -> None:
    for method, path in (("GET", "/v1/rooms"), ("PUT", PATH), ("GET", "/v1/policy_server")):
        resp = await client.request(method, path, headers=READER)
        assert resp.status == 403, (method, path)


async def test_policy_server_stub(client: GatewayClient) -> None:
    resp = await client.get("/v1/policy_server", headers=ADMIN)
    assert resp.status == 404
    assert await resp.json() == {"errcode": "M_NOT_FOUND", "error": "no policy server configured"}
    client.app[GATEWAY].rooms.policy_server = PolicyServerRef("corp.example", KEY)
    resp = await client.get("/v1/policy_server", headers=ADMIN)
    assert await resp.json() == {"via": "corp.example", "public_key": KEY}
    resp = await client.put(PATH, json={}, headers=ADMIN)
    assert (await resp.json())["room"]["policy_server"] is True
    want = await (await client.get(f"{PATH}/desired", headers=ADMIN)).json()
    assert want["policy"] == {"via": "corp.example", "public_keys": {"ed25519": KEY}}


async def test_own_servers_come_from_config(make_client: Callable[..., Any]) -> None:
    client: GatewayClient = await make_client(own_servers=["Corp-Dmz.example:8448"])
    assert client.app[GATEWAY].rooms.own_servers == ("corp.example", "corp-dmz.example:8448")
    await client.post(
        "/v1/rules",
        json={"id": "p", "kind": "server_allow", "params": {"servers": ["partner.example"]}},
        headers=ADMIN,
    )
    await client.put(PATH, json={}, headers=ADMIN)
    want = await (await client.get(f"{PATH}/desired", headers=ADMIN)).json()
    assert want["server_acl"]["allow"] == ["corp.example", "corp-dmz.example", "partner.example"]


async def test_replicas_see_protected_rooms_after_a_refresh(
    make_client: Callable[..., Any], tmp_path: Any
) -> None:
    first: GatewayClient = await make_client()
    second: GatewayClient = await make_client()  # the same SQLite file: another replica
    await first.put(PATH, json={}, headers=ADMIN)
    await second.app[GATEWAY].rooms.refresh()
    assert [r.room_id for r in second.app[GATEWAY].rooms.rooms()] == [ROOM]


def test_own_servers_must_be_server_names(tmp_path: Any) -> None:
    from dmz_api.config_reader import ConfigError

    from .conftest import gateway_config

    with pytest.raises(ConfigError, match=r"gateway\.own_servers: 'not a name' is not a server"):
        gateway_config(tmp_path, own_servers=["not a name"])


async def test_acl_leaves_out_rules_outside_their_life_span(client: GatewayClient) -> None:
    resp = await client.put(PATH, json={"acl": True}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    for rule_id, span in (
        ("now", {}),
        ("later", {"not_before": "2100-01-01T00:00:00Z"}),
        ("gone", {"not_before": "2000-01-01T00:00:00Z", "expires_at": "2000-01-02T00:00:00Z"}),
    ):
        made = await client.post(
            "/v1/rules",
            json={
                "id": rule_id,
                "kind": "server_block",
                "params": {"servers": [f"{rule_id}.example"]},
                **span,
            },
            headers=ADMIN,
        )
        assert made.status == 201, await made.text()
    want = await (await client.get(f"{PATH}/desired", headers=ADMIN)).json()
    assert want["server_acl"]["deny"] == ["now.example"]
