"""The compliance ledger between two real Synapses over TLS, the gateway in front of ours.

``home`` is behind the gateway (its proxy listener is ``localhost:<port>`` to the world) and
runs synapse-http-antispam as shipped in ``deploy/synapse/antispam.yaml``, asking the same
gateway. A partner user with power level 100 in a room a home user created turns
encryption on, sends ciphertext and redacts the home user's message. What the border
guarantees (docs/rules.md, section 7.1) is asserted; what it cannot is measured and written
down there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from devstack.guests import join_when_invited
from devstack.matrix import MatrixUser
from devstack.ports import free_port
from devstack.process import http_json

from .conftest import AUTHZ_SECRET
from .test_federation import Federation, federated

pytestmark = pytest.mark.slow

ANTISPAM = Path(__file__).parents[2] / "deploy" / "synapse" / "antispam.yaml"
ROOM_STATE_PATH = "/_matrix/client/v3/rooms/{}/state"


def antispam_module(port: int, secret_file: Path) -> dict[str, Any]:
    """The shipped snippet, pointed at this gateway."""
    [module] = yaml.safe_load(ANTISPAM.read_text())["modules"]
    module["config"]["base_url"] = f"http://127.0.0.1:{port}/v1/antispam"
    module["config"]["authorization_path"] = str(secret_file)
    return dict(module)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Federation]:
    admin_port = free_port()
    secret = tmp_path / "antispam.secret"
    secret.write_text(AUTHZ_SECRET)
    synapse_config = {
        "modules": [antispam_module(admin_port, secret)],
        # What the ledger needs on the homeserver side (deploy/synapse/ledger.yaml).
        "encryption_enabled_by_default_for_room_type": "off",
        "redaction_retention_period": None,
    }
    with federated(tmp_path, admin_port=admin_port, synapse_config=synapse_config) as ledger:
        yield ledger


def put(user: MatrixUser, room: str, what: str, event_type: str, content: Any) -> str:
    path = f"/_matrix/client/v3/rooms/{quote(room)}/{what}/{event_type}/"
    path += "" if what == "state" else f"t{time.monotonic_ns()}"
    return str(user.call("PUT", path, content)["event_id"])


def state_types(user: MatrixUser, room: str) -> set[str]:
    return {e["type"] for e in user.call("GET", ROOM_STATE_PATH.format(quote(room)))}


def event(user: MatrixUser, room: str, event_id: str) -> tuple[int, Any]:
    path = f"/_matrix/client/v3/rooms/{quote(room)}/event/{quote(event_id)}"
    return http_json("GET", f"{user.hs.base_url}{path}", token=user.token)


def test_a_partner_cannot_encrypt_or_redact_our_copy_of_the_room(ledger: Federation) -> None:
    home, partner, gateway = ledger.home, ledger.partner, ledger.gateway
    gateway.rules_call("POST", "/v1/rules/preset/compliance-ledger", {})
    alice = MatrixUser.register(home, "alice", "alice-password")
    bob = MatrixUser.register(partner, "bob", "bob-password")
    room = str(
        alice.call(
            "POST",
            "/_matrix/client/v3/createRoom",
            {
                "preset": "private_chat",
                "name": "ledger",
                "invite": [bob.user_id],
                "power_level_content_override": {"users": {bob.user_id: 100}},
            },
        )["room_id"]
    )
    join_when_invited(bob, room)
    alice.wait_membership(room, bob.user_id)
    kept = alice.send(room, "keep me on the record")
    bob.wait_event(room, lambda e: e["content"].get("body") == "keep me on the record")

    # The partner, power level 100, does all three on its own server.
    encryption = put(bob, room, "state", "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    ciphertext = put(
        bob,
        room,
        "send",
        "m.room.encrypted",
        {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "session_id": "s"},
    )
    redaction = str(
        bob.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(room)}/redact/{quote(kept)}/r{time.monotonic_ns()}",
            {"reason": "rewrite history"},
        )["event_id"]
    )
    refused = {encryption, ciphertext, redaction}

    # Each is refused at the proxy, with its event id, type, room and rule in the log.
    rows = gateway.wait_decisions(
        lambda rows: refused <= {r["event_id"] for r in rows},
        timeout=30,
        decision="block",
        source="proxy",
    )
    by_id = {r["event_id"]: r for r in rows if r["event_id"] in refused}
    assert {(r["event_type"], r["room"], r["origin"], r["rule"]) for r in by_id.values()} == {
        (t, room, partner.server_name, "compliance-ledger")
        for t in ("m.room.encryption", "m.room.encrypted", "m.room.redaction")
    }

    # Until the partner's room moves on, none of it has reached our homeserver.
    status, original = event(alice, room, kept)
    assert status == 200 and original["content"].get("body") == "keep me on the record"
    assert "m.room.encryption" not in state_types(alice, room)

    # The partner's queue is not wedged: its next message is delivered through /send.
    after = bob.send(room, "still talking")
    alice.wait_event(room, lambda e: e["content"].get("body") == "still talking", timeout=30)
    gateway.wait_decisions(
        lambda rows: any(r["event_id"] == after for r in rows),
        timeout=30,
        decision="allow",
        source="proxy",
    )

    # The sending Synapse logged each per-PDU error and never sent those events again
    # (its queue is sequential, so a retry would have come before "still talking").
    blocks = gateway.decisions(decision="block", source="proxy")
    assert sorted(r["event_id"] for r in blocks if r["event_id"] in refused) == sorted(refused)

    # What holds on our homeserver's copy of the room.
    assert "m.room.encryption" not in state_types(alice, room)
    messages = alice.messages(room)
    assert [e for e in messages if e["type"] == "m.room.encrypted"] == []
    # The original message is kept in the homeserver's store (redaction_retention_period:
    # null), as written, for the admin API.
    status, stored = home.admin("GET", f"/_synapse/admin/v1/fetch_event/{quote(kept)}")
    assert status == 200, stored
    assert stored["event"]["content"]["body"] == "keep me on the record"

    # What Synapse makes impossible at the border (docs/rules.md, section 7.1): the partner's
    # next event names the refused ones as prev_events, our homeserver fetches them itself
    # (get_missing_events, never seen by the proxy), antispam refuses them and Synapse
    # soft-fails and strips them, yet in room versions 11 and later (12 is Synapse's
    # default) a stripped redaction keeps content.redacts and is applied, and full-state
    # /sync carries the stripped m.room.encryption.
    pulled = gateway.wait_decisions(
        lambda rows: (
            {"m.room.encryption", "m.room.encrypted", "m.room.redaction"}
            <= {r["event_type"] for r in rows}
        ),
        decision="block",
        source="antispam",
    )
    assert {r["rule"] for r in pulled} == {"compliance-ledger"}
    assert refused <= {r["event_id"] for r in pulled}
    status, seen = event(alice, room, kept)
    assert status == 200 and seen["content"] == {}
    assert seen["unsigned"]["redacted_by"] == redaction
    status, sync = http_json(
        "GET",
        f"{home.base_url}/_matrix/client/v3/sync?full_state=true&timeout=0",
        token=alice.token,
    )
    assert status == 200, sync
    stripped = [
        e
        for e in sync["rooms"]["join"][room]["state"]["events"]
        if e["type"] == "m.room.encryption"
    ]
    assert [(e["event_id"], e["content"]) for e in stripped] == [(encryption, {})]
    status, soft = home.admin("GET", f"/_synapse/admin/v1/fetch_event/{quote(encryption)}")
    assert status == 200 and soft["event"]["unsigned"]["io.element.synapse.soft_failed"] is True

    # Our own users still cannot turn encryption on at home either (antispam, client scope).
    status, body = http_json(
        "PUT",
        f"{home.base_url}{ROOM_STATE_PATH.format(quote(room))}/m.room.encryption/",
        {"algorithm": "m.megolm.v1.aes-sha2"},
        token=alice.token,
    )
    assert status == 403, body
