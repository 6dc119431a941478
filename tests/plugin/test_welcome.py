"""``!token generate --invite`` and the follow-up of registrations, against fakes.

The real thing (federation, a bot restart between registration and invite) is in
``tests/e2e/test_guest_invites.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mautrix.util.async_db import Database

from plugin import BastionBot
from plugin.db import FollowupStore
from plugin.migrations import upgrade_table

from .conftest import BOT, CONTROL, STAFF, Chat
from .fakes import FakeHomeserver, FakeRegistrar

PROJECT = "!project:corp.example"
GUEST = "@guest:dmz.example"


@pytest.fixture
def project(homeserver: FakeHomeserver) -> str:
    """A room the bot is in and may invite into (power levels as Synapse's defaults)."""
    homeserver.state[(PROJECT, "m.room.power_levels")] = {"users": {BOT: 100}, "invite": 0}
    homeserver.aliases["#project:corp.example"] = PROJECT
    return PROJECT


async def mint_with_invite(chat: Chat, registrar: FakeRegistrar, args: str = "") -> str:
    reply = await chat.ask(f"!token generate --invite #project:corp.example {args}".strip())
    assert f"its guests are invited to `{PROJECT}`" in reply
    [token_id] = [t for t in registrar.tokens if registrar.tokens[t].get("invites")]
    return token_id


async def test_generate_resolves_the_alias_and_carries_the_rooms(
    chat: Chat, registrar: FakeRegistrar, project: str
) -> None:
    await mint_with_invite(chat, registrar)
    [call] = registrar.calls("POST", "/v1/tokens")
    assert call.body is not None
    assert (call.body["invites"], call.body["notify"]) == ([PROJECT], CONTROL)
    [entry] = await chat.audit()
    assert entry.detail.endswith(f"invites {PROJECT}")


@pytest.mark.parametrize(
    ("state", "alias", "answer"),
    [
        ({}, PROJECT, f"I am not in `{PROJECT}`, so I could not invite guests there"),
        ({"users": {BOT: 0}, "invite": 50}, PROJECT, f"I may not invite people into `{PROJECT}`"),
        (None, "#nowhere:corp.example", "No room has the alias `#nowhere:corp.example`"),
    ],
)
async def test_a_room_the_bot_cannot_invite_into_mints_nothing(
    chat: Chat,
    registrar: FakeRegistrar,
    homeserver: FakeHomeserver,
    state: dict[str, object] | None,
    alias: str,
    answer: str,
) -> None:
    if state:
        homeserver.state[(PROJECT, "m.room.power_levels")] = state
    reply = await chat.ask(f"!token generate --invite {alias}")
    assert reply == f"{answer}; no token was minted."
    assert registrar.minted == 0
    [entry] = await chat.audit()
    assert entry.outcome == "refused"


@pytest.mark.parametrize("args", ["--invite", "--invite nonsense", "--invite #a"])
async def test_bad_invite_syntax(chat: Chat, args: str) -> None:
    reply = await chat.ask(f"!token generate {args}")
    assert reply.startswith("--invite ")


async def test_a_registered_guest_is_invited_once_and_the_sponsor_told(
    chat: Chat, bot: BastionBot, registrar: FakeRegistrar, homeserver: FakeHomeserver, project: str
) -> None:
    token_id = await mint_with_invite(chat, registrar)
    registrar.register(token_id, GUEST)
    before = len(chat.test_bot.responded)
    assert await bot.welcomer.poll() == 1
    assert homeserver.invites == [(PROJECT, GUEST)]
    [notice] = chat.test_bot.responded[before:]
    assert notice.room_id == CONTROL
    assert notice.content.body == (
        f"{STAFF}: guest {GUEST} registered with token `{token_id}`; invited to `{PROJECT}`."
    )
    for _ in range(3):
        await bot.welcomer.poll()
    assert homeserver.invites == [(PROJECT, GUEST)]
    assert len(chat.test_bot.responded) == before + 1
    entry = (await chat.audit())[0]
    assert (entry.command, entry.outcome, entry.sender) == ("guest welcome", "ok", BOT)


async def test_a_passing_failure_is_retried_and_a_refusal_reported(
    chat: Chat, bot: BastionBot, registrar: FakeRegistrar, homeserver: FakeHomeserver, project: str
) -> None:
    token_id = await mint_with_invite(chat, registrar, "--uses 2")
    registrar.register(token_id, GUEST)
    homeserver.invite_fails = [(502, "M_UNKNOWN", "Bad gateway")]
    before = len(chat.test_bot.responded)
    await bot.welcomer.poll()
    assert homeserver.invites == [] and len(chat.test_bot.responded) == before
    await bot.welcomer.poll()
    assert homeserver.invites == [(PROJECT, GUEST)]

    registrar.register(token_id, "@other:dmz.example")
    homeserver.invite_fails = [(403, "M_FORBIDDEN", "You are not allowed to invite <b>")]
    await bot.welcomer.poll()
    body = chat.test_bot.responded[-1].content.body
    assert body.endswith(
        f"could not invite to `{PROJECT}` (M_FORBIDDEN: You are not allowed to invite <b>)."
    )
    assert "<b>" not in chat.test_bot.responded[-1].content.formatted_body
    entry = (await chat.audit())[0]
    assert (entry.command, entry.outcome) == ("guest welcome", "failed")


async def test_tokens_without_invites_are_not_followed_up(
    chat: Chat, bot: BastionBot, registrar: FakeRegistrar, homeserver: FakeHomeserver
) -> None:
    await chat.send("!token generate")
    [token_id] = registrar.tokens
    registrar.register(token_id, GUEST)
    before = len(chat.test_bot.responded)
    await bot.welcomer.poll()
    assert homeserver.invites == [] and len(chat.test_bot.responded) == before


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FollowupStore]:
    database = Database.create(f"sqlite:{tmp_path / 'f.db'}", upgrade_table=upgrade_table)
    await database.start()
    yield FollowupStore(database)
    await database.stop()


async def test_a_claim_is_won_once_and_taken_again_only_after_its_lease(
    store: FollowupStore,
) -> None:
    assert await store.claim(GUEST, PROJECT, 1_000, 60_000)
    assert not await store.claim(GUEST, PROJECT, 1_001, 60_000)
    assert not await store.claim(GUEST, PROJECT, 61_000, 60_000)
    assert await store.claim(GUEST, PROJECT, 61_001, 60_000), "a stale claim is taken again"
    await store.finish(GUEST, PROJECT, "done")
    assert not await store.claim(GUEST, PROJECT, 10**12, 60_000), "done stays done"
    [row] = await store.of_guest(GUEST)
    assert (row.state, row.attempts) == ("done", 2)
    assert await store.cursor() == (0, "")
    await store.set_cursor(5, GUEST)
    await store.set_cursor(7, GUEST)
    assert await store.cursor() == (7, GUEST)
