"""Revocation of a deactivated staff member's tokens: on their leave, and by the sweep."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mautrix.types import (
    EventID,
    EventType,
    Membership,
    MemberStateEventContent,
    RoomID,
    StateEvent,
    UserID,
)

from plugin import BastionBot
from plugin.dmz import registrar as registrar_client

from .conftest import BOT, CONTROL, OTHER_ROOM, STAFF, Chat
from .fakes import FakeHomeserver, FakeRegistrar

BOB = UserID("@bob:corp.example")


async def leave(
    chat: Chat, user: UserID, *, room: RoomID = CONTROL, membership: Membership = Membership.LEAVE
) -> None:
    event = StateEvent(
        type=EventType.ROOM_MEMBER,
        room_id=room,
        event_id=EventID(f"$leave-{user}"),
        sender=user,
        state_key=user,
        timestamp=0,
        content=MemberStateEventContent(membership=membership),
    )
    await chat.test_bot.dispatch(EventType.ROOM_MEMBER, event)


@pytest.fixture
def bob(homeserver: FakeHomeserver, registrar: FakeRegistrar) -> list[str]:
    homeserver.add_user(BOB, deactivated=True)
    registrar.add_guest("@guest1:partners.example.test", BOB)
    return [registrar.add_token(BOB), registrar.add_token(BOB)]


async def test_leave_of_a_deactivated_sponsor_revokes(
    chat: Chat, registrar: FakeRegistrar, bob: list[str]
) -> None:
    kept = registrar.add_token(STAFF)
    await leave(chat, BOB)
    assert [registrar.tokens[t]["status"] for t in bob] == ["revoked", "revoked"]
    assert registrar.tokens[kept]["status"] == "active"
    [call] = registrar.calls("POST", "/v1/sponsors/")
    assert call.path == f"/v1/sponsors/{BOB}/revoke"
    assert call.body == {"guests": "keep"}
    assert call.headers["X-Acting-User"] == BOT
    assert registrar.guests["@guest1:partners.example.test"]["status"] == "active"
    notice = chat.test_bot.responded[-1]
    assert notice.room_id == CONTROL
    assert notice.content.body == f"{BOB} is deactivated: revoked 2 open tokens."
    [entry] = await chat.audit()
    assert (entry.command, entry.sender, entry.outcome) == ("revoke on deactivation", BOT, "ok")
    assert entry.detail == "2 tokens revoked, 0 guests deactivated"
    assert entry.parsed_args == {"user": BOB, "guests": "keep", "trigger": "leave"}
    assert entry.event_id == f"$leave-{BOB}"
    assert entry.request_id == call.headers["X-Request-Id"]


async def test_guests_are_deactivated_when_configured(
    chat: Chat, registrar: FakeRegistrar, bob: list[str], maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["on_staff_deactivated.guests"] = "deactivate"
    await leave(chat, BOB, membership=Membership.BAN)
    assert registrar.guests["@guest1:partners.example.test"]["status"] == "deactivated"
    assert chat.last.body == f"{BOB} is deactivated: revoked 2 open tokens; 1 guest deactivated."


async def test_leave_of_an_active_member_changes_nothing(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver
) -> None:
    homeserver.add_user(BOB)
    token = registrar.add_token(BOB)
    await leave(chat, BOB)
    assert registrar.tokens[token]["status"] == "active"
    assert registrar.requests == [] and await chat.audit() == []


async def test_leaves_elsewhere_and_joins_are_ignored(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver, bob: list[str]
) -> None:
    await leave(chat, BOB, room=OTHER_ROOM)
    await leave(chat, BOB, membership=Membership.JOIN)
    await leave(chat, BOT)
    assert registrar.requests == [] and homeserver.admin_requests == []


async def test_unconfirmed_status_revokes_nothing(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver, bob: list[str]
) -> None:
    homeserver.admin_status = 502
    await leave(chat, BOB)
    assert registrar.requests == []


async def test_revocation_can_be_turned_off(
    chat: Chat, registrar: FakeRegistrar, bob: list[str], maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["on_staff_deactivated.revoke_tokens"] = False
    await leave(chat, BOB)
    assert registrar.requests == []


async def test_dmz_failure_is_audited_and_announced(
    chat: Chat, registrar: FakeRegistrar, bob: list[str]
) -> None:
    registrar.fail = (503, {"errcode": "M_UNAVAILABLE", "error": "homeserver down"})
    await leave(chat, BOB)
    assert "could not be revoked yet" in chat.last.body
    [entry] = await chat.audit()
    assert entry.outcome == "failed"
    assert "503 M_UNAVAILABLE" in entry.detail


async def test_sweep_revokes_for_deactivated_sponsors_only(
    bot: BastionBot,
    chat: Chat,
    registrar: FakeRegistrar,
    homeserver: FakeHomeserver,
    bob: list[str],
) -> None:
    mine = registrar.add_token(STAFF)
    remote = registrar.add_token("@partner:elsewhere.example")
    assert await bot.revoker.sweep() == 1
    assert [registrar.tokens[t]["status"] for t in bob] == ["revoked", "revoked"]
    assert registrar.tokens[mine]["status"] == registrar.tokens[remote]["status"] == "active"
    assert set(homeserver.admin_requests) == {BOB, STAFF}, "remote sponsors are not looked up"
    [entry] = await chat.audit()
    assert entry.parsed_args["trigger"] == "sweep"
    assert await bot.revoker.sweep() == 0, "nothing left open"


async def test_sweep_covers_guests_when_they_are_deactivated_too(
    bot: BastionBot, registrar: FakeRegistrar, homeserver: FakeHomeserver, maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["on_staff_deactivated.guests"] = "deactivate"
    homeserver.add_user(BOB, deactivated=True)
    registrar.add_guest("@g:partners.example.test", BOB)
    assert await bot.revoker.sweep() == 1
    assert registrar.guests["@g:partners.example.test"]["status"] == "deactivated"


async def test_sweep_with_the_dmz_down_does_nothing(
    bot: BastionBot, registrar: FakeRegistrar, bob: list[str]
) -> None:
    registrar.fail = (500, "down")
    assert await bot.revoker.sweep() == 0


async def test_sweep_runs_at_start_and_periodically(
    bot: BastionBot,
    registrar: FakeRegistrar,
    bob: list[str],
    maubot_plugin_config_dict: dict[str, Any],
) -> None:
    await bot.internal_stop()
    maubot_plugin_config_dict["sweep_interval"] = "1s"
    await bot.internal_start()
    await asyncio.sleep(0.1)
    assert len(registrar.calls("GET", "/v1/tokens")) == 1
    assert registrar.tokens[bob[0]]["status"] == "revoked"
    await asyncio.sleep(1)
    assert len(registrar.calls("GET", "/v1/tokens")) == 2
    await bot.internal_stop()
    assert bot.sweep_task is None


async def test_sweep_follows_every_page(
    bot: BastionBot, registrar: FakeRegistrar, homeserver: FakeHomeserver, bob: list[str]
) -> None:
    registrar.page_cap = 2  # newest first: bob's two (the oldest) are on pages 2 and 3
    newer = [registrar.add_token(STAFF) for _ in range(3)]
    assert await bot.revoker.sweep() == 1
    assert [registrar.tokens[t]["status"] for t in bob] == ["revoked", "revoked"]
    assert all(registrar.tokens[t]["status"] == "active" for t in newer)
    calls = registrar.calls("GET", "/v1/tokens")
    assert [call.query.get("cursor") for call in calls] == [None, newer[1], bob[1]]
    assert {call.query["limit"] for call in calls} == {"1000"}
    assert all(call.query["status"] == "active" for call in calls)


async def test_sweep_follows_every_page_of_guests(
    bot: BastionBot, registrar: FakeRegistrar, homeserver: FakeHomeserver, maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["on_staff_deactivated.guests"] = "deactivate"
    registrar.page_cap = 1
    homeserver.add_user(BOB, deactivated=True)
    registrar.add_guest("@g:partners.example.test", BOB)
    registrar.add_guest("@h:partners.example.test", STAFF)
    assert await bot.revoker.sweep() == 1
    assert registrar.guests["@g:partners.example.test"]["status"] == "deactivated"
    assert len(registrar.calls("GET", "/v1/guests")) == 2


async def test_sweep_stops_on_a_repeated_cursor(
    bot: BastionBot, registrar: FakeRegistrar, bob: list[str]
) -> None:
    registrar.fail = (200, {"tokens": [], "next_cursor": "again"})
    assert await bot.revoker.sweep() == 0
    assert len(registrar.calls("GET", "/v1/tokens")) == 2
    registrar.fail = None
    assert await bot.revoker.sweep() == 1


async def test_sweep_gives_up_past_the_page_bound(
    bot: BastionBot, registrar: FakeRegistrar, bob: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registrar_client, "MAX_PAGES", 1)
    registrar.page_cap = 1
    assert await bot.revoker.sweep() == 0
    assert len(registrar.calls("GET", "/v1/tokens")) == 1
    assert [registrar.tokens[t]["status"] for t in bob] == ["active", "active"]
