"""``!sbg rule add expr``, ``--from``/``--until`` and ``!sbg rule export``, against the real
gateway routes (``fake_gateway.GatewayDouble``)."""

from __future__ import annotations

import yaml

from .conftest import AUDITOR, SECURITY, Chat
from .fake_gateway import GatewayDouble
from .test_sbg import added_id, ask, maubot_plugin_config_dict

__all__ = ["maubot_plugin_config_dict"]  # test_sbg's fixture, reused

WEEKEND = 'request.origin == "partner.example" && request.weekday >= 6'


async def test_expr_rule_asks_then_is_added_with_its_life_span(
    chat: Chat, gateway: GatewayDouble
) -> None:
    command = await chat.send(
        f"!sbg rule add expr '{WEEKEND}' --until 2027-03-31 --note weekends", sender=SECURITY
    )
    prompt = chat.last.body
    assert prompt.startswith("Add a expr rule for "), prompt
    assert "until 2027-03-31 to ruleset version 0?" in prompt
    assert "An enforced expression refuses every request it matches" in prompt
    assert gateway.writes == []
    await chat.react(command, sender=SECURITY)
    [write] = gateway.writes
    assert write.body["params"] == {"expression": WEEKEND}
    assert write.body["expires_at"] == "2027-03-31"
    reply = chat.last.body
    assert "until 2027-03-31T00:00:00.000Z; the ruleset is now version 1." in reply
    stored = (await gateway.rules())[added_id(reply)]
    assert stored["expires_at"] == "2027-03-31T00:00:00.000Z" and stored["kind"] == "expr"
    confirm, asked = await chat.audit()
    assert asked.detail == "awaiting confirmation"
    assert confirm.detail.startswith("version 0 -> 1; added r")


async def test_expr_in_audit_mode_does_not_ask(chat: Chat, gateway: GatewayDouble) -> None:
    reply = await ask(
        chat, "!sbg rule add expr \u2018request.hour < 6\u2019 --audit --from 2027-01-01"
    )
    assert "added in audit mode" in reply and "from 2027-01-01T00:00:00.000Z" in reply


async def test_expr_errors_name_the_position(chat: Chat, gateway: GatewayDouble) -> None:
    reply = await ask(chat, "!sbg rule add expr 'request.hour >' --audit")
    assert reply.startswith("The gateway refused the rule: params.expression: line 1, column 15")
    assert "**Usage:** `!sbg rule add expr '<CEL expression>'" in reply
    assert await gateway.rules() == {}
    reply = await ask(chat, "!sbg rule add expr 'request.hour < 6")
    assert reply.startswith("The expression's closing quote is missing.")
    reply = await ask(chat, "!sbg rule add server_block a.example --until soon")
    assert reply.startswith("--until must be a date such as 2027-03-31")
    newest = (await chat.audit())[0]  # newest first
    assert (newest.outcome, newest.detail[:11]) == ("refused", "bad syntax:")


async def test_export_posts_the_document(chat: Chat, gateway: GatewayDouble) -> None:
    await gateway.add("blk", "server_block", {"servers": ["evil.example"]})
    for sender in (SECURITY, AUDITOR):
        reply = await ask(chat, "!sbg rule export", sender)
        assert reply.startswith("```yaml\n"), reply
        document = yaml.safe_load(reply.split("```yaml\n", 1)[1].split("```", 1)[0])
        assert document["format"] == "bastion.gateway.rules/1"
        assert [r["id"] for r in document["rules"]] == ["blk"]
        assert "POST /v1/rules/import" in reply
    entry = (await chat.audit())[0]
    assert entry.command == "sbg rule export" and entry.detail.startswith("version 1; ")
