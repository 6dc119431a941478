"""``!bastion``, ``!bastion whoami``, ``!bastion help``; bare aliases and the prefix.

``commands.prefix`` and ``commands.bare_aliases`` are read live, so each test sets them
on the running plugin's config.
"""

from __future__ import annotations

from typing import Any

from plugin import BastionBot

from .conftest import AUDITOR, NOBODY, OTHER_ROOM, STAFF, Chat
from .fakes import FakeHomeserver, FakeRegistrar


async def test_whoami(chat: Chat) -> None:
    reply = await chat.ask("!bastion whoami")
    assert reply == (
        f"You are {STAFF}.\n Roles: operator.\n"
        " Account: active (checked live through the homeserver's admin API)."
    )
    assert f'href="https://matrix.to/#/{STAFF}"' in chat.last.formatted_body
    [entry] = await chat.audit()
    assert (entry.command, entry.detail) == ("bastion whoami", "roles operator; account active")


async def test_whoami_without_roles_and_with_an_unconfirmed_status(
    chat: Chat, homeserver: FakeHomeserver
) -> None:
    homeserver.admin_status = 500
    reply = await chat.ask("!bastion whoami", sender=NOBODY)
    assert "Roles: none." in reply
    assert "could not be confirmed right now, so privileged commands are refused" in reply


async def test_whoami_in_membership_mode(chat: Chat, maubot_plugin_config: Any) -> None:
    maubot_plugin_config["identity.mode"] = "membership"
    reply = await chat.ask("!bastion whoami", sender=AUDITOR)
    assert "Roles: auditor." in reply
    assert "active (checked live as membership of this room)" in reply


async def test_whoami_only_in_control_rooms(chat: Chat) -> None:
    assert await chat.ask("!bastion whoami", room=OTHER_ROOM) == (
        "Commands are accepted only in a control room."
    )


async def test_help_lists_what_the_sender_may_use(chat: Chat) -> None:
    operator = await chat.ask("!bastion help")
    assert "!token generate [--uses N]" in operator and "!guest deactivate" in operator
    assert "!audit" not in operator
    assert "`!bastion whoami` — your roles" in operator
    assert "`!bastion help` — the commands" in operator
    assert "!guest extend <@guest:dmz> <DURATION>" in operator
    assert operator.count("●") == 10

    auditor = await chat.ask("!bastion help", sender=AUDITOR)
    assert "!audit verify" in auditor and "!audit export" in auditor
    assert "!audit [--user @x] [--since 7d] [--limit N]" in auditor
    assert "!token" not in auditor

    nobody = await chat.ask("!bastion help", sender=NOBODY)
    assert "!token" not in nobody and "!audit" not in nobody
    assert "You hold no role here" in nobody


async def test_help_takes_no_arguments(chat: Chat) -> None:
    reply = await chat.ask("!bastion help me")
    assert reply.startswith("Unexpected 'me'.")
    assert "**Usage:** `!bastion help`" in reply


async def test_bastion_alone_answers_its_usage(chat: Chat) -> None:
    reply = await chat.ask("!bastion")
    assert reply.startswith("`!bastion` knows:")
    assert "`!bastion help` — the commands" in reply and "`!bastion whoami`" in reply
    assert "!token" not in reply, "without a prefix the families are not under !bastion"
    [entry] = await chat.audit()
    assert (entry.command, entry.outcome) == ("bastion", "ok")


async def test_an_unknown_bastion_subcommand_is_refused_and_audited(chat: Chat) -> None:
    reply = await chat.ask("!bastion token generate")
    assert reply.startswith("Unknown subcommand `token`. `!bastion` knows:")
    [entry] = await chat.audit()
    assert (entry.command, entry.outcome) == ("bastion", "refused")
    assert entry.detail == "unknown subcommand token"


async def test_bare_help_and_whoami_are_off_by_default(chat: Chat) -> None:
    for body in ("!help", "!whoami"):
        await chat.send(body)
    assert chat.test_bot.responded == []
    assert await chat.audit() == [], "another bot's command is not Bastion's to audit"


async def test_bare_aliases_answer_when_turned_on(chat: Chat, maubot_plugin_config: Any) -> None:
    maubot_plugin_config["commands.bare_aliases"] = True
    assert (await chat.ask("!whoami")).startswith(f"You are {STAFF}.")
    help_text = await chat.ask("!help")
    assert help_text.startswith("Commands you may use:")
    assert "`!bastion help` — the commands" in help_text
    assert "`!help`" not in help_text, "help shows the one spelling, not the alias"
    reply = await chat.ask("!help me")
    assert "**Usage:** `!bastion help`" in reply
    entries = await chat.audit()
    assert [(e.command, e.outcome) for e in reversed(entries)] == [
        ("bastion whoami", "ok"),
        ("bastion help", "ok"),
        ("bastion help", "refused"),
    ]


async def test_a_prefix_puts_every_family_under_it(
    chat: Chat, maubot_plugin_config: Any, registrar: FakeRegistrar
) -> None:
    maubot_plugin_config["commands.prefix"] = "bastion"
    reply = await chat.ask("!bastion token generate --uses 2")
    assert reply.startswith("Token `") and "2 uses" in reply
    assert (await chat.ask("!bastion audit verify", sender=AUDITOR)).startswith(
        "The audit trail is intact: "
    )
    help_text = await chat.ask("!bastion help")
    assert "`!bastion token generate [--uses N]" in help_text
    assert "`!bastion guest deactivate <@guest:dmz> [--yes]`" in help_text
    assert "`!bastion whoami` — your roles" in help_text
    assert "`!token" not in help_text
    entries = await chat.audit()
    assert [e.command for e in reversed(entries)] == [
        "token generate",
        "audit verify",
        "bastion help",
    ]


async def test_with_a_prefix_the_bare_family_names_are_not_answered(
    chat: Chat, maubot_plugin_config: Any, registrar: FakeRegistrar
) -> None:
    maubot_plugin_config["commands.prefix"] = "bastion"
    maubot_plugin_config["commands.bare_aliases"] = True
    for body in ("!token generate", "!guest list", "!audit verify", "!sbg rule list", "!help"):
        await chat.send(body, sender=AUDITOR if "audit" in body else STAFF)
    assert chat.test_bot.responded == []
    assert await chat.audit() == []
    assert registrar.requests == []


async def test_replies_name_commands_as_they_are_typed_under_a_prefix(
    chat: Chat, maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["commands.prefix"] = "ops"
    assert await chat.ask("!ops audit verify") == (
        "You need the auditor role to use `!ops audit verify`."
    )
    reply = await chat.ask("!ops token generate --uses many")
    assert "**Usage:** `!ops token generate [--uses N]" in reply
    reply = await chat.ask("!ops token frobnicate")
    assert reply.startswith("Unknown subcommand `frobnicate`. `!ops token` knows:")
    assert "`!ops token list [--all] [--mine]`" in reply
    usage = await chat.ask("!ops")
    assert usage.startswith("`!ops` knows:")
    assert "`!ops help`" in usage and "`!ops token <subcommand> [...]`" in usage
    assert "!ops audit" not in usage, "the operator holds no auditor role"
    assert await chat.ask("!ops nothing") == (
        "Unknown subcommand `nothing`. `!ops` knows:\n\n" + usage.split("\n\n", 1)[1]
    )
    await chat.send("!bastion help")
    entries = await chat.audit()
    assert [(e.command, e.outcome) for e in reversed(entries)] == [
        ("audit verify", "refused"),
        ("token generate", "refused"),
        ("token", "refused"),
        ("bastion", "ok"),
        ("bastion", "refused"),
    ], "a second Bastion's !bastion help is not answered by this one"


async def test_a_bad_prefix_is_reported(bot: BastionBot) -> None:
    config = bot.config
    assert config.problems() == []
    for prefix in ("two words", "token", "!b"):
        config["commands.prefix"] = prefix
        [problem] = config.problems()
        assert problem.startswith("commands.prefix must be one lowercase word"), prefix
    config["commands.prefix"] = "Bastion-A"
    config["commands.bare_aliases"] = True
    assert config.command_prefix == "bastion-a"
    assert config.problems() == ["commands.bare_aliases is ignored while commands.prefix is set"]
