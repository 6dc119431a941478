"""Real federation over TLS between two Synapses on loopback, one of them behind the gateway.

``home`` is named ``localhost:<gateway proxy port>``, so every federation request the
``partner`` makes to it reaches the gateway's proxy listener first (TLS, the same
self-signed certificate Synapse uses); the proxy forwards what it allows to home's TLS
federation listener. The proxy verifies the upstream certificate
against ``gateway.upstream_ca_file`` (its SAN names 127.0.0.1).

Home → partner traffic (invites, home's events) goes straight to the partner: the
gateway judges what comes in. A 403 on a federation ``/send`` makes the partner back off
from home altogether, so the one refused transaction comes last; the refusals before it
are joins (``make_join``), which do not start a back-off.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from devstack.border import Gateway, GatewayedSynapse, endpoint
from devstack.guests import join_when_invited
from devstack.matrix import MatrixUser
from devstack.process import http_json
from devstack.synapse import Synapse

from .conftest import AUTHZ, LOG_LEVEL

pytestmark = pytest.mark.slow


@dataclass
class Federation:
    border: GatewayedSynapse
    partner: Synapse

    @property
    def home(self) -> Synapse:
        return self.border.synapse

    @property
    def gateway(self) -> Gateway:
        return self.border.gateway


@contextlib.contextmanager
def federated(
    tmp_path: Path, *, gateway: Mapping[str, Any] | None = None, **home: Any
) -> Iterator[Federation]:
    """``home`` behind a gateway (set up as ``gateway_config`` does, plus ``gateway``) and
    ``partner``, started side by side and all stopped on leaving; ``home`` holds further
    ``GatewayedSynapse`` options."""
    border = GatewayedSynapse(
        tmp_path, name="home", gateway={**AUTHZ, **(gateway or {})}, log_level=LOG_LEVEL, **home
    )
    partner = Synapse(tmp_path / "partner", name="partner", federation=True)
    try:
        with border.started(also=(partner.start,)):
            yield Federation(border, partner)
    finally:
        partner.stop()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    with federated(tmp_path) as federation:
        yield federation


def join(user: MatrixUser, room: str) -> tuple[int, object]:
    return http_json(
        "POST", f"{user.hs.base_url}/_matrix/client/v3/join/{quote(room)}", {}, token=user.token
    )


def wait_invited(user: MatrixUser, room: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_json(
            "GET", f"{user.hs.base_url}/_matrix/client/v3/sync?timeout=0", token=user.token
        )
        assert status == 200, body
        if room in body.get("rooms", {}).get("invite", {}):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no invite to {room} for {user.user_id}")
        time.sleep(0.05)


def refused(result: tuple[int, object], rule: str) -> bool:
    status, body = result
    return status == 403 and isinstance(body, dict) and f"rule {rule}" in str(body.get("error"))


def test_partner_federates_only_through_the_gateway(federation: Federation) -> None:
    home, partner, gateway = federation.home, federation.partner, federation.gateway
    partner_name = partner.server_name
    alice = MatrixUser.register(home, "alice", "alice-password")
    bob = MatrixUser.register(partner, "bob", "bob-password")
    gateway.add_rule(
        {"id": "partner", "kind": "server_allow", "params": {"servers": [partner_name]}}
    )
    # A second allow list: removing the partner's rule must not switch zero trust off.
    gateway.add_rule(
        {"id": "others", "kind": "server_allow", "params": {"servers": ["unrelated.example"]}}
    )

    # Allowed: the partner's user joins a room on home; messages go both ways.
    room = alice.create_room(invite=(bob.user_id,), name="shared")
    join_when_invited(bob, room)
    alice.wait_membership(room, bob.user_id)
    alice.send(room, "hello partner")
    bob.wait_event(room, lambda e: e["content"].get("body") == "hello partner")
    bob.send(room, "hello home")
    alice.wait_event(room, lambda e: e["content"].get("body") == "hello home")
    allowed = gateway.wait_decisions(
        lambda rows: {"make_join", "send_join", "send"} <= {endpoint(r) for r in rows},
        origin=partner_name,
        decision="allow",
        source="proxy",
    )
    assert {r["rule"] for r in allowed} == {"partner"}

    # A server_block wins over the allow rule that lists the same server.
    gateway.add_rule(
        {
            "id": "partner-block",
            "kind": "server_block",
            "priority": 500,
            "params": {"servers": [partner_name]},
        }
    )
    second = alice.create_room(invite=(bob.user_id,), name="second")
    wait_invited(bob, second)
    assert refused(join(bob, second), "partner-block")
    blocked = gateway.wait_decisions(bool, origin=partner_name, rule="partner-block")
    assert [(endpoint(r), r["outcome"]) for r in blocked] == [("make_join", "block")]
    gateway.delete_rule("partner-block")

    # The partner's allow rule removed (no restart): zero trust refuses it at the gateway.
    gateway.delete_rule("partner")
    assert refused(join(bob, second), "others")
    assert alice.membership(second, bob.user_id) == "invite"
    bob.send(room, "after the rule is gone")
    refusals = gateway.wait_decisions(
        lambda rows: {"make_join", "send"} <= {endpoint(r) for r in rows},
        timeout=15,
        origin=partner_name,
        rule="others",
    )
    assert {(r["outcome"], r["class"], r["mode"]) for r in refusals} == {
        ("block", "federation", "enforce")
    }
    bodies = [e["content"].get("body") for e in alice.messages(room)]
    assert "hello home" in bodies and "after the rule is gone" not in bodies
