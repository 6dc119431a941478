"""``!sbg room``: protected rooms, against the real gateway routes and a fake homeserver.

The homeserver fake keeps room state (``homeserver.state``); the gateway is dmz_api's own
role in-process, so what the bot writes is judged by the gateway's own check.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from mautrix.types import EventID, EventType, RoomID, StateEvent, UserID

from dmz_api.gateway import protection as twin
from plugin.rooms import state as rooms_state
from plugin.rooms.state import merge_power_levels, standing

from .conftest import AUDITOR, BOT, CONTROL, SECURITY, STAFF, Chat, gateway_admin_config
from .fake_gateway import GatewayDouble
from .fakes import FakeHomeserver

SECOND_ADMIN = UserID("@dave:corp.example")
PARTNER = "@bob:partner.example"
LEDGER = RoomID("!ledger:corp.example")
SENSITIVE = (
    "m.room.encryption",
    "m.room.encrypted",
    "m.room.redaction",
    "m.room.power_levels",
    "m.room.server_acl",
    "m.room.policy",
    "m.room.tombstone",
)
DESIRED_LEDGER = {
    "power_levels": {"top_level_events": list(SENSITIVE), "top_level_fields": ["redact"]}
}


def room_levels(**overrides: Any) -> dict[str, Any]:
    """What Synapse's private_chat preset gives a room, with the bot as creator."""
    content: dict[str, Any] = {
        "users": {BOT: 100, SECOND_ADMIN: 100, PARTNER: 0},
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
            "m.reaction": 0,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
    }
    content.update(overrides)
    return content


# ---- the merge (pure) -----------------------------------------------------------------


def test_merge_raises_only_the_sensitive_entries_and_demotes_nobody() -> None:
    current = room_levels(
        events={"m.room.encryption": 50, "m.room.message": 10, "m.reaction": 0}, redact=50
    )
    before = copy.deepcopy(current)
    merge = merge_power_levels(current, BOT, DESIRED_LEDGER)
    assert current == before, "the input is not changed"
    assert merge.content["users"] == current["users"]
    assert merge.content["events"] == {
        "m.room.encryption": 100,
        "m.room.message": 10,
        "m.reaction": 0,
        "m.room.encrypted": 100,
        "m.room.redaction": 100,
        "m.room.power_levels": 100,
        "m.room.server_acl": 100,
        "m.room.policy": 100,
        "m.room.tombstone": 100,
    }
    assert merge.content["redact"] == 100
    assert merge.content["events_default"] == 0 and merge.content["state_default"] == 50
    assert merge.raised == (
        "m.room.encryption 50 → 100",
        "m.room.encrypted 0 → 100",
        "m.room.redaction 0 → 100",
        "m.room.power_levels 50 → 100",
        "m.room.server_acl 50 → 100",
        "m.room.policy 50 → 100",
        "m.room.tombstone 50 → 100",
        "redact 50 → 100",
    )
    again = merge_power_levels(merge.content, BOT, DESIRED_LEDGER)
    assert not again.changed and again.content == merge.content


def test_merge_never_lowers_and_a_partner_at_the_top_keeps_it() -> None:
    current = room_levels(users={BOT: 100, PARTNER: 100}, events={"m.room.encryption": 150})
    merge = merge_power_levels(current, BOT, DESIRED_LEDGER)
    assert merge.content["users"] == {BOT: 100, PARTNER: 100}
    assert merge.content["events"]["m.room.encryption"] == 150
    assert standing(current, BOT).ok
    assert not standing(room_levels(users={BOT: 50, SECOND_ADMIN: 100}), BOT).ok


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"users": {"@a:x": 100, "@b:y": "75"}, "users_default": 10},
        {"events": {"m.room.encrypted": "20"}, "events_default": 5, "state_default": 70},
        {"events": {"m.room.encryption": True}, "state_default": 40, "users_default": "x"},
        {"users": {"@a:x": -5}, "users_default": -10, "redact": "+60"},
    ],
)
def test_the_twins_read_power_levels_alike(content: dict[str, Any]) -> None:
    """plugin/rooms/state.py and dmz_api/gateway/protection.py (the plugin never imports
    dmz_api) agree on levels."""
    assert rooms_state.top_level(content) == twin.top_level(content)
    for event_type in (*SENSITIVE, "m.room.message"):
        assert rooms_state.event_level(content, event_type) == twin.event_level(content, event_type)
    assert rooms_state.level(content.get("redact"), 50) == twin.field_level(content, "redact")


# ---- commands -------------------------------------------------------------------------


@pytest.fixture
def maubot_plugin_config_dict(
    maubot_plugin_config_dict: dict[str, Any], gateway: GatewayDouble, homeserver: FakeHomeserver
) -> dict[str, Any]:
    homeserver.state[(LEDGER, "m.room.power_levels")] = room_levels()
    homeserver.aliases["#ledger:corp.example"] = LEDGER
    return gateway_admin_config(maubot_plugin_config_dict, gateway, homeserver)


async def ask(chat: Chat, body: str, sender: UserID = SECURITY) -> str:
    return await chat.ask(body, sender=sender)


def levels(homeserver: FakeHomeserver) -> dict[str, Any]:
    return homeserver.state[(LEDGER, "m.room.power_levels")]


async def settle(chat: Chat) -> None:
    await chat.plugin.families[2].rooms.idle()  # type: ignore[attr-defined]


async def test_protect_sets_power_levels_and_acl_and_says_so(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver
) -> None:
    reply = await ask(chat, "!sbg room protect #ledger:corp.example")
    assert reply == (
        f"Room `{LEDGER}` is protected (ledger, ACL): power levels m.room.encrypted 0 → 100, "
        "m.room.redaction 0 → 100, m.room.policy 50 → 100, redact 50 → 100; ACL set (allow *; "
        "deny none).\n Note: the gateway has no policy server configured, so m.room.policy is "
        "not set."
    )
    after = levels(homeserver)
    assert after["users"] == room_levels()["users"], "nobody is demoted"
    assert after["events"]["m.reaction"] == 0 and after["events_default"] == 0
    assert homeserver.state[(LEDGER, "m.room.server_acl")] == {
        "allow": ["*"],
        "deny": [],
        "allow_ip_literals": False,
    }
    assert [(t) for _, t, _ in homeserver.state_writes] == [
        "m.room.power_levels",
        "m.room.server_acl",
    ]
    assert [r.room_id for r in gateway.rooms.rooms()] == [LEDGER]
    [entry] = [e for e in await chat.audit() if e.command == "sbg room protect"]
    assert entry.outcome == "ok" and entry.detail.startswith(
        f"protected {LEDGER} (ledger, ACL): power levels m.room.encrypted 0 → 100"
    )
    assert await ask(chat, f"!sbg room check {LEDGER}", AUDITOR) == (
        f"Room `{LEDGER}` is in order: its state meets its protection under ruleset version 0."
    )
    assert await ask(chat, "!sbg room list", AUDITOR) == (
        f"1 protected room:\n\n● `{LEDGER}` — ledger, ACL, by @sec:corp.example"
    )
    # Protecting again changes nothing in the room.
    writes = len(homeserver.state_writes)
    reply = await ask(chat, f"!sbg room protect {LEDGER} --acl")
    assert reply == f"Room `{LEDGER}` is protected (ACL): its state already met the protection."
    assert len(homeserver.state_writes) == writes


async def test_enforced_rule_writes_carry_into_the_acl_audit_rules_do_not(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver
) -> None:
    await ask(chat, f"!sbg room protect {LEDGER} --acl")
    await settle(chat)
    written = len(homeserver.state_writes)
    reply = await ask(chat, "!sbg rule add server_block later.example --audit")
    assert "added in audit mode" in reply
    await settle(chat)
    assert len(homeserver.state_writes) == written, "an audit rule never changes a room"

    reply = await ask(chat, "!sbg rule add server_block evil.example:8448 --yes")
    await settle(chat)
    assert homeserver.state[(LEDGER, "m.room.server_acl")]["deny"] == ["evil.example"]
    notice = chat.last
    assert notice.msgtype.value == "m.notice"
    assert notice.body.startswith(
        f"Room `{LEDGER}` follows the gateway rules changed by "
        "@sec:corp.example.\n I applied them: ACL set "
        "(allow *; deny evil.example)."
    )
    rule_id = reply.split("`")[1]
    await ask(chat, f"!sbg rule disable {rule_id} --yes")
    await settle(chat)
    assert homeserver.state[(LEDGER, "m.room.server_acl")]["deny"] == []
    synced = sorted(
        (e for e in await chat.audit() if e.command == "sbg room sync"), key=lambda e: e.seq
    )
    assert [(e.sender, e.room_id, e.outcome) for e in synced] == [(SECURITY, LEDGER, "ok")] * 2
    assert synced[0].detail == "ACL set (allow *; deny evil.example)"


async def test_drift_is_put_back_and_reported(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver, maubot_test_bot: Any
) -> None:
    await ask(chat, f"!sbg room protect {LEDGER} --ledger")
    lowered = copy.deepcopy(levels(homeserver))
    lowered["events"]["m.room.encryption"] = 0
    homeserver.state[(LEDGER, "m.room.power_levels")] = lowered
    event = StateEvent(
        type=EventType.ROOM_POWER_LEVELS,
        room_id=LEDGER,
        event_id=EventID("$lowered"),
        sender=SECOND_ADMIN,
        timestamp=0,
        state_key="",
        content=lowered,  # type: ignore[arg-type]
    )
    before = len(maubot_test_bot.responded)
    await maubot_test_bot.dispatch(EventType.ROOM_POWER_LEVELS, event)
    assert levels(homeserver)["events"]["m.room.encryption"] == 100
    [notice] = maubot_test_bot.responded[before:]
    assert notice.room_id == CONTROL
    assert notice.content.body == (
        f"Room `{LEDGER}` was changed by @dave:corp.example (m.room.power_levels) so that it no "
        "longer met its protection.\n I put it back: power"
        " levels m.room.encryption 0 → 100."
    )
    [entry] = [e for e in await chat.audit() if e.command == "sbg room restore"]
    assert (entry.sender, entry.event_id, entry.room_id) == (SECOND_ADMIN, "$lowered", LEDGER)
    assert entry.detail == "power levels m.room.encryption 0 → 100"
    # The bot's own changes, and rooms that are not protected, are left alone.
    await maubot_test_bot.dispatch(EventType.ROOM_POWER_LEVELS, event)
    assert len(maubot_test_bot.responded) == before + 1, "in order now: nothing to say"


async def test_the_bot_must_hold_the_top_level(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver
) -> None:
    homeserver.state[(LEDGER, "m.room.power_levels")] = room_levels(
        users={BOT: 50, SECOND_ADMIN: 100}
    )
    assert await ask(chat, f"!sbg room protect {LEDGER}") == (
        f"I hold power level 50 in room `{LEDGER}`, but protecting it needs the top level (100): "
        "give me power level 100 there first. Nothing was changed."
    )
    assert gateway.rooms.rooms() == [] and homeserver.state_writes == []
    assert await ask(chat, "!sbg room protect !absent:corp.example") == (
        "I am not in room `!absent:corp.example`; invite me and give me the top power level "
        "first. Nothing was changed."
    )
    assert await ask(chat, "!sbg room protect #nope:corp.example") == (
        "No room has the alias `#nope:corp.example`."
    )


async def test_a_refused_write_leaves_the_room_unprotected(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver
) -> None:
    homeserver.refuse_state.add("m.room.server_acl")
    reply = await ask(chat, f"!sbg room protect {LEDGER}")
    assert reply == (
        f"The homeserver refused my m.room.server_acl change in room `{LEDGER}`: You don't "
        "have permission to post that to the room."
    )
    assert gateway.rooms.rooms() == []


async def test_a_partner_at_the_top_is_a_warning_and_a_difference(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver
) -> None:
    homeserver.state[(LEDGER, "m.room.power_levels")] = room_levels(users={BOT: 100, PARTNER: 100})
    reply = await ask(chat, f"!sbg room protect {LEDGER} --ledger")
    assert reply.endswith(
        f"Warning: {PARTNER} of another server holds the top level 100; only they can lower "
        "themselves; the protection does not hold against them."
    )
    reply = await ask(chat, f"!sbg room check {LEDGER}")
    assert reply == (
        f"Room `{LEDGER}` differs from its protection under ruleset version 0:\n\n"
        f"● {PARTNER} of another server holds the top level 100; only they can lower themselves"
        " (I cannot fix this)"
    )


async def test_usage_roles_and_unprotect(chat: Chat, gateway: GatewayDouble) -> None:
    reply = await ask(chat, "!sbg room protect ledger")
    assert reply == (
        "The room must be a room ID (!abc:corp.example) or an alias (#ledger:corp.example).\n "
        "**Usage:** `!sbg room protect <room> [--ledger] [--acl] [--policy-server]`"
    )
    assert await ask(chat, f"!sbg room protect {LEDGER} --policy-server") == (
        f"The gateway cannot protect `{LEDGER}`: no policy server configured: policy_server "
        "cannot be set. Nothing was changed."
    )
    assert await ask(chat, f"!sbg room protect {LEDGER}", AUDITOR) == (
        "You need the gateway_admin role to use `!sbg room protect`."
    )
    assert await ask(chat, f"!sbg room unprotect {LEDGER}") == f"Room `{LEDGER}` is not protected."
    await ask(chat, f"!sbg room protect {LEDGER}")
    assert await ask(chat, f"!sbg room unprotect {LEDGER}") == (
        f"Room `{LEDGER}` is no longer protected; its power levels, ACL and policy state stay as "
        "they are."
    )
    assert await ask(chat, "!sbg room list") == "No room is protected."
    assert await ask(chat, f"!sbg room check {LEDGER}") == f"Room `{LEDGER}` is not protected."
    assert STAFF  # operators have no !sbg role at all


async def test_the_policy_server_is_named_when_the_gateway_has_one(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver
) -> None:
    gateway.rooms.policy_server = twin.PolicyServerRef("corp.example", "a2V5")
    reply = await ask(chat, f"!sbg room protect {LEDGER} --policy-server")
    assert reply == (
        f"Room `{LEDGER}` is protected (policy server): power levels m.room.policy 50 → 100; "
        "policy server corp.example."
    )
    assert homeserver.state[(LEDGER, "m.room.policy")] == {
        "via": "corp.example",
        "public_keys": {"ed25519": "a2V5"},
    }
    assert (LEDGER, "m.room.server_acl") not in homeserver.state


async def test_acl_drift_is_put_back(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver, maubot_test_bot: Any
) -> None:
    await ask(chat, f"!sbg room protect {LEDGER} --acl")
    loose = {"allow": ["*"], "deny": [], "allow_ip_literals": True}
    homeserver.state[(LEDGER, "m.room.server_acl")] = loose
    event = StateEvent(
        type=EventType.find("m.room.server_acl", EventType.Class.STATE),
        room_id=LEDGER,
        event_id=EventID("$acl"),
        sender=SECOND_ADMIN,
        timestamp=0,
        state_key="",
        content=loose,  # type: ignore[arg-type]
    )
    await maubot_test_bot.dispatch(event.type, event)
    assert homeserver.state[(LEDGER, "m.room.server_acl")]["allow_ip_literals"] is False
    assert chat.last.body.endswith("I put it back: ACL set (allow *; deny none).")


async def test_a_failed_reprotect_keeps_the_earlier_protection(
    chat: Chat, gateway: GatewayDouble, homeserver: FakeHomeserver
) -> None:
    await ask(chat, f"!sbg room protect {LEDGER} --ledger")
    homeserver.refuse_state.add("m.room.server_acl")
    reply = await ask(chat, f"!sbg room protect {LEDGER} --ledger --acl")
    assert reply.startswith("The homeserver refused my m.room.server_acl change")
    [room] = gateway.rooms.rooms()
    assert (room.ledger, room.acl) == (True, False)
