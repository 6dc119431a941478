"""``!whoami`` and ``!help``."""

from __future__ import annotations

from typing import Any

from .conftest import AUDITOR, NOBODY, OTHER_ROOM, STAFF, Chat
from .fakes import FakeHomeserver


async def test_whoami(chat: Chat) -> None:
    reply = await chat.ask("!whoami")
    assert reply == (
        f"You are {STAFF}.\n Roles: operator.\n"
        " Account: active (checked live through the homeserver's admin API)."
    )
    assert f'href="https://matrix.to/#/{STAFF}"' in chat.last.formatted_body
    [entry] = await chat.audit()
    assert (entry.command, entry.detail) == ("whoami", "roles operator; account active")


async def test_whoami_without_roles_and_with_an_unconfirmed_status(
    chat: Chat, homeserver: FakeHomeserver
) -> None:
    homeserver.admin_status = 500
    reply = await chat.ask("!whoami", sender=NOBODY)
    assert "Roles: none." in reply
    assert "could not be confirmed right now, so privileged commands are refused" in reply


async def test_whoami_in_membership_mode(chat: Chat, maubot_plugin_config: Any) -> None:
    maubot_plugin_config["identity.mode"] = "membership"
    reply = await chat.ask("!whoami", sender=AUDITOR)
    assert "Roles: auditor." in reply
    assert "active (checked live as membership of this room)" in reply


async def test_whoami_only_in_control_rooms(chat: Chat) -> None:
    assert await chat.ask("!whoami", room=OTHER_ROOM) == (
        "Commands are accepted only in a control room."
    )


async def test_help_lists_what_the_sender_may_use(chat: Chat) -> None:
    operator = await chat.ask("!help")
    assert "!token generate [--uses N]" in operator and "!guest deactivate" in operator
    assert "!audit" not in operator
    assert "`!whoami` — your roles" in operator and "`!help` — the commands" in operator
    assert operator.count("●") == 8

    auditor = await chat.ask("!help", sender=AUDITOR)
    assert "!audit verify" in auditor and "!audit export" in auditor
    assert "!audit [--user @x] [--since 7d] [--limit N]" in auditor
    assert "!token" not in auditor

    nobody = await chat.ask("!help", sender=NOBODY)
    assert "!token" not in nobody and "!audit" not in nobody
    assert "You hold no role here" in nobody


async def test_help_takes_no_arguments(chat: Chat) -> None:
    reply = await chat.ask("!help me")
    assert reply.startswith("Unexpected 'me'.")
    assert "**Usage:** `!help`" in reply
