"""The bot with every real component: two Synapses, the registrar, maubot running the plugin.

Staff talk to the bot over the client-server API exactly as a Matrix client would.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import BotStack, GuestBrowser, onboarding_url, token_id
from devstack.synapse import Synapse

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, internal_synapse: Synapse, dmz_synapse: Synapse
) -> Iterator[BotStack]:
    with BotStack(tmp_path_factory.mktemp("bot-stack"), internal_synapse, dmz_synapse) as running:
        yield running


def test_staff_mint_a_token_and_a_guest_registers_with_it(
    stack: BotStack, dmz_synapse: Synapse
) -> None:
    reply = stack.staff.ask(stack.room, "!token generate --note e2e guest")
    assert reply.startswith("Token `") and "1 use, expires " in reply
    url = onboarding_url(reply)
    assert url.startswith(f"{stack.registrar.base_url}/register?token=")  # type: ignore[union-attr]

    localpart = f"guest{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    status, page = GuestBrowser().register(url, localpart, password)
    assert status == 200, page
    assert f"@{localpart}:{dmz_synapse.server_name}" in page
    status, login = dmz_synapse.login(localpart, password)
    assert status == 200 and login["user_id"] == f"@{localpart}:{dmz_synapse.server_name}"

    status, page = GuestBrowser().open(url)
    assert status == 410 and "already been used" in page

    listing = stack.staff.ask(stack.room, "!guest list")
    assert f"@{localpart}:{dmz_synapse.server_name}" in listing
    shown = stack.staff.ask(stack.room, f"!token show {token_id(reply)}")
    assert "used, 1/1 used" in shown and "e2e guest" in shown


def test_someone_without_the_role_is_refused(stack: BotStack) -> None:
    reply = stack.outsider.ask(stack.room, "!token generate")
    assert reply == "You need the operator role to use `!token generate`."
    reply = stack.outsider.ask(stack.room, "!audit verify")
    assert reply == "You need the auditor role to use `!audit verify`."


def test_token_by_direct_message(stack: BotStack) -> None:
    reply = stack.staff.ask(stack.room, "!token generate --dm")
    assert "direct message" in reply and "/register?token=" not in reply
    [invite_room] = wait_for_invite(stack)
    stack.staff.join(invite_room)
    dm = stack.staff.wait_event(invite_room, lambda e: "/register?token=" in e["content"]["body"])
    assert token_id(reply) in dm["content"]["body"]


def wait_for_invite(stack: BotStack, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sync = stack.staff.call("GET", "/_matrix/client/v3/sync?timeout=0")
        invites = list(sync.get("rooms", {}).get("invite", {}))
        if invites:
            return invites
        time.sleep(0.1)
    raise TimeoutError("the bot did not invite the staff member to a direct room")


def test_deactivated_staff_tokens_are_revoked(stack: BotStack) -> None:
    leaver = stack.add_operator("leaver")
    reply = leaver.ask(stack.room, "!token generate --uses 2")
    url = onboarding_url(reply)
    assert GuestBrowser().open(url)[0] == 200

    started = time.monotonic()
    stack.deactivate(leaver)
    deadline = started + 10
    while (status := GuestBrowser().open(url))[0] != 410 and time.monotonic() < deadline:
        time.sleep(0.05)
    revoked_after = time.monotonic() - started
    assert status[0] == 410 and "withdrawn" in status[1]
    assert revoked_after < 2.0, f"revocation took {revoked_after:.2f} s"

    notice = stack.staff.wait_event(
        stack.room, lambda e: e["content"]["body"].startswith(f"{leaver.user_id} is deactivated")
    )
    assert notice["content"]["body"] == f"{leaver.user_id} is deactivated: revoked 1 open token."
    assert notice["content"]["msgtype"] == "m.notice"


def test_audit_trail_verifies_then_detects_tampering(stack: BotStack) -> None:
    reply = stack.auditor.ask(stack.room, "!audit verify")
    assert reply.startswith("The audit trail is intact: ")
    recent = stack.auditor.ask(stack.room, "!audit --limit 50")
    assert "revoke on deactivation" in recent and "token generate" in recent
    assert "refused" in recent

    export = export_entries(stack)
    assert [e["seq"] for e in export] == list(range(1, len(export) + 1))
    stack.tamper("UPDATE audit_log SET detail='nothing happened' WHERE seq=?", 2)
    reply = stack.auditor.ask(stack.room, "!audit verify")
    assert reply == "The audit trail is broken at entry #2: entry 2 was altered."


def export_entries(stack: BotStack) -> list[dict[str, object]]:
    assert stack.maubot is not None
    request = urllib.request.Request(
        f"{stack.maubot.webapp_url}/audit.jsonl?since=0",
        headers={"Authorization": f"Bearer {stack.export_key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return [json.loads(line) for line in response.read().splitlines()]


def test_bot_logs_hold_no_onboarding_urls(stack: BotStack) -> None:
    assert stack.maubot is not None
    log = stack.maubot.log() + Path(stack.maubot.process.log_path).read_text(errors="replace")
    assert "register?token=" not in log
