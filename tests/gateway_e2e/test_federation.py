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

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from devstack.matrix import MatrixUser
from devstack.ports import free_port
from devstack.process import http_json, start_side_by_side
from devstack.synapse import Synapse, make_self_signed_cert

from .conftest import Gateway

pytestmark = pytest.mark.slow


@dataclass
class Federation:
    home: Synapse
    partner: Synapse
    gateway: Gateway


@pytest.fixture
def federation(tmp_path: Path, start_gateway: Callable[..., Gateway]) -> Iterator[Federation]:
    proxy_port = free_port()
    home = Synapse(
        tmp_path / "home", name="home", federation=True, server_name=f"localhost:{proxy_port}"
    )
    partner = Synapse(tmp_path / "partner", name="partner", federation=True)
    home.workdir.mkdir(parents=True)
    cert, key = make_self_signed_cert(home.workdir)  # Synapse finds and reuses it
    gateways: list[Gateway] = []

    def gateway() -> None:
        gateways.append(
            start_gateway(
                home.server_name,
                listen={
                    "port": proxy_port,
                    "tls_certificate": str(cert),
                    "tls_private_key": str(key),
                },
                upstream=home.federation_url,
                upstream_ca_file=str(cert),
            )
        )

    try:
        start_side_by_side(home.start, partner.start, gateway)
        yield Federation(home, partner, gateways[0])
    finally:
        home.stop()
        partner.stop()


def join(user: MatrixUser, room: str) -> tuple[int, object]:
    return http_json(
        "POST", f"{user.hs.base_url}/_matrix/client/v3/join/{quote(room)}", {}, token=user.token
    )


def join_when_invited(user: MatrixUser, room: str, timeout: float = 10.0) -> None:
    """Join once the invite (sent home → partner) has arrived."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = join(user, room)
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{user.user_id} cannot join {room}: {status} {body}")
        time.sleep(0.1)


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


def endpoint(row: dict[str, object]) -> str:
    """``make_join`` for ``/_matrix/federation/v1/make_join/{roomId}/{}``."""
    return str(row["path"]).split("/")[4]
