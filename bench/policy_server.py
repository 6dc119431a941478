"""Policy server benchmark: what our gateway's signature costs a partner's message.

    .venv/bin/python bench/policy_server.py [--messages 200]

Starts, on loopback, two federating Synapses over TLS, ``home`` behind ``python -m dmz_api``
(the gateway proxy with ``gateway.policy_server`` and the compliance-ledger preset), and
``partner``. Alice (home) creates two rooms and invites Bob (partner): ``protected`` names
home as its policy server (``m.room.policy``), ``plain`` does not. Bob's Synapse then asks
our gateway (``POST /_matrix/policy/v1/sign`` through the proxy, X-Matrix verified, judged,
signed) before each message it sends to ``protected``, and asks no one for ``plain``.

Bob sends ``--messages`` messages to each room, alternating (so drift hits both alike); each
is timed at Bob's client (``PUT /send``, answered once his Synapse has the event, signature
included). The figures: p50/p99 of both, the ratio protected/plain and the difference, plus
the sign request's own duration as Bob's Synapse logs it (10 ms resolution), and the
gateway's own signing work per event measured in-process (event id, redaction, ed25519
signature; without HTTP and the X-Matrix check). Writes ``bench/results/policy_server.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import percentile, summary, write_results  # noqa: E402
from devstack.border import Gateway, GatewayedSynapse, wait_consulted  # noqa: E402
from devstack.guests import join_when_invited  # noqa: E402
from devstack.matrix import MatrixUser  # noqa: E402
from devstack.process import http_json, start_side_by_side  # noqa: E402
from devstack.synapse import Synapse  # noqa: E402
from dmz_api.gateway.signing.events import event_id, redact  # noqa: E402
from dmz_api.gateway.signing.keys import PolicyKey  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "policy_server.json"
ACTOR = "@bench:corp.example"
# Synapse: "... Completed request: 200 OK in 0.01 secs, got 120 bytes - POST .../sign"
SIGN_LINE = re.compile(r"Completed request: 200 OK in ([0-9.]+) secs.*/_matrix/policy/v1/sign")


def timed_send(user: MatrixUser, room: str, n: int) -> float:
    path = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/bench{n}"
    started = time.perf_counter()
    status, body = http_json(
        "PUT",
        f"{user.hs.base_url}{path}",
        {"msgtype": "m.text", "body": f"bench message {n}"},
        token=user.token,
    )
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"send {n}: {status} {body}")
    return elapsed


def signing_work(iterations: int = 2000) -> dict[str, float]:
    """Per-event signing work in µs: what the sign handler does besides HTTP and X-Matrix."""
    key = PolicyKey.generate()
    event = {
        "type": "m.room.message",
        "room_id": "!bench:corp.example",
        "sender": "@bob:partner.example",
        "content": {"msgtype": "m.text", "body": "bench message " * 8},
        "depth": 12,
        "prev_events": ["$" + "p" * 43],
        "auth_events": ["$" + "a" * 43, "$" + "b" * 43, "$" + "c" * 43],
        "origin_server_ts": 1_700_000_000_000,
        "hashes": {"sha256": "h" * 43},
        "signatures": {"partner.example": {"ed25519:a": "s" * 86}},
    }
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        event_id(event, "10")
        key.sign("corp.example", redact(event, "10"))
        samples.append(time.perf_counter() - started)
    us = [sample * 1e6 for sample in samples]
    return {"p50_us": round(percentile(us, 50), 1), "p99_us": round(percentile(us, 99), 1)}


def gated_pair(workdir: Path) -> tuple[Synapse, Synapse, Gateway]:
    """Our Synapse behind the gateway's TLS proxy (policy server on) and a partner Synapse,
    not yet started: the set-up this benchmark and ``bench/protected_rooms.py`` share."""
    border = GatewayedSynapse(
        workdir,
        name="home",
        gateway={
            "policy_server": {},
            # The production defaults, but each sign decision is recorded in full so the
            # benchmarks can read it back (allows are counted otherwise).
            "reload_interval": 1.0,
            "decision_log": {"allow": "full"},
        },
    )
    partner = Synapse(workdir / "partner", name="partner", federation=True)
    return border.synapse, partner, border.gateway


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    home, partner, gateway = gated_pair(workdir)
    try:
        start_side_by_side(home.start, partner.start, gateway.start)
        status, body = gateway.call(
            "POST", "/v1/rules/preset/compliance-ledger", {}, acting_user=ACTOR
        )
        assert status in (200, 201), body
        status, well_known = http_json(
            "GET", f"{gateway.base_url}/.well-known/matrix/policy_server"
        )
        assert status == 200, well_known
        alice = MatrixUser.register(home, "alice", "alice-password")
        bob = MatrixUser.register(partner, "bob", "bob-password")
        rooms = {}
        for name in ("protected", "plain"):
            rooms[name] = alice.create_room(invite=(bob.user_id,), name=name)
        policy = {"via": home.server_name, "public_keys": well_known["public_keys"]}
        alice.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(rooms['protected'])}/state/m.room.policy/",
            policy,
        )
        for room in rooms.values():
            join_when_invited(bob, room)
            alice.wait_membership(room, bob.user_id)
        probes = wait_consulted(gateway, bob, rooms["protected"])
        for n in range(10):  # warm both paths (connections, caches)
            timed_send(bob, rooms["protected"], -1 - n)
            timed_send(bob, rooms["plain"], -1 - n)
        samples: dict[str, list[float]] = {"protected": [], "plain": []}
        deadline = time.monotonic() + args.max_seconds
        for n in range(args.messages):
            for name in ("protected", "plain") if n % 2 else ("plain", "protected"):
                samples[name].append(timed_send(bob, rooms[name], n))
            if time.monotonic() > deadline:
                break
        signs = [
            float(m.group(1))
            for line in (partner.workdir / "homeserver.log").read_text().splitlines()
            if (m := SIGN_LINE.search(line))
        ]
        allowed = gateway.decisions(source="policy_server", decision="allow")
    finally:
        gateway.stop()
        home.stop()
        partner.stop()
    protected, plain = summary(samples["protected"]), summary(samples["plain"])
    return {
        "request": "partner client PUT /send m.room.message, protected room vs plain room",
        "send_ms": {"protected": protected, "plain": plain},
        "ratio_protected_to_plain": {
            "p50": round(protected["p50_ms"] / plain["p50_ms"], 2),
            "p99": round(protected["p99_ms"] / plain["p99_ms"], 2),
        },
        "added_ms": {
            "p50": round(protected["p50_ms"] - plain["p50_ms"], 2),
            "p99": round(protected["p99_ms"] - plain["p99_ms"], 2),
        },
        "sign_request_ms_seen_by_partner": summary(signs) if signs else None,
        "signing_work_us": signing_work(),
        "policy_decisions_allowed": len(allowed),
        "probes_before_the_partner_asked": probes,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            "load_1min_before": round(load_before, 2),
        },
    }


def table(result: dict[str, Any]) -> str:
    send, ratio, added = result["send_ms"], result["ratio_protected_to_plain"], result["added_ms"]
    lines = [
        result["request"],
        f"{'':12} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for name in ("plain", "protected"):
        data = send[name]
        lines.append(f"{name:12} {data['n']:>5} {data['p50_ms']:>8.2f} {data['p99_ms']:>8.2f}")
    lines.append(
        f"protected/plain: p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x"
        f" (+{added['p50']:.2f} ms p50, +{added['p99']:.2f} ms p99)"
    )
    sign = result["sign_request_ms_seen_by_partner"]
    if sign:
        lines.append(
            f"sign request as the partner logs it: p50 {sign['p50_ms']:.0f} ms,"
            f" p99 {sign['p99_ms']:.0f} ms (n={sign['n']}, 10 ms resolution)"
        )
    work = result["signing_work_us"]
    lines.append(
        f"gateway signing work per event: p50 {work['p50_us']:.0f} µs, p99 {work['p99_us']:.0f} µs"
    )
    lines.append(
        f"partner asked only after {result['probes_before_the_partner_asked']} probe message(s)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="timed messages per room")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-policy-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
