"""Protected rooms benchmark: from a rule change to the ACL in force on the partner's server.

    .venv/bin/python bench/protected_rooms.py [--changes 20]

Starts, on loopback, two federating Synapses over TLS, ``home`` behind ``python -m dmz_api``
(the gateway proxy, ``gateway.policy_server`` on) and ``partner``, and the real plugin in
real maubot (``bot`` on home). The bot protects a room shared with Bob of the partner with
all three protections (ledger, ACL, policy server). Each change is the real path: our
admin sends ``!sbg rule add server_block bench<N>.example`` in the control room; the bot
writes the rule through the gateway's admin API, re-reads the room's desired state and
writes the new ``m.room.server_acl``; home federates it to the partner, whose Synapse asks
our policy server to sign it (it carries no signature of ours: home never asks itself).
Timed from the command's send until ``GET /rooms/{id}/state/m.room.server_acl`` on the
partner's server lists the new host (polled every 10 ms), and until home's own state does.

Reference, alternating with the changes: Alice (home's room creator) writes a plain state
event (``m.room.topic``) and it is timed until the partner's server shows it, the same way:
the federation path alone, without the bot and the rule write. The figures: p50/p99 of
both, the ratio, and the part spent before the ACL was in home's own state. Writes
``bench/results/protected_rooms.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.policy_server import gated_pair  # noqa: E402
from bench.stats import summary, write_results  # noqa: E402
from devstack.border import wait_consulted  # noqa: E402
from devstack.guests import join_when_invited  # noqa: E402
from devstack.matrix import MatrixUser  # noqa: E402
from devstack.maubot import Maubot  # noqa: E402
from devstack.process import start_side_by_side  # noqa: E402
from devstack.stack import control_room, plugin_config, start_bot  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "protected_rooms.json"
POLL = 0.01


def wait_for(check: Any, what: str, timeout: float) -> float:
    """Seconds (perf_counter) at which ``check()`` first held; polled every ``POLL``."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout} s: {what}")
        time.sleep(POLL)


def denies(user: MatrixUser, room: str, host: str) -> bool:
    return host in ((user.state(room, "m.room.server_acl") or {}).get("deny") or [])


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    home, partner, gateway = gated_pair(workdir)
    maubot: Maubot | None = None
    try:
        start_side_by_side(home.start, partner.start, gateway.start)
        password = "bench-rooms-pw"
        bot, sec, alice = (MatrixUser.register(home, n, password) for n in ("bot", "sec", "alice"))
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
        maubot = start_bot(workdir, home, bot, control, sec, config)
        # Alice creates the room (room version 12: the creator is above every level).
        room = alice.create_room(invite=(bot.user_id,), name="protected")
        alice.wait_membership(room, bot.user_id)  # maubot autojoins
        levels = alice.state(room, "m.room.power_levels")
        assert levels is not None
        levels["users"] = {bot.user_id: 100}
        alice.call(
            "PUT", f"/_matrix/client/v3/rooms/{quote(room)}/state/m.room.power_levels/", levels
        )
        alice.invite(room, bob.user_id)
        join_when_invited(bob, room)
        alice.wait_membership(room, bob.user_id)
        reply = sec.ask(control, f"!sbg room protect {room}")
        if "(ledger, ACL, policy server)" not in reply:
            raise RuntimeError(f"cannot protect the room: {reply}")
        wait_for(lambda: bob.state(room, "m.room.policy"), "the partner sees the policy", 30)
        probes = wait_consulted(gateway, bob, room)

        change: list[float] = []
        in_home: list[float] = []
        reference: list[float] = []
        deadline = time.monotonic() + args.max_seconds
        for n in range(args.changes + args.warmup):
            host = f"bench{n}.example"
            t0 = time.perf_counter()
            sec.send(control, f"!sbg rule add server_block {host}")
            t_home = wait_for(lambda h=host: denies(alice, room, h), f"{host} in home's ACL", 30)
            t_partner = wait_for(lambda h=host: denies(bob, room, h), f"{host} on the partner", 30)
            topic = f"topic {n}"
            t1 = time.perf_counter()
            alice.call(
                "PUT",
                f"/_matrix/client/v3/rooms/{quote(room)}/state/m.room.topic/",
                {"topic": topic},
            )
            t_topic = wait_for(
                lambda t=topic: (bob.state(room, "m.room.topic") or {}).get("topic") == t,
                "the topic on the partner",
                30,
            )
            if n >= args.warmup:
                change.append(t_partner - t0)
                in_home.append(t_home - t0)
                reference.append(t_topic - t1)
            time.sleep(0.3)  # let the bot's notices go out before the next change
            if time.monotonic() > deadline:
                break
        acl = bob.state(room, "m.room.server_acl") or {}
        # The partner's Synapse asked our policy server about each ACL event of the bot.
        signed_acl = [
            row
            for row in gateway.decisions(source="policy_server", decision="allow")
            if row["event_type"] == "m.room.server_acl"
        ]
    finally:
        if maubot is not None:
            maubot.stop()
        gateway.stop()
        home.stop()
        partner.stop()
    rule, ref, home_part = summary(change), summary(reference), summary(in_home)
    return {
        "request": "!sbg rule add server_block → the partner's server shows the ACL deny",
        "path": "real maubot and plugin: chat command, admin API write, bot re-apply, federation,"
        " the partner's policy-server check",
        "rule_change_to_partner_acl_ms": rule,
        "rule_change_to_home_acl_ms": home_part,
        "reference_plain_state_write_to_partner_ms": ref,
        "ratio_rule_change_to_reference": {
            "p50": round(rule["p50_ms"] / ref["p50_ms"], 2),
            "p99": round(rule["p99_ms"] / ref["p99_ms"], 2),
        },
        "deny_entries_at_the_end": len(acl.get("deny") or []),
        "acl_events_signed_by_our_policy_server": len(signed_acl),
        "probes_before_the_partner_asked": probes,
        "poll_interval_ms": POLL * 1000,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            "load_1min_before": round(load_before, 2),
        },
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        ("rule change → partner ACL", result["rule_change_to_partner_acl_ms"]),
        ("  of which → home ACL", result["rule_change_to_home_acl_ms"]),
        ("reference: state → partner", result["reference_plain_state_write_to_partner_ms"]),
    ]
    lines = [result["request"], f"{'':28} {'n':>4} {'p50 ms':>8} {'p99 ms':>8}"]
    for name, data in rows:
        lines.append(f"{name:28} {data['n']:>4} {data['p50_ms']:>8.2f} {data['p99_ms']:>8.2f}")
    ratio = result["ratio_rule_change_to_reference"]
    lines.append(f"rule change / reference: p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20, help="timed rule changes (≥ 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed changes first")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="stop changing after")
    args = parser.parse_args(argv)
    if args.changes < 10:
        parser.error("--changes must be at least 10")
    workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-rooms-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
