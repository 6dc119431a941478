"""The gate: control room, role, live account status, fail closed, one audit entry each."""

from __future__ import annotations

from typing import Any

import pytest
from mautrix.types import EventID, RelationType

from plugin.gate import user_matches

from .conftest import AUDITOR, CONTROL, NOBODY, OTHER_ROOM, STAFF, Chat
from .fakes import FakeHomeserver, FakeRegistrar


async def test_outside_a_control_room_is_refused_and_audited(
    chat: Chat, registrar: FakeRegistrar
) -> None:
    reply = await chat.ask("!token generate", room=OTHER_ROOM)
    assert reply == "Commands are accepted only in a control room."
    assert registrar.requests == []
    [entry] = await chat.audit()
    assert (entry.command, entry.outcome, entry.room_id) == (
        "token generate",
        "refused",
        OTHER_ROOM,
    )
    assert entry.detail == "not a control room"


async def test_bad_syntax_outside_a_control_room_gets_no_usage(chat: Chat) -> None:
    reply = await chat.ask("!token generate --uses nope", room=OTHER_ROOM)
    assert reply == "Commands are accepted only in a control room."
    reply = await chat.ask("!token", room=OTHER_ROOM)
    assert reply == "Commands are accepted only in a control room."


async def test_sender_without_the_role_is_refused(chat: Chat, registrar: FakeRegistrar) -> None:
    reply = await chat.ask("!token generate", sender=NOBODY)
    assert reply == "You need the operator role to use `!token generate`."
    assert registrar.requests == []
    [entry] = await chat.audit()
    assert (entry.sender, entry.outcome, entry.detail) == (
        NOBODY,
        "refused",
        "missing role operator",
    )


async def test_roles_come_from_globs(chat: Chat, homeserver: FakeHomeserver) -> None:
    ops = "@ops-bob:corp.example"
    homeserver.add_user(ops)
    assert "Roles: operator" in await chat.ask("!bastion whoami", sender=ops)
    reply = await chat.ask("!token list", sender="@ops-bob:evil.example")
    assert reply.startswith("You need the operator role")


@pytest.mark.parametrize(
    ("pattern", "user", "matches"),
    [
        ("@*:corp.example", "@alice:corp.example", True),
        ("@*:corp.example", "@alice:evil.example", False),
        ("@*:corp.example", "@x:evil.example:corp.example", False),
        ("@ops-*:corp.example", "@ops-1:corp.example", True),
        ("@ops-*:corp.example", "@dev-1:corp.example", False),
        ("@alice:corp.example", "@alice:corp.example", True),
        ("@alice:*", "@alice:other.example", True),
    ],
)
def test_user_globs(pattern: str, user: str, matches: bool) -> None:
    assert user_matches(pattern, user) is matches


@pytest.mark.parametrize(
    ("flags", "state"),
    [
        ({"deactivated": True}, "deactivated"),
        ({"locked": True}, "locked"),
        ({"suspended": True}, "suspended"),
    ],
)
async def test_inactive_accounts_are_refused(
    chat: Chat,
    homeserver: FakeHomeserver,
    registrar: FakeRegistrar,
    flags: dict[str, bool],
    state: str,
) -> None:
    homeserver.add_user(STAFF, **flags)
    reply = await chat.ask("!token generate")
    assert reply == f"Your account is {state}, so nothing was done."
    assert registrar.requests == []
    [entry] = await chat.audit()
    assert (entry.outcome, entry.detail) == ("refused", f"account {state}")


async def test_unknown_account_is_refused(chat: Chat, homeserver: FakeHomeserver) -> None:
    del homeserver.users[STAFF]
    reply = await chat.ask("!token list")
    assert reply == "Your account is unknown to the internal homeserver, so nothing was done."


async def test_status_is_checked_live_for_every_command(
    chat: Chat, homeserver: FakeHomeserver
) -> None:
    await chat.ask("!token list")
    homeserver.add_user(STAFF, deactivated=True)
    assert (await chat.ask("!token list")).startswith("Your account is deactivated")
    assert homeserver.admin_requests == [STAFF, STAFF]


@pytest.mark.parametrize("failure", ["status", "timeout", "down", "incomplete"])
async def test_unconfirmed_status_fails_closed(
    chat: Chat,
    homeserver: FakeHomeserver,
    registrar: FakeRegistrar,
    failure: str,
    maubot_plugin_config: Any,
) -> None:
    if failure == "status":
        homeserver.admin_status = 500
    elif failure == "timeout":
        homeserver.admin_delay = 1.5
        maubot_plugin_config["identity.timeout"] = "1s"
    elif failure == "down":
        maubot_plugin_config["identity.homeserver_url"] = "http://127.0.0.1:9"
    else:
        homeserver.users[STAFF] = {"name": STAFF}
    reply = await chat.ask("!token generate")
    assert reply == "Your account status could not be confirmed, so nothing was done."
    assert registrar.requests == []
    [entry] = await chat.audit()
    assert entry.outcome == "refused"
    assert entry.detail.startswith("status unconfirmed: ")


async def test_wrong_admin_token_fails_closed(chat: Chat, maubot_plugin_config: Any) -> None:
    maubot_plugin_config["identity.admin_token"] = "not-the-token"
    reply = await chat.ask("!token list")
    assert reply == "Your account status could not be confirmed, so nothing was done."


async def test_membership_mode(
    chat: Chat, homeserver: FakeHomeserver, maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["identity.mode"] = "membership"
    assert (await chat.ask("!token list")).startswith("Open tokens: none")
    homeserver.members[(CONTROL, STAFF)] = "leave"
    reply = await chat.ask("!token list")
    assert reply == "Your account is not a member of the control room, so nothing was done."
    assert homeserver.admin_requests == []


async def test_unknown_identity_mode_fails_closed(chat: Chat, maubot_plugin_config: Any) -> None:
    maubot_plugin_config["identity.mode"] = "trust-me"
    reply = await chat.ask("!token list")
    assert reply == "Your account status could not be confirmed, so nothing was done."


async def test_bad_syntax_is_answered_after_the_gate_with_usage(chat: Chat) -> None:
    reply = await chat.ask("!token generate --uses 0")
    assert reply.startswith("--uses must be a whole number from 1 to 1000.")
    usage = (
        "[--uses N] [--expires DURATION] [--guest-expires DURATION] [--note TEXT] "
        "[--invite ROOM ...] [--project NAME] [--dm]"
    )
    assert f"!token generate {usage}" in reply
    [entry] = await chat.audit()
    assert entry.outcome == "refused"
    assert entry.detail.startswith("bad syntax: ")


async def test_bad_syntax_from_someone_without_the_role_gets_the_role_refusal(chat: Chat) -> None:
    reply = await chat.ask("!token revoke", sender=NOBODY)
    assert reply == "You need the operator role to use `!token revoke`."


async def test_unknown_subcommand_lists_the_subcommands(chat: Chat) -> None:
    reply = await chat.ask("!token frobnicate now")
    assert reply.startswith("Unknown subcommand `frobnicate`.")
    for sub in ("generate", "list", "show", "revoke"):
        assert f"!token {sub}" in reply
    [entry] = await chat.audit()
    assert (entry.command, entry.outcome) == ("token", "refused")


async def test_family_name_alone_lists_the_subcommands(chat: Chat) -> None:
    reply = await chat.ask("!guest")
    assert "!guest list" in reply and "!guest deactivate" in reply
    [entry] = await chat.audit()
    assert entry.outcome == "ok"


async def test_every_command_leaves_exactly_one_entry(chat: Chat, registrar: FakeRegistrar) -> None:
    commands = [
        ("!bastion whoami", STAFF),
        ("!bastion help", NOBODY),
        ("!token generate", STAFF),
        ("!token list --bogus", STAFF),
        ("!token show 000000000000", STAFF),
        ("!guest list", NOBODY),
        ("!audit", AUDITOR),
        ("!audit verify", AUDITOR),
    ]
    for body, sender in commands:
        await chat.send(body, sender=sender)
    entries = await chat.audit()
    assert len(entries) == len(commands)
    assert [e.outcome for e in reversed(entries)] == [
        "ok",
        "ok",
        "ok",
        "refused",
        "failed",
        "refused",
        "ok",
        "ok",
    ]


async def test_correlation_id_reaches_the_dmz_and_the_trail(
    chat: Chat, registrar: FakeRegistrar
) -> None:
    await chat.send("!token list")
    [entry] = await chat.audit()
    [call] = registrar.requests
    assert call.headers["X-Request-Id"] == entry.request_id
    assert len(entry.request_id) == 16


async def test_replies_follow_the_thread(chat: Chat) -> None:
    root = EventID("$thread-root")
    await chat.send("!bastion whoami", thread=root)
    relation = chat.last.relates_to
    assert (relation.rel_type, relation.event_id) == (RelationType.THREAD, root)
    await chat.send("!token list --nope", thread=root)
    assert chat.last.relates_to.event_id == root
    await chat.send("!bastion whoami")
    assert chat.last.relates_to.rel_type is None
