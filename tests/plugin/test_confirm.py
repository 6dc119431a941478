"""Confirmations are kept in the plugin database: a restart neither loses nor replays them.

``!guest deactivate`` is the confirmable command here; ``!sbg`` uses the same store. The
handler tests run on SQLite (maubot.testing's database); the store runs on PostgreSQL too.
"""

from __future__ import annotations

import asyncio

import attrs
import pytest
from mautrix.types import EventID, RelationType, RoomID
from mautrix.util.async_db import Database

from devstack.postgres import Postgres
from plugin import BastionBot
from plugin.confirm import now_ms
from plugin.db import ConfirmationStore, PendingConfirmation
from plugin.migrations import upgrade_table

from .conftest import STAFF, Chat
from .fakes import FakeRegistrar

GUEST = "@acme-jo:partners.example.test"


async def pending_rows(bot: BastionBot) -> list[tuple[str, str, int | None]]:
    rows = await bot.database.fetch("SELECT request_event, command, confirmed_at FROM confirmation")
    return [(row["request_event"], row["command"], row["confirmed_at"]) for row in rows]


async def test_a_request_is_stored_with_its_expiry(
    chat: Chat, bot: BastionBot, registrar: FakeRegistrar
) -> None:
    registrar.add_guest(GUEST, STAFF)
    command = await chat.send(f"!guest deactivate {GUEST}")
    row = await bot.database.fetchrow("SELECT * FROM confirmation")
    assert row["request_event"] == command
    assert row["prompt_event"] == chat.test_bot.sent_ids[-1]
    assert (row["sender"], row["command"]) == (STAFF, "guest deactivate")
    assert row["confirmed_at"] is None
    assert 590_000 <= row["expires_at"] - now_ms() <= 600_000
    assert '"guest": "@acme-jo:partners.example.test"' in row["payload"]


async def test_a_restart_between_the_request_and_the_reaction_loses_nothing(
    chat: Chat, bot: BastionBot, registrar: FakeRegistrar
) -> None:
    registrar.add_guest(GUEST, STAFF)
    command = await chat.send(f"!guest deactivate {GUEST}")
    await bot.internal_stop()
    await bot.internal_start()
    await chat.react(command)
    assert registrar.guests[GUEST]["status"] == "deactivated"
    assert chat.last.body == f"Guest {GUEST} is deactivated."
    assert chat.last.relates_to.in_reply_to.event_id == command
    [(request, _, confirmed_at)] = await pending_rows(bot)
    assert request == command and confirmed_at is not None

    await bot.internal_stop()
    await bot.internal_start()
    await chat.react(command)
    assert len(registrar.calls("POST", "/v1/guests/")) == 1, "a restart replays nothing"
    assert [e.detail for e in await chat.audit()] == [
        f"guest {GUEST} deactivated",
        "awaiting confirmation",
    ]


async def test_a_reaction_delivered_twice_at_once_runs_the_action_once(
    chat: Chat, registrar: FakeRegistrar
) -> None:
    registrar.add_guest(GUEST, STAFF)
    command = await chat.send(f"!guest deactivate {GUEST}")
    prompt = chat.test_bot.sent_ids[-1]
    await asyncio.gather(
        chat.react(command), chat.react(prompt), chat.react(command, key="\u2705\ufe0f")
    )
    assert len(registrar.calls("POST", "/v1/guests/")) == 1
    assert [e.outcome for e in await chat.audit()] == ["ok", "ok"]


async def test_an_expired_confirmation_is_refused_with_a_reply(
    chat: Chat, bot: BastionBot, registrar: FakeRegistrar
) -> None:
    registrar.add_guest(GUEST, STAFF)
    command = await chat.send(f"!guest deactivate {GUEST}")
    await bot.database.execute("UPDATE confirmation SET expires_at=$1", 1)
    await chat.react(command)
    assert chat.last.body == (
        "That confirmation of `!guest deactivate` expired (they last 10 minutes), so nothing "
        "was done; send the command again."
    )
    assert chat.last.relates_to.in_reply_to.event_id == command
    assert registrar.guests[GUEST]["status"] == "active"
    assert registrar.calls("POST", "/v1/guests/") == []
    expired, _ = await chat.audit()
    assert (expired.command, expired.outcome, expired.detail) == (
        "guest deactivate",
        "refused",
        "confirmation expired",
    )
    [(_, _, confirmed_at)] = await pending_rows(bot)
    assert confirmed_at is None, "an expired confirmation is never marked done"


async def test_a_confirmed_reply_follows_the_requests_thread(
    chat: Chat, registrar: FakeRegistrar
) -> None:
    registrar.add_guest(GUEST, STAFF)
    root = EventID("$thread-root")
    command = await chat.send(f"!guest deactivate {GUEST}", thread=root)
    assert chat.last.relates_to.event_id == root
    await chat.react(command)
    relation = chat.last.relates_to
    assert chat.last.body == f"Guest {GUEST} is deactivated."
    assert (relation.rel_type, relation.event_id) == (RelationType.THREAD, root)
    assert relation.in_reply_to.event_id == command


async def test_the_confirmation_names_the_command_under_a_prefix(
    chat: Chat, bot: BastionBot, registrar: FakeRegistrar
) -> None:
    bot.config["commands.prefix"] = "ops"
    registrar.add_guest(GUEST, STAFF)
    command = await chat.send(f"!ops guest deactivate {GUEST}")
    await bot.database.execute("UPDATE confirmation SET expires_at=$1", 1)
    await chat.react(command)
    assert chat.last.body.startswith("That confirmation of `!ops guest deactivate` expired")


@pytest.mark.slow
async def test_the_store_claims_once_on_postgresql(postgres: Postgres) -> None:
    """maubot's asyncpg mode (database_type: asyncpg) on a real PostgreSQL: the same SQL."""
    database = Database.create(
        await postgres.new_database(), upgrade_table=upgrade_table, db_args={"min_size": 4}
    )
    await database.start()
    try:
        store = ConfirmationStore(database)
        now = now_ms()
        pending = PendingConfirmation(
            request_event=EventID("$request"),
            prompt_event=None,
            thread_root=None,
            room_id=RoomID("!r:corp.example"),
            sender=STAFF,
            command="guest deactivate",
            args={"guest": GUEST, "yes": False},
            payload={"guest": GUEST},
            expires_at=now + 60_000,
            confirmed_at=None,
        )
        await store.add(pending)
        await store.set_prompt(pending.request_event, EventID("$prompt"))
        found = await store.find(EventID("$prompt"))
        assert found == attrs.evolve(pending, prompt_event=EventID("$prompt"))
        claims = await asyncio.gather(*(store.claim(pending.request_event, now) for _ in range(4)))
        assert sorted(claims) == [False, False, False, True]
        assert (await store.find(EventID("$request"))).confirmed_at == now  # type: ignore[union-attr]

        await store.add(attrs.evolve(pending, request_event=EventID("$late"), expires_at=now))
        assert not await store.claim(EventID("$late"), now), "expired: never claimed"
        await store.forget_before(now + 1)
        assert await store.find(EventID("$late")) is None
    finally:
        await database.stop()
