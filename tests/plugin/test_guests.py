"""``!guest list`` and ``!guest deactivate`` (with --yes or a ✅ reaction from the requester)."""

from __future__ import annotations

from .conftest import NOBODY, STAFF, Chat
from .fakes import FakeHomeserver, FakeRegistrar

GUEST = "@acme-jo:partners.example.test"


async def test_list(chat: Chat, registrar: FakeRegistrar) -> None:
    registrar.add_guest(GUEST, STAFF)
    registrar.add_guest("@old:partners.example.test", STAFF, status="deactivated")
    reply = await chat.ask("!guest list")
    assert registrar.requests[-1].query == {"status": "active"}
    assert reply.startswith("Active guests (1):")
    assert GUEST in reply and f"sponsored by {STAFF}" in reply
    assert "https://matrix.to/#/@acme-jo:partners.example.test" in chat.last.formatted_body


async def test_list_by_sponsor_and_all(chat: Chat, registrar: FakeRegistrar) -> None:
    registrar.add_guest(GUEST, "@bob:corp.example", status="deactivated")
    reply = await chat.ask("!guest list --sponsor @bob:corp.example --all")
    assert registrar.requests[-1].query == {"sponsor": "@bob:corp.example"}
    assert reply.startswith("Guests of @bob:corp.example (1):")


async def test_list_empty_and_bad_sponsor(chat: Chat, registrar: FakeRegistrar) -> None:
    assert await chat.ask("!guest list") == "Active guests: none."
    reply = await chat.ask("!guest list --sponsor bob")
    assert reply.startswith("--sponsor must be a Matrix user ID such as @alice:corp.example.")
    assert len(registrar.requests) == 1


async def test_deactivate_with_yes(chat: Chat, registrar: FakeRegistrar) -> None:
    registrar.add_guest(GUEST, STAFF)
    reply = await chat.ask(f"!guest deactivate {GUEST} --yes")
    assert reply == f"Guest {GUEST} is deactivated."
    assert registrar.guests[GUEST]["status"] == "deactivated"
    [call] = registrar.calls("POST", "/v1/guests/")
    assert call.path == f"/v1/guests/{GUEST}/deactivate"
    assert call.headers["X-Acting-User"] == STAFF
    [entry] = await chat.audit()
    assert entry.detail == f"guest {GUEST} deactivated"


async def test_deactivate_asks_then_a_reaction_confirms(
    chat: Chat, registrar: FakeRegistrar
) -> None:
    registrar.add_guest(GUEST, STAFF)
    command = await chat.send(f"!guest deactivate {GUEST}")
    assert "React with ✅" in chat.last.body
    assert registrar.calls("POST", "/v1/guests/") == []
    await chat.react(command)
    assert registrar.guests[GUEST]["status"] == "deactivated"
    assert chat.last.body == f"Guest {GUEST} is deactivated."
    assert chat.last.relates_to.in_reply_to.event_id == command
    confirm, ask = await chat.audit()
    assert (ask.detail, ask.outcome) == ("awaiting confirmation", "ok")
    assert (confirm.command, confirm.outcome) == ("guest deactivate", "ok")
    assert confirm.parsed_args["confirmed"] == "reaction"
    assert confirm.event_id.startswith("$react")

    await chat.react(command)
    assert len(registrar.calls("POST", "/v1/guests/")) == 1, "a confirmation works once"


async def test_reaction_on_the_prompt_confirms(chat: Chat, registrar: FakeRegistrar) -> None:
    registrar.add_guest(GUEST, STAFF)
    await chat.send(f"!guest deactivate {GUEST}")
    await chat.react(chat.test_bot.sent_ids[-1])
    assert registrar.guests[GUEST]["status"] == "deactivated"


async def test_only_the_requester_can_confirm(chat: Chat, registrar: FakeRegistrar) -> None:
    registrar.add_guest(GUEST, STAFF)
    command = await chat.send(f"!guest deactivate {GUEST}")
    await chat.react(command, sender=NOBODY)
    await chat.react(command, key="👍")
    assert registrar.guests[GUEST]["status"] == "active"
    assert len(await chat.audit()) == 1


async def test_confirmation_passes_the_gate_again(
    chat: Chat, registrar: FakeRegistrar, homeserver: FakeHomeserver
) -> None:
    registrar.add_guest(GUEST, STAFF)
    command = await chat.send(f"!guest deactivate {GUEST}")
    homeserver.add_user(STAFF, deactivated=True)
    await chat.react(command)
    assert registrar.guests[GUEST]["status"] == "active"
    assert chat.last.body == "Your account is deactivated, so nothing was done."
    confirm, _ = await chat.audit()
    assert (confirm.outcome, confirm.detail) == ("refused", "account deactivated")


async def test_deactivate_unknown_guest(chat: Chat) -> None:
    reply = await chat.ask("!guest deactivate @nobody:partners.example.test --yes")
    assert reply == "@nobody:partners.example.test is not a known guest."


async def test_deactivate_needs_a_user_id(chat: Chat) -> None:
    reply = await chat.ask("!guest deactivate jo")
    assert reply.startswith("The guest must be a Matrix user ID")
    reply = await chat.ask("!guest deactivate")
    assert reply.startswith("The guest's user ID is missing.")
