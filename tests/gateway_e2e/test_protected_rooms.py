"""Protected rooms for real: the rules hold on every server in the room.

``home`` (``localhost:<gateway proxy port>``) sits behind the gateway, as in
``test_federation.py``; ``partner`` federates with it over TLS. maubot runs the plugin as
``bot`` on home, with the top power level in a ledger room shared with ``bob`` of the
partner at an ordinary level. Once the room is protected, bob's attempts to enable
encryption, send encrypted events, redact our user's message or change the ACL are refused
by **his own homeserver** (auth rules: insufficient power, 403): they never reach us, and
our view of the room's state and his stay the same. A server blocked by an enforced rule
ends up in the ACL on the partner's side too; a second admin of ours who lowers the
power levels sees the bot put them back and say so in the control room.

With the gateway also the room's policy server (``gateway.policy_server``), the same
attempts are refused by bob's homeserver with our policy server's answer — at an ordinary
level (Synapse asks the policy server before it runs the auth rules) and again after our
admin mistakenly raised him to the top level, where the auth rules would let him; each
refusal is in our decision log. ``m.room.policy`` itself is never sent for signing: bob
can remove it, and the bot puts it back.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from devstack.border import Gateway, wait_consulted
from devstack.guests import join_when_invited
from devstack.matrix import MatrixUser
from devstack.maubot import Maubot
from devstack.process import http_json
from devstack.stack import control_room, plugin_config, start_bot
from devstack.synapse import Synapse

from .test_federation import federated
from .test_policy_server import policy_key

pytestmark = pytest.mark.slow

SENSITIVE = (
    "m.room.encryption",
    "m.room.encrypted",
    "m.room.redaction",
    "m.room.power_levels",
    "m.room.server_acl",
    "m.room.policy",
    "m.room.tombstone",
)


@dataclass
class Ledger:
    home: Synapse
    partner: Synapse
    gateway: Gateway
    maubot: Maubot
    bot: MatrixUser
    sec: MatrixUser
    dave: MatrixUser
    alice: MatrixUser
    bob: MatrixUser
    control: str
    room: str
    proxy_port: int
    cert: Path


def state_path(room: str, event_type: str, state_key: str = "") -> str:
    return f"/_matrix/client/v3/rooms/{quote(room)}/state/{event_type}/{quote(state_key)}"


def raw_call(user: MatrixUser, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return http_json(method, f"{user.hs.base_url}{path}", body, token=user.token)


def state_ids(user: MatrixUser, room: str) -> set[tuple[str, str, str]]:
    events = user.call("GET", f"/_matrix/client/v3/rooms/{quote(room)}/state")
    return {(e["type"], e["state_key"], e["event_id"]) for e in events}


def https_json(cert: Path, method: str, url: str, body: Any, token: str) -> tuple[int, Any]:
    """One JSON request over TLS to the gateway's listener (its certificate: ``cert``)."""
    context = ssl.create_default_context(cafile=str(cert))
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    yield from start_ledger(tmp_path)


@pytest.fixture
def policy_ledger(tmp_path: Path) -> Iterator[Ledger]:
    """The ledger room, the gateway also its policy server (``gateway.policy_server``)."""
    yield from start_ledger(tmp_path, policy_server={})


def start_ledger(tmp_path: Path, **gateway_extra: Any) -> Iterator[Ledger]:
    with federated(tmp_path, gateway=gateway_extra) as federation, contextlib.ExitStack() as later:
        home, partner, gateway = federation.home, federation.partner, federation.gateway
        password = "protected-rooms-pw"
        bot, sec, dave, alice = (
            MatrixUser.register(home, name, password) for name in ("bot", "sec", "dave", "alice")
        )
        bob = MatrixUser.register(partner, "bob", password)
        control = control_room(sec, name="Bastion security")
        config = plugin_config(
            control,
            home,
            gateway_admins=[sec.user_id],
            registrar_url=gateway.base_url,
            gateway_url=gateway.base_url,
            api_key=gateway.api_key,
            sweep_interval=0,
        )
        maubot = start_bot(tmp_path, home, bot, control, sec, config)
        later.callback(maubot.stop)  # before the servers stop
        # The ledger room: our staff and the bot at the top level, the partner at 0.
        room = sec.create_room(invite=(bot.user_id, dave.user_id, alice.user_id), name="ledger")
        for user in (dave, alice):
            user.join(room)
        sec.wait_membership(room, bot.user_id)  # maubot autojoins
        levels = sec.state(room, "m.room.power_levels")
        assert levels is not None
        # Room version 12: the creator (sec) holds unlimited power outside ``users``.
        levels["users"] = {bot.user_id: 100, dave.user_id: 100}
        sec.call("PUT", state_path(room, "m.room.power_levels"), levels)
        sec.invite(room, bob.user_id)
        join_when_invited(bob, room)
        sec.wait_membership(room, bob.user_id)
        yield Ledger(
            home, partner, gateway, maubot, bot, sec, dave, alice, bob, control, room,
            federation.border.proxy_port, federation.border.cert,
        )  # fmt: skip


def audit(maubot: Maubot) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(maubot.workdir / "maubot.db") as db:
        rows = db.execute(
            "SELECT command, sender, outcome, detail FROM audit_log WHERE command LIKE 'sbg room%'"
            " ORDER BY seq"
        ).fetchall()
    return [tuple(row) for row in rows]


def refused_by_own_server(result: tuple[int, Any]) -> bool:
    status, body = result
    return (
        status == 403
        and isinstance(body, dict)
        and body.get("errcode") == "M_FORBIDDEN"
        and "gateway" not in str(body.get("error")).lower()
    )


def partner_attempts(ledger: Ledger, target: str, tag: str) -> dict[str, tuple[int, Any]]:
    """Bob tries to enable encryption, send an encrypted event, redact our ``target`` event
    and change the ACL (deny our server); each answer as his homeserver gave it."""
    bob, room = ledger.bob, ledger.room
    return {
        "encryption": raw_call(
            bob, "PUT", state_path(room, "m.room.encryption"), {"algorithm": "m.megolm.v1.aes-sha2"}
        ),
        "encrypted": raw_call(
            bob,
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.encrypted/{tag}1",
            {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAC", "session_id": "s"},
        ),
        "redaction": raw_call(
            bob,
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(room)}/redact/{quote(target)}/{tag}2",
            {"reason": "gone"},
        ),
        "acl": raw_call(
            bob,
            "PUT",
            state_path(room, "m.room.server_acl"),
            {"allow": ["*"], "deny": [ledger.home.server_name.split(":")[0]]},
        ),
    }


def test_a_protected_ledger_room_holds_on_the_partner_server(ledger: Ledger) -> None:
    sec, bob, alice, room = ledger.sec, ledger.bob, ledger.alice, ledger.room
    reply = sec.ask(ledger.control, f"!sbg room protect {room}")
    assert reply.startswith(f"Room `{room}` is protected (ledger, ACL): power levels "), reply
    assert "ACL set (allow *; deny none)" in reply
    assert "no policy server configured" in reply
    ours = sec.state(room, "m.room.power_levels")
    assert ours is not None
    # Synapse gives room version 12's tombstone 150 (creators only): above the top, it stays.
    assert {t: ours["events"][t] for t in SENSITIVE} == {
        **dict.fromkeys(SENSITIVE, 100),
        "m.room.tombstone": 150,
    }
    assert ours["redact"] == 100
    assert bob.user_id not in ours["users"], "the partner keeps the default level 0"
    assert ours["events_default"] == 0, "everyone keeps chatting"

    # The protection arrives on the partner's server.
    eventually(
        lambda: (bob.state(room, "m.room.power_levels") or {}).get("redact") == 100,
        "the partner's server sees the new power levels",
    )
    eventually(lambda: bob.state(room, "m.room.server_acl"), "the partner sees the ACL")
    mine = alice.send(room, "for the record")
    eventually(
        lambda: any(e["event_id"] == mine for e in bob.messages(room)), "bob sees the message"
    )
    before = state_ids(sec, room)

    # Each attempt is refused by bob's own homeserver: the auth rules, not our gateway.
    attempts = partner_attempts(ledger, mine, "t")
    for name, result in attempts.items():
        assert refused_by_own_server(result), (name, result)
        assert (
            "power" in str(result[1]["error"]).lower()
            or "permission" in str(result[1]["error"]).lower()
        ), (name, result)

    # Ordinary messages still flow both ways.
    bob.send(room, "hello from the partner")
    eventually(
        lambda: any(
            e["content"].get("body") == "hello from the partner" for e in sec.messages(room)
        ),
        "we see the partner's message",
    )
    sec.send(room, "hello partner")
    eventually(
        lambda: any(e["content"].get("body") == "hello partner" for e in bob.messages(room)),
        "the partner sees ours",
    )
    # Our state never changed, and both servers agree on it event for event.
    assert state_ids(sec, room) == before
    eventually(lambda: state_ids(bob, room) == state_ids(sec, room), "both views agree")
    assert sec.state(room, "m.room.encryption") is None
    assert not any(e.get("type") == "m.room.redaction" for e in sec.messages(room))
    assert sec.ask(ledger.control, f"!sbg room check {room}") == (
        f"Room `{room}` is in order: its state meets its protection under ruleset version 0."
    )

    # An enforced server_block reaches the ACL, on the partner's side too; an audit one does not.
    reply = sec.ask(ledger.control, "!sbg rule add server_block soon.example --audit")
    assert "audit mode" in reply
    reply = sec.ask(ledger.control, "!sbg rule add server_block blocked.example:8448")
    assert re.search(r"Rule `[^`]+` \(server_block blocked\.example:8448\) added", reply), reply
    acl = eventually(
        lambda: (
            (content := bob.state(room, "m.room.server_acl")) is not None
            and content.get("deny") == ["blocked.example"]
            and content
        ),
        "the partner's server holds the new ACL",
    )
    assert acl == {"allow": ["*"], "deny": ["blocked.example"], "allow_ip_literals": False}
    sec.wait_event(
        ledger.control,
        lambda e: e["content"]["body"].startswith(f"Room `{room}` follows the gateway rules"),
    )

    # Drift: a second admin of ours lowers the level for enabling encryption.
    dave = ledger.dave
    lowered = dave.state(room, "m.room.power_levels")
    assert lowered is not None
    lowered["events"]["m.room.encryption"] = 0
    dave.call("PUT", state_path(room, "m.room.power_levels"), lowered)
    notice = sec.wait_event(
        ledger.control, lambda e: "so that it no longer met its protection" in e["content"]["body"]
    )
    assert notice["content"]["body"].startswith(f"Room `{room}` was changed by {dave.user_id}")
    assert "I put it back: power levels m.room.encryption 0 → 100" in notice["content"]["body"]
    eventually(
        lambda: (
            (sec.state(room, "m.room.power_levels") or {})["events"]["m.room.encryption"] == 100
        ),
        "the bot restored the level",
    )
    eventually(
        lambda: (
            (bob.state(room, "m.room.power_levels") or {})["events"]["m.room.encryption"] == 100
        ),
        "the partner's server has the restored level",
    )

    # Through the gateway's own listener, a loosening write from our side is refused too.
    status, body = https_json(
        ledger.cert,
        "PUT",
        f"https://127.0.0.1:{ledger.proxy_port}{state_path(room, 'm.room.power_levels')}",
        lowered,
        dave.token,
    )
    assert status == 403 and "is a protected room" in body["error"], (status, body)

    entries = audit(ledger.maubot)
    commands = [(c, s, o) for c, s, o, _ in entries]
    assert ("sbg room protect", sec.user_id, "ok") in commands
    assert ("sbg room sync", sec.user_id, "ok") in commands
    assert ("sbg room restore", dave.user_id, "ok") in commands


def second_loopback_name() -> str | None:
    """A host name other than localhost that resolves to loopback here (the machine's own
    name usually does), so a third server's ACL host differs from the other two."""
    name = socket.gethostname().lower()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        return None
    return name if name != "localhost" and address.startswith("127.") else None


@pytest.fixture
def outsider(tmp_path: Path) -> Iterator[Synapse]:
    host = second_loopback_name()
    if host is None:
        pytest.skip("no second host name resolves to loopback here")
    server = Synapse(tmp_path / "outsider", name="outsider", federation=True)
    # Its name is set before it starts (the federation port is picked in the constructor).
    server.server_name = f"{host}:{server.federation_port}"
    server.admin_user_id = f"@{server.admin_user}:{server.server_name}"
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_blocked_server_is_refused_by_the_partner_too(ledger: Ledger, outsider: Synapse) -> None:
    sec, bob, room = ledger.sec, ledger.bob, ledger.room
    host = outsider.server_name.rsplit(":", 1)[0]
    eve = MatrixUser.register(outsider, "eve", "protected-rooms-pw")
    assert sec.ask(ledger.control, f"!sbg room protect {room} --acl").startswith(
        f"Room `{room}` is protected (ACL)"
    )
    reply = sec.ask(ledger.control, f"!sbg rule add server_block {host}")
    assert f"(server_block {host}) added" in reply, reply
    eventually(
        lambda: (bob.state(room, "m.room.server_acl") or {}).get("deny") == [host],
        "the partner's server holds the ACL that denies the outsider",
    )
    # The partner invites eve (partner -> outsider); her server then asks the partner's to
    # let her join, and the partner's server refuses: the ACL denies her server.
    bob.invite(room, eve.user_id)
    result = eventually(
        lambda: (
            (r := raw_call(eve, "POST", f"/_matrix/client/v3/join/{quote(room)}", {}))[0] != 404
            and r
        ),
        "eve's join is answered",
    )
    status, body = result
    assert status == 403, result
    # Synapse's ACL refusal text: it can only be the partner's, since our homeserver never
    # sees her server's requests (the gateway refuses them with its own text first).
    assert body == {"errcode": "M_FORBIDDEN", "error": "Server is banned from room"}, body
    # Both servers see her invited, never joined.
    for user in (bob, sec):
        eventually(lambda u=user: u.membership(room, eve.user_id) == "invite", "eve invited")
    assert eve.call("GET", "/_matrix/client/v3/joined_rooms")["joined_rooms"] == []


def refused_by_our_policy_server(result: tuple[int, Any], room: str) -> bool:
    """Refused by bob's homeserver with our policy server's answer (passed on to him)."""
    status, body = result
    return (
        status in (400, 403)
        and isinstance(body, dict)
        and body.get("errcode") == "M_FORBIDDEN"
        and str(body.get("error")).startswith(
            f"Refused by the gateway's policy server: {room} is a protected room and "
        )
    )


def test_the_policy_server_holds_the_room_against_a_partner_at_the_top_level(
    policy_ledger: Ledger,
) -> None:
    ledger = policy_ledger
    sec, bob, alice, room, gateway = (
        ledger.sec,
        ledger.bob,
        ledger.alice,
        ledger.room,
        ledger.gateway,
    )
    reply = sec.ask(ledger.control, f"!sbg room protect {room}")
    assert reply.startswith(f"Room `{room}` is protected (ledger, ACL, policy server)"), reply
    policy = {"via": ledger.home.server_name, "public_keys": {"ed25519": policy_key(gateway)}}
    assert sec.state(room, "m.room.policy") == policy
    eventually(lambda: bob.state(room, "m.room.policy") == policy, "bob's server names us")
    eventually(
        lambda: (bob.state(room, "m.room.power_levels") or {}).get("redact") == 100,
        "the partner's server sees the new power levels",
    )
    # Right after his (partial-state) join bob's server may send without asking us.
    wait_consulted(gateway, bob, room, timeout=20)
    mine = alice.send(room, "for the record")
    eventually(
        lambda: any(e["event_id"] == mine for e in bob.messages(room)), "bob sees the message"
    )

    def attempt_everything(tag: str) -> dict[str, tuple[int, Any]]:
        before = state_ids(sec, room)
        attempts = partner_attempts(ledger, mine, tag)
        # Our state never changes, and both servers agree on it event for event.
        assert state_ids(sec, room) == before
        eventually(lambda: state_ids(bob, room) == before, "both views of the state agree")
        return attempts

    # At an ordinary level: Synapse asks the policy server before it runs the auth rules,
    # so our answer comes first (the auth rules alone refuse them too: the test above).
    for name, result in attempt_everything("o").items():
        assert refused_by_our_policy_server(result, room), (name, result)

    # Someone of ours mistakenly raises bob to the top level; the auth rules now let him.
    levels = sec.state(room, "m.room.power_levels")
    assert levels is not None
    levels["users"][bob.user_id] = 100
    sec.call("PUT", state_path(room, "m.room.power_levels"), levels)
    eventually(
        lambda: (bob.state(room, "m.room.power_levels") or {})["users"].get(bob.user_id) == 100,
        "bob's server sees him at the top level",
    )
    attempts = attempt_everything("p")
    # Lowering the levels the protection raised is refused as well (the proxy guard's judge).
    lowered = bob.state(room, "m.room.power_levels")
    assert lowered is not None
    lowered["events"]["m.room.encryption"] = 0
    attempts["power_levels"] = raw_call(
        bob, "PUT", state_path(room, "m.room.power_levels"), lowered
    )
    for name, result in attempts.items():
        assert refused_by_our_policy_server(result, room), (name, result)
        assert "power" not in str(result[1]["error"]).lower(), (name, result)

    # Ordinary messages still flow both ways, signed by us.
    bob.send(room, "hello from the partner")
    sec.wait_event(room, lambda e: e["content"].get("body") == "hello from the partner")
    sec.send(room, "hello partner")
    bob.wait_event(room, lambda e: e["content"].get("body") == "hello partner")
    assert sec.state(room, "m.room.encryption") is None
    assert bob.state(room, "m.room.encryption") is None
    assert (sec.state(room, "m.room.server_acl") or {}).get("deny") == []
    assert not any(e.get("type") == "m.room.redaction" for e in sec.messages(room))
    assert any(e["event_id"] == mine for e in bob.messages(room)), "our message stays for bob"
    eventually(lambda: state_ids(bob, room) == state_ids(sec, room), "both views agree")

    # Every refusal is in our decision log: rule protected-room, from bob's server.
    rows = gateway.wait_decisions(
        lambda rows: len(rows) >= 9,
        source="policy_server",
        rule="protected-room",
    )
    assert {(r["event_type"], r["outcome"], r["origin"], r["room"]) for r in rows} == {
        (t, "block", ledger.partner.server_name, room)
        for t in (
            "m.room.encryption",
            "m.room.encrypted",
            "m.room.redaction",
            "m.room.server_acl",
            "m.room.power_levels",
        )
    }

    # Not covered: m.room.policy is never sent for signing, so bob at the top level can
    # remove it on his own server. The bot sees the change arrive and puts it back.
    status, body = raw_call(bob, "PUT", state_path(room, "m.room.policy"), {})
    assert status == 200, body
    sec.wait_event(
        ledger.control,
        lambda e: e["content"]["body"].startswith(f"Room `{room}` was changed by {bob.user_id}"),
    )
    eventually(lambda: bob.state(room, "m.room.policy") == policy, "the policy is back for bob")
    assert sec.state(room, "m.room.policy") == policy
