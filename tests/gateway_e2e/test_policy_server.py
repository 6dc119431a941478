"""The rules hold on the partner's own homeserver: our gateway as the room's policy server.

Two Synapses federate over TLS, ``home`` behind the gateway (as in ``test_federation``).
Alice's room on home names home as its policy server (``m.room.policy``, via home's server
name, the gateway's key); home's Synapse skips a policy server with its own name, so it is
the *partner's* Synapse that asks our gateway to sign each event before sending it. With
compliance-ledger enforced, Bob (power level 100 in the room) cannot even create an
encryption state or an encrypted message on his own server: it refuses his client, and home
never sees the event. His ordinary messages are signed and arrive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from devstack.border import Gateway, wait_consulted
from devstack.guests import join_when_invited
from devstack.matrix import MatrixUser
from devstack.process import http_json

from .test_federation import Federation, federated

pytestmark = pytest.mark.slow


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[Federation]:
    with federated(tmp_path, gateway={"policy_server": {}}) as federation:
        yield federation


def policy_key(gateway: Gateway) -> str:
    status, body = http_json("GET", f"{gateway.base_url}/.well-known/matrix/policy_server")
    assert status == 200, body
    return str(body["public_keys"]["ed25519"])


def put_state(user: MatrixUser, room: str, event_type: str, content: Any) -> tuple[int, Any]:
    path = f"/_matrix/client/v3/rooms/{quote(room)}/state/{event_type}/"
    return http_json("PUT", f"{user.hs.base_url}{path}", content, token=user.token)


def send_event(user: MatrixUser, room: str, event_type: str, content: Any) -> tuple[int, Any]:
    path = f"/_matrix/client/v3/rooms/{quote(room)}/send/{event_type}/t{time.monotonic_ns()}"
    return http_json("PUT", f"{user.hs.base_url}{path}", content, token=user.token)


def refused_by_policy(result: tuple[int, Any], rules: tuple[str, ...]) -> bool:
    """Refused with our policy server's answer, which names the deciding rule."""
    status, body = result
    if status not in (400, 403) or not isinstance(body, dict):
        return False
    error = str(body.get("error"))
    return body.get("errcode") == "M_FORBIDDEN" and any(f"rule {r}" in error for r in rules)


def create_protected_room(alice: MatrixUser, bob: MatrixUser, key: str) -> str:
    body = {
        "preset": "private_chat",
        "name": "protected",
        "invite": [bob.user_id],
        # Room v12: the creator's power is implicit and may not be listed.
        "power_level_content_override": {"users": {bob.user_id: 100}},
    }
    room = str(alice.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"])
    policy = {"via": alice.hs.server_name, "public_keys": {"ed25519": key}}
    status, result = put_state(alice, room, "m.room.policy", policy)
    assert status == 200, result
    return room


def test_the_partners_homeserver_enforces_our_rules(protected: Federation) -> None:
    home, partner, gateway = protected.home, protected.partner, protected.gateway
    alice = MatrixUser.register(home, "alice", "alice-password")
    bob = MatrixUser.register(partner, "bob", "bob-password")
    gateway.rules_call("POST", "/v1/rules/preset/compliance-ledger", {})
    # The preset's event types are those of the state and redaction events; the encrypted
    # messages themselves are blocked by an explicit rule.
    gateway.add_rule(
        {
            "id": "no-encrypted",
            "kind": "event_type_block",
            "params": {"event_types": ["m.room.encrypted"]},
        }
    )
    room = create_protected_room(alice, bob, policy_key(gateway))
    join_when_invited(bob, room)
    alice.wait_membership(room, bob.user_id)

    wait_consulted(gateway, bob, room, timeout=20)

    # Bob's own homeserver asks our gateway and refuses his client.
    encryption = put_state(bob, room, "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    assert refused_by_policy(encryption, ("compliance-ledger",)), encryption
    encrypted = send_event(
        bob, room, "m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}
    )
    # The completed preset may block it as well; either rule is ours.
    assert refused_by_policy(encrypted, ("no-encrypted", "compliance-ledger")), encrypted

    # An ordinary message is signed by us and arrives.
    bob.send(room, "hello from the partner")
    alice.wait_event(room, lambda e: e["content"].get("body") == "hello from the partner")

    # Home never saw the refused events.
    status, body = http_json(
        "GET",
        f"{home.base_url}/_matrix/client/v3/rooms/{quote(room)}/state/m.room.encryption/",
        token=alice.token,
    )
    assert status == 404, body
    types = {
        e["type"]
        for e in alice.call(
            "GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b&limit=100"
        )["chunk"]
    }
    assert "m.room.encrypted" not in types and "m.room.encryption" not in types

    rows = gateway.wait_decisions(
        lambda rows: {"block", "allow"} <= {r["outcome"] for r in rows},
        source="policy_server",
        origin=partner.server_name,
    )
    blocked = {(r["event_type"], r["rule"]) for r in rows if r["outcome"] == "block"}
    assert ("m.room.encryption", "compliance-ledger") in blocked
    assert any(t == "m.room.encrypted" for t, _ in blocked)
    assert all(r["room"] == room and "event_id=$" in r["path"] for r in rows)
    assert "m.room.message" in {r["event_type"] for r in rows if r["outcome"] == "allow"}
