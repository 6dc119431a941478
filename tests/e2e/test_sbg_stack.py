"""``!sbg`` for real: internal Synapse, maubot running the plugin, dmz_api's gateway role.

Security staff change the gateway's rules from the control room as a Matrix client would;
the gateway's forward-auth endpoint stands in for the edge proxy that records decisions.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.dmz import DmzApi
from devstack.matrix import MatrixUser
from devstack.process import http_json
from devstack.stack import control_room, plugin_config, start_bot, wait_answering
from devstack.synapse import Synapse
from dmz_api.gateway.policy.rules import LEDGER_EVENT_TYPES

pytestmark = pytest.mark.slow

RULE_ID = re.compile(r"Rule `([^`]+)`")


class SbgStack:
    """The control room with a security user, an operator and an auditor, and the gateway."""

    def __init__(self, workdir: Path, internal: Synapse) -> None:
        self.workdir = workdir
        self.internal = internal
        self.prefix = f"g{secrets.token_hex(3)}"
        self.password = secrets.token_urlsafe(12)

    def user(self, suffix: str) -> MatrixUser:
        return MatrixUser.register(self.internal, f"{self.prefix}{suffix}", self.password)

    def start(self) -> SbgStack:
        self.bot = self.user("bot")
        self.security = self.user("sec")
        self.operator = self.user("op")
        self.auditor = self.user("aud")
        self.room = control_room(
            self.security, self.operator, self.auditor, name="Bastion security"
        )
        self.gateway = DmzApi(
            self.workdir / "gateway",
            {
                "log_level": "WARNING",
                "gateway": {
                    "server_name": self.internal.server_name,
                    "decision_log": {"flush_interval": 0.05, "allow": "full"},
                    "reload_interval": 0.2,
                },
            },
            name="gateway",
        ).start()
        config = plugin_config(
            self.room,
            self.internal,
            operators=[self.operator.user_id],
            gateway_admins=[self.security.user_id],
            auditors=[self.auditor.user_id],
            registrar_url=self.gateway.base_url,
            gateway_url=self.gateway.base_url,
            api_key=self.gateway.api_key,
            sweep_interval=0,
        )
        config["dmz"]["timeout"] = "5s"
        self.maubot = start_bot(
            self.workdir, self.internal, self.bot, self.room, self.security, config
        )
        return self

    def stop(self) -> None:
        self.maubot.stop()
        self.gateway.stop()

    def federation_request(self, origin: str) -> int:
        """What an edge proxy asks the gateway for a federation transaction from ``origin``."""
        status, _ = http_json(
            "GET",
            f"{self.gateway.base_url}/v1/authz",
            headers={
                "X-Original-Method": "PUT",
                "X-Original-URI": "/_matrix/federation/v1/send/1700000000",
                "Authorization": f'X-Matrix origin="{origin}",key="ed25519:a",sig="x"',
            },
        )
        return status

    def audit(self) -> list[tuple[str, str, str, str]]:
        """(command, sender, outcome, detail) of every !sbg entry in the bot's trail."""
        with sqlite3.connect(self.maubot.workdir / "maubot.db") as db:
            rows = db.execute(
                "SELECT command, sender, outcome, detail FROM audit_log "
                "WHERE command LIKE 'sbg%' ORDER BY seq"
            ).fetchall()
        return [tuple(row) for row in rows]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, internal_synapse: Synapse
) -> Iterator[SbgStack]:
    running = SbgStack(tmp_path_factory.mktemp("sbg-stack"), internal_synapse)
    try:
        yield running.start()
    finally:
        running.stop()


def test_security_staff_run_the_gateway_from_the_room(stack: SbgStack) -> None:
    sec, room = stack.security, stack.room
    reply = sec.ask(room, "!sbg preset compliance-ledger")
    assert reply == (
        "Preset `compliance-ledger` applied: rule `compliance-ledger` (event_type_block "
        f"{', '.join(LEDGER_EVENT_TYPES)}; actions account.erase, e2ee.keys, "
        "membership.redact_events (both)); the ruleset is now version 1."
    )

    reply = sec.ask(room, "!sbg rule add server_allow partner.example.org --audit")
    assert reply.endswith(
        "added in audit mode (it records, it does not refuse); the ruleset is now version 2."
    )
    match = RULE_ID.search(reply)
    assert match, reply
    rule_id = match.group(1)
    assert stack.federation_request("evil.example") == 200, "audit mode only records"

    reply = sec.ask(room, f"!sbg rule promote {rule_id} --yes")
    assert reply == (
        f"Rule `{rule_id}` (server_allow partner.example.org) is now enforced; the ruleset is "
        "now version 3."
    )
    assert stack.federation_request("evil.example") == 403
    assert stack.federation_request("partner.example.org") == 200

    reply = sec.ask(room, "!sbg test federation evil.example --type m.room.message")
    assert reply.startswith(
        f"Dry run against ruleset version 3: **blocked** by rule `{rule_id}` (enforce)"
    )
    assert re.search(rf"→\s+{rule_id}\s+server_allow\s+enforce\s+not_listed", reply)
    assert re.search(r"compliance-ledger\s+event_type_block\s+enforce\s+pass", reply)

    reply = sec.ask(room, "!sbg rule list")
    assert reply.startswith("Ruleset version 3: 2 rules, 2 enforced, 0 in audit mode, 0 disabled.")
    assert re.search(rf"{rule_id}\s+server_allow\s+partner\.example\.org\s+enforce\s+yes", reply)
    assert re.search(r"compliance-ledger\s+event_type_block\s+m\.room\.encryption", reply)

    reply = sec.ask(room, "!sbg decisions --blocked --since 1h")
    assert reply.startswith("The last 1 decision (blocked only, since 1h ago), newest first")
    assert "**block** federation from evil.example" in reply
    assert f"rule `{rule_id}` (enforce), version 3" in reply
    assert "would_block" not in reply
    everything = stack.auditor.ask(room, "!sbg decisions")
    assert "**would_block**" in everything and "**allow**" in everything

    audited = stack.audit()
    mine = [(command, detail) for command, sender, _, detail in audited if sender == sec.user_id]
    assert mine[:3] == [
        ("sbg preset", "version 0 -> 1; preset compliance-ledger applied"),
        ("sbg rule add", f"version 1 -> 2; added {rule_id}"),
        ("sbg rule promote", f"version 2 -> 3; promoted {rule_id}"),
    ]
    assert mine[3:] == [
        ("sbg test federation", f"version 3; block by {rule_id}"),
        ("sbg rule list", "version 3; 2 rules"),
        ("sbg decisions", "version 3; 1 decision"),
    ]


def test_disabling_the_last_allow_waits_for_a_reaction(stack: SbgStack) -> None:
    sec, room = stack.security, stack.room
    added = sec.ask(room, "!sbg rule add server_allow spare.example.org --audit")
    spare = RULE_ID.search(added)
    assert spare
    version = int(added.rsplit("version ", 1)[1].rstrip("."))
    listing = sec.ask(room, "!sbg rule list")
    [allow_id] = [
        rule for rule in re.findall(r"^(\S+)\s+server_allow\s+\S+\s+enforce", listing, re.M)
    ]

    command = sec.send(room, f"!sbg rule disable {allow_id}")
    prompt = sec.wait_reply(room, command)["content"]["body"]
    assert prompt.startswith(f"Disable rule `{allow_id}` (server_allow partner.example.org)")
    assert "Federation will no longer be limited to listed servers" in prompt
    assert "React with ✅" in prompt
    stack.operator.react(room, command)
    sec.react(room, command)
    done = sec.wait_event(
        room,
        lambda e: (
            e["content"]["body"].startswith(f"Rule `{allow_id}` (server_allow partner")
            and " is disabled; " in e["content"]["body"]
        ),
    )
    assert done["content"]["body"].endswith(f"the ruleset is now version {version + 1}.")
    assert stack.federation_request("evil.example") == 200
    entries = [entry for entry in stack.audit() if entry[0] == "sbg rule disable"]
    assert [(outcome, detail) for _, _, outcome, detail in entries] == [
        ("ok", "awaiting confirmation"),
        ("ok", f"version {version} -> {version + 1}; disabled {allow_id}"),
    ]


def test_an_operator_without_the_role_is_refused(stack: SbgStack) -> None:
    op, room = stack.operator, stack.room
    assert op.ask(room, "!sbg rule add server_block evil.example") == (
        "You need the gateway_admin role to use `!sbg rule add`."
    )
    assert op.ask(room, "!sbg rule list") == (
        "You need the gateway_admin or auditor role to use `!sbg rule list`."
    )
    refused = [e for e in stack.audit() if e[1] == op.user_id]
    assert [(c, o, d) for c, _, o, d in refused] == [
        ("sbg rule add", "refused", "missing role gateway_admin"),
        ("sbg rule list", "refused", "missing role gateway_admin or auditor"),
    ]
    assert stack.auditor.ask(room, "!sbg rule list").startswith("Ruleset version ")


def test_gateway_down_is_said_and_audited(stack: SbgStack) -> None:
    stack.gateway.stop()
    try:
        reply = stack.security.ask(stack.room, "!sbg preset compliance-ledger")
        assert reply == "The gateway did not answer in 5 s; nothing was changed."
        command, _, outcome, detail = stack.audit()[-1]
        assert (command, outcome) == ("sbg preset", "failed")
        assert detail.startswith("gateway unavailable: ")
    finally:
        stack.gateway.start()


def test_a_confirmation_survives_a_maubot_restart_and_runs_once(stack: SbgStack) -> None:
    sec, room = stack.security, stack.room
    server = f"restart-{secrets.token_hex(3)}.example"
    added = sec.ask(room, f"!sbg rule add server_block {server} --audit")
    match = RULE_ID.search(added)
    assert match, added
    rule_id = match.group(1)
    command = sec.send(room, f"!sbg rule promote {rule_id}")
    assert "React with ✅" in sec.wait_reply(room, command)["content"]["body"]

    stack.maubot.restart()
    wait_answering(sec, room)
    sec.react(room, command)
    done = sec.wait_event(
        room,
        lambda e: (
            e["content"]["body"].startswith(f"Rule `{rule_id}` (server_block")
            and " is now enforced; " in e["content"]["body"]
        ),
    )
    assert done["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == command
    assert stack.federation_request(server) == 403

    # Another ✅ (the other spelling: Synapse refuses the same annotation twice), after
    # another restart, replays nothing; the answer to the next command comes after it.
    stack.maubot.restart()
    wait_answering(sec, room)
    sec.react(room, command, key="\u2705\ufe0f")
    assert sec.ask(room, "!sbg rule list").startswith("Ruleset version ")
    promotes = [
        (outcome, detail)
        for command_name, _, outcome, detail in stack.audit()
        if command_name == "sbg rule promote"
        and (detail == "awaiting confirmation" or detail.endswith(f"promoted {rule_id}"))
    ]
    assert len(promotes) == 2, promotes
    assert promotes[0] == ("ok", "awaiting confirmation")
    assert promotes[1][0] == "ok" and promotes[1][1].endswith(f"; promoted {rule_id}")


def test_an_expression_rule_with_a_life_span_and_the_export(stack: SbgStack) -> None:
    sec, room = stack.security, stack.room
    expression = 'request.origin == "weekend.example" && request.weekday >= 1'
    reply = sec.ask(room, f"!sbg rule add expr '{expression}' --until 2099-01-01 --yes")
    assert " added until 2099-01-01T00:00:00.000Z; the ruleset is now version " in reply, reply
    match = RULE_ID.search(reply)
    assert match, reply
    assert stack.federation_request("weekend.example") == 403
    bad = sec.ask(room, "!sbg rule add expr 'request.weekday >' --yes")
    assert bad.startswith("The gateway refused the rule: params.expression: line 1, column 18")
    exported = sec.ask(room, "!sbg rule export")
    assert "format: bastion.gateway.rules/1" in exported
    assert f"id: {match.group(1)}" in exported and "weekend.example" in exported
    commands = [(command, outcome) for command, _, outcome, _ in stack.audit()]
    assert ("sbg rule export", "ok") in commands
