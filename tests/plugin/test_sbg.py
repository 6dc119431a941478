"""``!sbg``: gateway rules, presets, dry runs and decisions, against the real gateway routes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from mautrix.types import UserID

from dmz_api.gateway.policy.rules import LEDGER_EVENT_TYPES
from plugin.commands.sbg.args import DryRunClientArgs, RuleAddArgs
from plugin.commands.sbg.render import broad_effects, describe_params, match_all
from plugin.dmz import GatewayRule
from plugin.syntax import ArgumentSyntaxError

from .conftest import AUDITOR, NOBODY, SECURITY, STAFF, Chat, gateway_admin_config
from .fake_gateway import OTHER_ADMIN, GatewayDouble
from .fakes import FakeHomeserver

ENCRYPTION_STATE = "/_matrix/client/v3/rooms/!r:corp.example/state/m.room.encryption/"


@pytest.fixture
def maubot_plugin_config_dict(
    maubot_plugin_config_dict: dict[str, Any], gateway: GatewayDouble, homeserver: FakeHomeserver
) -> dict[str, Any]:
    return gateway_admin_config(maubot_plugin_config_dict, gateway, homeserver)


async def ask(chat: Chat, body: str, sender: UserID = SECURITY) -> str:
    return await chat.ask(body, sender=sender)


def added_id(reply: str) -> str:
    match = re.search(r"Rule `([^`]+)`", reply)
    assert match, reply
    return match.group(1)


# ---- reading --------------------------------------------------------------------------


async def test_rule_list_is_a_table_for_admins_and_auditors(
    chat: Chat, gateway: GatewayDouble
) -> None:
    assert await ask(chat, "!sbg rule list") == (
        "Ruleset version 0 has no rules: the gateway refuses only malformed requests."
    )
    await gateway.add("partners", "server_allow", {"servers": ["partner.example.org"]})
    await gateway.add(
        "no-e2ee",
        "event_type_block",
        {"event_types": ["m.room.encryption"], "scope": "client"},
        mode="audit",
        note="INC-42 `oops` <b>",
    )
    version = await gateway.version()
    for sender in (SECURITY, AUDITOR):
        reply = await ask(chat, "!sbg rule list", sender)
        assert reply.startswith(
            f"Ruleset version {version}: 2 rules, 1 enforced, 1 in audit mode, 0 disabled."
        )
        assert re.search(r"ID\s+KIND\s+PARAMS\s+MODE\s+ENABLED\s+PRIORITY\s+NOTE", reply)
        assert re.search(
            r"partners\s+server_allow\s+partner\.example\.org\s+enforce\s+yes\s+100", reply
        )
        assert re.search(
            r"no-e2ee\s+event_type_block\s+m\.room\.encryption \(client\)\s+audit", reply
        )
        assert "INC-42 'oops' <b>" in reply
        html = chat.last.formatted_body
        assert "<pre><code" in html and "<b>" not in html
    entries = await chat.audit()
    assert [e.detail for e in entries[:2]] == [f"version {version}; 2 rules"] * 2
    assert {e.command for e in entries} == {"sbg rule list"}


async def test_history_names_who_changed_what(chat: Chat, gateway: GatewayDouble) -> None:
    await gateway.add(
        "partners", "server_allow", {"servers": ["partner.example.org"]}, mode="audit"
    )
    await ask(chat, "!sbg rule promote partners --yes")
    reply = await ask(chat, "!sbg rule history --limit 5")
    newest, oldest, initial = reply.split("\n")
    assert newest.startswith("● **Version 2**, ")
    assert initial.endswith(": initial empty ruleset")
    assert f"by {SECURITY}: promote rule partners to enforce" in newest
    assert "changed `partners`: mode audit → enforce" in newest
    assert f"by {OTHER_ADMIN}" in oldest
    assert "added `partners` (server_allow partner.example.org) in audit mode" in oldest
    assert gateway.calls("GET", "/v1/rules/history")[-1].query == {"limit": "5"}
    assert f'href="https://matrix.to/#/{SECURITY}"' in chat.last.formatted_body


# ---- adding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "params"),
    [
        (
            "server_block evil.example *.bad.example",
            {"servers": ["evil.example", "*.bad.example"]},
        ),
        (
            "event_type_block m.room.encryption --scope client",
            {"event_types": ["m.room.encryption"], "scope": "client"},
        ),
        (
            "partner_scope partner.example.org --rooms !a:x,!b:x --types m.room.message",
            {
                "servers": ["partner.example.org"],
                "rooms": ["!a:x", "!b:x"],
                "event_types": ["m.room.message"],
            },
        ),
        (
            'client_allow --user-agent "^Element/" --network 10.0.0.0/8 '
            '--user-agent "Element Desktop"',
            {"user_agents": ["^Element/", "Element Desktop"], "networks": ["10.0.0.0/8"]},
        ),
        (
            "server_allow partner.example.org *.gov.example --audit",
            {"servers": ["partner.example.org", "*.gov.example"]},
        ),
    ],
)
async def test_rule_add_maps_to_the_rule_params(
    chat: Chat, gateway: GatewayDouble, command: str, params: dict[str, Any]
) -> None:
    reply = await ask(chat, f"!sbg rule add {command} --priority 50 --note from chat")
    [write] = gateway.writes
    assert (write.method, write.path) == ("POST", "/v1/rules")
    assert write.headers["If-Match"] == '"0"'
    assert write.headers["X-Acting-User"] == SECURITY
    assert write.body["params"] == params
    assert (write.body["priority"], write.body["note"]) == (50, "from chat")
    assert write.body.get("mode", "enforce") == ("audit" if "--audit" in command else "enforce")
    rule_id = added_id(reply)
    assert reply.endswith("the ruleset is now version 1.")
    stored = (await gateway.rules())[rule_id]
    assert stored["author"] == SECURITY and stored["priority"] == 50
    [entry] = await chat.audit()
    assert (entry.command, entry.outcome) == ("sbg rule add", "ok")
    assert entry.detail == f"version 0 -> 1; added {rule_id}"


async def test_rule_add_audit_mode_says_so(chat: Chat) -> None:
    reply = await ask(chat, "!sbg rule add server_block evil.example --audit")
    assert "added in audit mode (it records, it does not refuse)" in reply


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("server_allow", "server_allow needs at least one server name or glob"),
        ("frobnicate x", "Unknown rule kind 'frobnicate'; it is one of server_allow, "),
        ("", "The rule kind is missing; it is one of server_allow, "),
        ("partner_scope partner.example.org", "partner_scope needs --rooms and/or --types"),
        ("client_allow", "client_allow needs --user-agent REGEX and/or --network CIDR."),
        ("event_type_block m.room.encryption --scope all", "--scope must be one of client, "),
        ("server_block a.example --priority -1", "--priority must be a whole number from 0 "),
        ("server_block a.example --priority", "--priority needs a value."),
        ("server_block a.example --frob", "Unknown option --frob."),
    ],
)
async def test_rule_add_bad_syntax_shows_usage(
    chat: Chat, gateway: GatewayDouble, command: str, message: str
) -> None:
    reply = await ask(chat, f"!sbg rule add {command}")
    assert reply.startswith(message), reply
    assert "**Usage:** `!sbg rule add <kind> <params...> [--audit]" in reply
    assert gateway.requests == []
    [entry] = await chat.audit()
    assert entry.outcome == "refused" and entry.detail.startswith("bad syntax: ")


@pytest.mark.parametrize(
    ("command", "error", "usage"),
    [
        (
            "server_allow not_a/server",
            "params.servers: 'not_a/server' is not a server name or glob",
            "server_allow <server> [<server> ...]",
        ),
        (
            "client_allow --network 10.0.0.0/33",
            "params.networks: '10.0.0.0/33' is not a CIDR network",
            'client_allow [--user-agent "REGEX"] ... [--network CIDR] ...',
        ),
        (
            "partner_scope p.example --rooms general",
            "params.rooms: 'general' is not a room ID (!...)",
            "partner_scope <server> [...]",
        ),
    ],
)
async def test_rule_add_relays_the_gateways_400(
    chat: Chat, gateway: GatewayDouble, command: str, error: str, usage: str
) -> None:
    reply = await ask(chat, f"!sbg rule add {command} --audit")
    assert reply.startswith("The gateway refused the rule: ")
    assert error in reply
    assert f"**Usage:** `!sbg rule add {usage}" in reply
    assert await gateway.rules() == {}
    [entry] = await chat.audit()
    assert (entry.outcome, entry.detail) == ("failed", "version 0; 400 M_INVALID_PARAM")


# ---- broad changes ask first ------------------------------------------------------------


async def test_first_enforced_server_allow_asks_then_a_reaction_confirms(
    chat: Chat, gateway: GatewayDouble
) -> None:
    command = await chat.send(
        "!sbg rule add server_allow partner.example.org *.gov.example", sender=SECURITY
    )
    prompt = chat.last.body
    assert prompt.startswith(
        "Add a server_allow rule for partner.example.org, *.gov.example to ruleset version 0? "
        "Federation will be refused from every server except `partner.example.org`, "
        "`*.gov.example`."
    )
    assert "React with ✅" in prompt
    assert gateway.writes == []

    await chat.react(command, sender=STAFF)
    assert gateway.writes == [], "only the requester can confirm"
    await chat.react(command, sender=SECURITY)
    [write] = gateway.writes
    assert write.headers["If-Match"] == '"0"'
    assert chat.last.body.endswith("the ruleset is now version 1.")
    assert chat.last.relates_to.in_reply_to.event_id == command
    confirm, ask_entry = await chat.audit()
    assert (ask_entry.detail, ask_entry.outcome) == ("awaiting confirmation", "ok")
    assert confirm.parsed_args["confirmed"] == "reaction"
    assert confirm.detail.startswith("version 0 -> 1; added r")


async def test_removing_the_last_server_allow_asks(chat: Chat, gateway: GatewayDouble) -> None:
    await gateway.add("a", "server_allow", {"servers": ["a.example"]})
    await gateway.add("b", "server_allow", {"servers": ["b.example"]})
    reply = await ask(chat, "!sbg rule remove a")
    assert reply == "Rule `a` (server_allow a.example) removed; the ruleset is now version 3."

    reply = await ask(chat, "!sbg rule remove b")
    assert reply.startswith(
        "Remove rule `b` (server_allow b.example) from ruleset version 3? Federation will no "
        "longer be limited to listed servers: every server that is not blocked may federate."
    )
    assert "b" in await gateway.rules()
    reply = await ask(chat, "!sbg rule remove b --yes")
    assert reply.endswith("the ruleset is now version 4.")
    assert await gateway.rules() == {}
    entries = await chat.audit()
    assert entries[0].detail == "version 3 -> 4; removed b"


async def test_disabling_the_last_server_allow_asks_but_an_audit_one_does_not(
    chat: Chat, gateway: GatewayDouble
) -> None:
    await gateway.add("a", "server_allow", {"servers": ["a.example"]})
    await gateway.add("watch", "server_allow", {"servers": ["b.example"]}, mode="audit")
    assert "Federation will no longer be limited" in await ask(chat, "!sbg rule disable a")
    reply = await ask(chat, "!sbg rule disable watch")
    assert reply.startswith("Rule `watch` (server_allow b.example) is disabled;")
    assert (await gateway.rules())["watch"]["enabled"] is False
    assert await ask(chat, "!sbg rule disable watch") == (
        "Rule `watch` was already disabled; nothing changed (ruleset version 3)."
    )
    assert (await chat.audit())[0].detail == "version 3, unchanged"
    reply = await ask(chat, "!sbg rule enable watch")
    assert reply.endswith("the ruleset is now version 4.")


@pytest.mark.parametrize(
    ("command", "effect"),
    [
        ("server_block *", "Federation with every server will be refused (server_block `*`)."),
        ("server_allow *", "Every server will be allowed to federate (server_allow `*`)"),
    ],
)
async def test_star_rules_ask(
    chat: Chat, gateway: GatewayDouble, command: str, effect: str
) -> None:
    await gateway.add("a", "server_allow", {"servers": ["a.example"]})
    reply = await ask(chat, f"!sbg rule add {command}")
    assert effect in reply and "React with ✅" in reply
    assert len(await gateway.rules()) == 1
    reply = await ask(chat, f"!sbg rule add {command} --yes")
    assert reply.endswith("the ruleset is now version 2.")


async def test_promote_shows_what_it_would_refuse_and_waits(
    chat: Chat, gateway: GatewayDouble
) -> None:
    await gateway.add("watch", "server_block", {"servers": ["evil.example"]}, mode="audit")
    for _ in range(3):
        await gateway.decide(origin="evil.example")
    await gateway.decide(origin="fine.example")
    await gateway.flush()
    command = await chat.send("!sbg rule promote watch", sender=SECURITY)
    prompt = chat.last.body
    assert prompt.startswith(
        "Promote rule `watch` (server_block evil.example) from audit to enforce in ruleset "
        "version 1? Requests it now only records will be refused: in the last 24 hours it "
        "would have refused 3 requests."
    )
    [query] = gateway.calls("GET", "/v1/decisions")
    assert query.query == {
        "decision": "would_block",
        "rule": "watch",
        "since": "86400s",
        "limit": "1000",
    }
    assert (await gateway.rules())["watch"]["mode"] == "audit"
    await chat.react(chat.test_bot.sent_ids[-1], sender=SECURITY)
    assert (await gateway.rules())["watch"]["mode"] == "enforce"
    assert chat.last.body == (
        "Rule `watch` (server_block evil.example) is now enforced; the ruleset is now version 2."
    )
    assert chat.last.relates_to.in_reply_to.event_id == command
    assert (await chat.audit())[0].detail == "version 1 -> 2; promoted watch"
    assert await ask(chat, "!sbg rule promote watch") == (
        "Rule `watch` was already enforced; nothing changed (ruleset version 2)."
    )


# ---- versions -----------------------------------------------------------------------------


async def test_stale_version_is_reported_and_nothing_applied(
    chat: Chat, gateway: GatewayDouble
) -> None:
    await gateway.add("a", "server_block", {"servers": ["a.example"]})

    async def someone_else(double: GatewayDouble) -> None:
        await double.add("b", "server_block", {"servers": ["b.example"]})

    gateway.before_write = someone_else
    reply = await ask(chat, "!sbg rule disable a")
    assert reply == (
        "Someone else changed the gateway rules after you looked (you saw version 1, it is "
        f"now version 2, changed by {OTHER_ADMIN}); nothing was applied. Check "
        "`!sbg rule list` and try again."
    )
    assert (await gateway.rules())["a"]["enabled"] is True
    [write] = gateway.writes
    assert write.headers["If-Match"] == '"1"'
    [entry] = await chat.audit()
    assert (entry.outcome, entry.detail) == (
        "failed",
        "stale version 1, now 2; nothing applied",
    )


async def test_a_confirmation_after_someone_else_changed_applies_nothing(
    chat: Chat, gateway: GatewayDouble
) -> None:
    await gateway.add("a", "server_allow", {"servers": ["a.example"]})
    command = await chat.send("!sbg rule remove a", sender=SECURITY)
    await gateway.add("b", "server_block", {"servers": ["b.example"]})
    await chat.react(command, sender=SECURITY)
    assert "you saw version 1, it is now version 2" in chat.last.body
    assert "a" in await gateway.rules()


async def test_conflicts_other_than_versions_are_relayed(
    chat: Chat, gateway: GatewayDouble
) -> None:
    await gateway.add("compliance-ledger", "server_block", {"servers": ["x.example"]})
    reply = await ask(chat, "!sbg preset compliance-ledger")
    assert reply.startswith("The gateway refused the request: Rule compliance")
    assert "exists with another kind" in reply


# ---- presets --------------------------------------------------------------------------


async def test_preset_compliance_ledger(chat: Chat, gateway: GatewayDouble) -> None:
    reply = await ask(chat, "!sbg preset compliance-ledger")
    assert reply == (
        "Preset `compliance-ledger` applied: rule `compliance-ledger` (event_type_block "
        f"{', '.join(LEDGER_EVENT_TYPES)}; actions account.erase, e2ee.keys, "
        "membership.redact_events (both)); the ruleset is now version 1."
    )
    [write] = gateway.writes
    assert (write.path, write.headers["If-Match"]) == ("/v1/rules/preset/compliance-ledger", '"0"')
    assert (await chat.audit())[0].detail == "version 0 -> 1; preset compliance-ledger applied"

    reply = await ask(chat, "!sbg preset compliance-ledger --yes")
    assert reply.startswith("Preset `compliance-ledger` is already in place")
    assert reply.endswith("nothing changed (ruleset version 1).")
    assert (await chat.audit())[0].detail == "version 1, unchanged"

    reply = await ask(chat, "!sbg preset open-season")
    assert reply == (
        "The gateway refused the request: No preset open-season; presets: compliance-ledger"
    )
    assert (await chat.audit())[0].detail == "version 1; 404 M_NOT_FOUND"


# ---- dry runs -------------------------------------------------------------------------


async def test_test_federation_shows_decision_and_trace(chat: Chat, gateway: GatewayDouble) -> None:
    await gateway.add("partners", "server_allow", {"servers": ["partner.example.org"]})
    await gateway.add("ledger", "event_type_block", {"event_types": ["m.room.encryption"]})
    reply = await ask(chat, "!sbg test federation evil.example --type m.room.message --room !r:x")
    [call] = gateway.calls("POST", "/v1/evaluate")
    assert call.body == {
        "class": "federation",
        "origin": "evil.example",
        "room": "!r:x",
        "event_type": "m.room.message",
    }
    first = reply.split("\n")[0]
    assert first.startswith("Dry run against ruleset version 2: **blocked** by rule `partners`")
    assert (
        "Judged as: federation request from evil.example, event types m.room.message, "
        "room !r:x." in reply
    )
    assert re.search(
        r"→\s+partners\s+server_allow\s+enforce\s+not_listed\s+origin not listed", reply
    )
    assert re.search(r"\n\s+ledger\s+event_type_block\s+enforce\s+pass", reply)
    assert (await chat.audit())[0].detail == "version 2; block by partners"

    reply = await ask(chat, "!sbg test federation partner.example.org")
    assert "**allowed** by rule `partners` (enforce)" in reply


async def test_test_client_by_user_agent_and_by_user(chat: Chat, gateway: GatewayDouble) -> None:
    await ask(chat, "!sbg preset compliance-ledger")
    reply = await ask(chat, f"!sbg test client --user-agent Element/1.11 PUT {ENCRYPTION_STATE}")
    assert call_body(gateway) == {
        "method": "PUT",
        "path": ENCRYPTION_STATE,
        "user_agent": "Element/1.11",
    }
    assert "**blocked** by rule `compliance-ledger` (enforce)" in reply
    assert (
        "Judged as: client request, PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}, "
        "event types m.room.encryption, room !r:corp.example, user agent Element/1.11." in reply
    )

    reply = await ask(chat, "!sbg test client @alice:corp.example get /_matrix/client/v3/sync")
    assert call_body(gateway) == {
        "method": "GET",
        "path": "/_matrix/client/v3/sync",
        "user": "@alice:corp.example",
    }
    assert "**allowed**" in reply


def call_body(gateway: GatewayDouble) -> Any:
    return gateway.calls("POST", "/v1/evaluate")[-1].body


async def test_test_client_needs_a_user_or_agent_and_a_path(chat: Chat) -> None:
    reply = await ask(chat, "!sbg test client PUT /x")
    assert reply.startswith("Give the user (@alice:corp.example) or --user-agent.")
    assert "**Usage:** `!sbg test client <@user|--user-agent UA> <METHOD> <path>" in reply
    reply = await ask(chat, "!sbg test client @a:corp.example PUT relative/path")
    assert reply.startswith("The path must start with /")
    reply = await ask(chat, "!sbg test client @a:corp.example FETCH /x")
    assert reply.startswith("The HTTP method must be one of GET, ")


# ---- decisions ------------------------------------------------------------------------


async def test_decisions_with_filters(chat: Chat, gateway: GatewayDouble) -> None:
    await gateway.add("partners", "server_allow", {"servers": ["partner.example.org"]})
    await gateway.decide(origin="evil.example", event_types=("m.room.message",), room="!r:x")
    await gateway.decide(origin="partner.example.org")
    await gateway.flush()
    reply = await ask(chat, "!sbg decisions --blocked --since 1h --origin Evil.Example --limit 5")
    assert gateway.calls("GET", "/v1/decisions")[-1].query == {
        "decision": "block",
        "origin": "evil.example",
        "since": "3600s",
        "limit": "5",
    }
    assert reply.startswith(
        "The last 1 decision (blocked only, since 1h ago, origin evil.example), newest first "
        "(ruleset now at version 1):"
    )
    assert (
        " **block** federation from evil.example `PUT /_matrix/federation/v1/send/{txnId}` "
        "m.room.message in !r:x — rule `partners` (enforce), version 1" in reply
    )
    assert (await chat.audit())[0].detail == "version 1; 1 decision"

    reply = await ask(chat, "!sbg decisions", AUDITOR)
    assert reply.startswith("The last 2 decisions, newest first")
    assert gateway.calls("GET", "/v1/decisions")[-1].query == {"limit": "20"}
    assert await ask(chat, "!sbg decisions --origin nobody.example") == (
        "No decisions (origin nobody.example)."
    )


# ---- who may, and failures --------------------------------------------------------------


async def test_roles(chat: Chat, gateway: GatewayDouble) -> None:
    assert await ask(chat, "!sbg rule list", STAFF) == (
        "You need the gateway_admin or auditor role to use `!sbg rule list`."
    )
    assert await ask(chat, "!sbg rule add server_block x.example", AUDITOR) == (
        "You need the gateway_admin role to use `!sbg rule add`."
    )
    assert await ask(chat, "!sbg test federation x.example", AUDITOR) == (
        "You need the gateway_admin role to use `!sbg test federation`."
    )
    assert await ask(chat, "!sbg preset compliance-ledger", NOBODY) == (
        "You need the gateway_admin role to use `!sbg preset`."
    )
    assert gateway.requests == []
    entries = await chat.audit()
    assert [e.outcome for e in entries] == ["refused"] * 4


async def test_group_commands_list_what_the_sender_may_use(chat: Chat) -> None:
    reply = await ask(chat, "!sbg")
    assert reply.startswith("`!sbg` knows:")
    assert "`!sbg rule add <kind> <params...> [--audit] [--priority N] [--note TEXT]" in reply
    assert "`!sbg test client <@user|--user-agent UA> <METHOD> <path> [--ip ADDRESS]`" in reply
    reply = await ask(chat, "!sbg rule", AUDITOR)
    assert (
        reply
        == "`!sbg rule` knows:\n\n● `!sbg rule list` — the rules in pipeline order, as a table"
        "\n● `!sbg rule export` — the whole ruleset as one YAML document (policy as code)"
    )
    reply = await ask(chat, "!sbg rule frob")
    assert reply.startswith("Unknown subcommand `frob`. `!sbg rule` knows:")
    [entry] = (await chat.audit())[:1]
    assert (entry.outcome, entry.detail) == ("refused", "unknown subcommand frob")


async def test_help_lists_sbg_by_role(chat: Chat) -> None:
    admin = await ask(chat, "!bastion help")
    for line in (
        "`!sbg rule list`",
        "`!sbg rule add <kind>",
        "`!sbg rule remove <id> [--yes]`",
        "`!sbg rule promote <id> [--yes]`",
        "`!sbg rule history [--limit N]`",
        "`!sbg preset compliance-ledger`",
        "`!sbg test federation <origin> [--room R] [--type T]`",
        "`!sbg status`",
        "`!sbg decisions [--blocked|--allows] [--since 1h] [--origin X] [--limit N]`",
    ):
        assert line in admin, line
    assert "!token" not in admin
    auditor = await ask(chat, "!bastion help", AUDITOR)
    assert "`!sbg rule list`" in auditor and "`!sbg decisions" in auditor
    assert "rule add" not in auditor and "!sbg test" not in auditor
    assert "!sbg" not in await ask(chat, "!bastion help", STAFF)


async def test_gateway_timeout_changes_nothing(
    chat: Chat, gateway: GatewayDouble, maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["dmz.timeout"] = "1s"
    gateway.delay = 1.5
    reply = await ask(chat, "!sbg rule add server_block evil.example")
    assert reply == "The gateway did not answer in 1 s; nothing was changed."
    [entry] = await chat.audit()
    assert (entry.outcome, entry.detail) == ("failed", "gateway unavailable: timeout")
    assert entry.request_id == gateway.requests[0].headers["X-Request-Id"]


async def test_write_timeout_is_audited_with_the_version_before(
    chat: Chat, gateway: GatewayDouble, maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["dmz.timeout"] = "1s"

    async def slow(double: GatewayDouble) -> None:
        double.delay = 1.5

    gateway.before_write = slow
    reply = await ask(chat, "!sbg preset compliance-ledger")
    assert reply == "The gateway did not answer in 1 s; nothing was changed."
    [entry] = await chat.audit()
    assert (entry.outcome, entry.detail) == ("failed", "version 0; gateway unavailable: timeout")


async def test_gateway_down_and_broken(
    chat: Chat, gateway: GatewayDouble, maubot_plugin_config: Any
) -> None:
    gateway.fail = (500, {"errcode": "M_UNKNOWN", "error": "boom"})
    reply = await ask(chat, "!sbg rule remove a --yes")
    assert reply == "The gateway failed (HTTP 500); nothing was changed."
    assert (await chat.audit())[0].detail == "500 M_UNKNOWN"

    maubot_plugin_config["dmz.gateway_url"] = "http://127.0.0.1:9"
    reply = await ask(chat, "!sbg rule list", AUDITOR)
    assert reply == "The gateway did not answer in 10 s; nothing was changed."
    assert (await chat.audit())[0].detail.startswith("gateway unavailable: Client")


async def test_unknown_rule(chat: Chat, gateway: GatewayDouble) -> None:
    assert await ask(chat, "!sbg rule promote nope --yes") == (
        "Ruleset version 0 has no rule `nope`."
    )
    assert gateway.writes == []
    reply = await ask(chat, "!sbg rule remove ../etc")
    assert reply.startswith("A rule id is letters, digits")


# ---- units ----------------------------------------------------------------------------


def rule(rule_id: str, kind: str, servers: list[str], **kw: Any) -> GatewayRule:
    fields = {"mode": "enforce", "enabled": True, "priority": 100, "note": "", "author": ""}
    return GatewayRule(id=rule_id, kind=kind, params={"servers": servers}, **(fields | kw))


def test_broad_effects() -> None:
    allow = rule("a", "server_allow", ["a.example"])
    audit_allow = rule("b", "server_allow", ["*"], mode="audit")
    block = rule("c", "server_block", ["evil.example"])
    assert broad_effects([], [block]) == []
    assert broad_effects([allow], [allow, block]) == []
    assert broad_effects([], [audit_allow]) == []
    assert broad_effects([allow], []) == [
        "Federation will no longer be limited to listed servers: every server that is not "
        "blocked may federate."
    ]
    assert broad_effects([], [allow]) == [
        "Federation will be refused from every server except `a.example`."
    ]
    star = rule("s", "server_allow", ["*"])
    assert broad_effects([allow], [allow, star])[0].startswith("Every server will be allowed")
    assert broad_effects([allow, star], [allow]) == [
        "Federation will be refused from every server except `a.example`."
    ]
    star_block = rule("x", "server_block", ["*:*"])
    assert broad_effects([star_block], []) == [
        "The block of every server (server_block `*`) will be lifted."
    ]
    many = rule("m", "server_allow", [f"s{i}.example" for i in range(12)])
    assert broad_effects([], [many])[0].endswith("`s9.example` and 2 more.")


def test_match_all() -> None:
    assert match_all("*") and match_all("**") and match_all("*:*") and match_all("*:8448")
    assert not match_all("*.example") and not match_all("?") and not match_all("a*")


def test_parsing() -> None:
    args = RuleAddArgs.parse("server_allow a.example,b.example c.example --note two words --audit")
    assert args.params == {"servers": ["a.example", "b.example", "c.example"]}
    assert (args.note, args.audit) == ("two words", True)
    assert RuleAddArgs.parse("server_block x.example —yes").yes
    with pytest.raises(ArgumentSyntaxError):
        RuleAddArgs.parse("client_allow --user-agent")
    assert DryRunClientArgs.parse("@a:b.example post /x --ip 10.1.2.3").ip == "10.1.2.3"
    assert describe_params("partner_scope", {"servers": ["p"], "rooms": ["!r"]}) == "p; rooms !r"
    assert describe_params("odd", {"x": 1}) == '{"x": 1}'


# ---- status and allow counts (the decision log at volume) -----------------------------


async def test_status_shows_version_mode_degraded_and_dropped(
    chat: Chat, gateway: GatewayDouble
) -> None:
    await gateway.add("partners", "server_allow", {"servers": ["partner.example.org"]})
    reply = await ask(chat, "!sbg status", AUDITOR)
    assert gateway.calls("GET", "/v1/status")
    assert [line for line in reply.splitlines() if line][:4] == [
        "The gateway enforces ruleset version 1.",
        "● allows recorded: full",
        "● decision log not degraded",
        "● dropped records: 0; waiting to be written: 0",
    ]
    log = gateway.service.decision_log
    log.degraded, log.free_bytes = True, 300 * 1024**2
    log._full_allows = False  # as check_disk sets it below the floor
    reply = await ask(chat, "!sbg status")
    assert "● allows recorded: aggregate" in reply
    assert (
        "● decision log **degraded**: disk space below the floor (300 MiB free); allows"
        " aggregated (configured: full), every block still recorded" in reply
    )
    assert (await chat.audit())[0].detail == "version 1; degraded True"
    assert await ask(chat, "!sbg status", STAFF) == (
        "You need the gateway_admin or auditor role to use `!sbg status`."
    )


async def test_decisions_allows_reads_the_per_minute_counts(
    chat: Chat, gateway: GatewayDouble
) -> None:
    log = gateway.service.decision_log
    log._full_allows = False  # allow: aggregate
    for _ in range(3):
        await gateway.decide(origin="partner.example.org", room="!r:x")
    await gateway.flush()
    reply = await ask(chat, "!sbg decisions --allows --origin partner.example.org")
    assert gateway.calls("GET", "/v1/decisions")[-1].query == {
        "kind": "aggregate",
        "origin": "partner.example.org",
        "limit": "20",
    }
    assert reply.startswith("3 allows in the last 1 count, newest first:")
    assert "**3 allowed** federation from partner.example.org `PUT`" in reply
    reply = await ask(chat, "!sbg decisions --allows --blocked")
    assert reply.startswith("Give --blocked or --allows, not both.\n **Usage:**")
