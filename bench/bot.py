"""Bot benchmark: command round trips through real maubot, and revocation after deactivation.

    .venv/bin/python bench/bot.py [--commands 40] [--revocations 15]

Starts two throwaway Synapses (internal, DMZ), the registrar (``python -m dmz_api``) and
maubot standalone with the plugin built into an ``.mbp``, all on loopback. A staff user
sends ``!bastion whoami`` and ``!token generate`` alternately over the client-server API; each
round trip runs from the send to the bot's reply arriving on the staff user's long-poll
``/sync``. ``!bastion whoami`` (gate + live status check + audit, no DMZ call) is the baseline,
so the ratio shows what minting through the registrar adds. Then staff members with an
open token are deactivated on the internal Synapse, and the onboarding page is polled
until it refuses their token. Prints a table and writes ``bench/results/bot.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import summary, write_results  # noqa: E402
from devstack.matrix import MatrixUser  # noqa: E402
from devstack.stack import BotStack, GuestBrowser, onboarding_url  # noqa: E402
from devstack.synapse import Synapse  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bot.json"
SYNC_FILTER = urllib.parse.quote(
    json.dumps(
        {
            "presence": {"types": []},
            "account_data": {"types": []},
            "room": {"timeline": {"limit": 50}, "state": {"types": []}, "ephemeral": {"types": []}},
        }
    )
)


class Syncer:
    """The staff user's client: sends a command, waits for the reply on long-poll /sync."""

    def __init__(self, user: MatrixUser) -> None:
        self.user = user
        self.since = str(self._sync(None, 0)["next_batch"])

    def _sync(self, since: str | None, timeout_ms: int) -> Any:
        query = f"filter={SYNC_FILTER}&timeout={timeout_ms}" + (f"&since={since}" if since else "")
        return self.user.call("GET", f"/_matrix/client/v3/sync?{query}")

    def round_trip(self, room_id: str, body: str, timeout: float = 30.0) -> tuple[float, str]:
        started = time.perf_counter()
        event_id = self.user.send(room_id, body)
        deadline = started + timeout
        while time.perf_counter() < deadline:
            result = self._sync(self.since, 5000)
            self.since = str(result["next_batch"])
            timeline = result.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {})
            for event in timeline.get("events", []):
                relation = event.get("content", {}).get("m.relates_to", {})
                if relation.get("m.in_reply_to", {}).get("event_id") == event_id:
                    return time.perf_counter() - started, str(event["content"]["body"])
        raise TimeoutError(f"no reply to {body!r} in {timeout} s")


def command_latencies(stack: BotStack, count: int) -> tuple[list[float], list[float]]:
    syncer = Syncer(stack.staff)
    for _ in range(3):
        syncer.round_trip(stack.room, "!bastion whoami")
        syncer.round_trip(stack.room, "!token generate --note warm-up")
    whoami: list[float] = []
    generate: list[float] = []
    for i in range(count):
        took, reply = syncer.round_trip(stack.room, "!bastion whoami")
        assert reply.startswith("You are "), reply
        whoami.append(took)
        took, reply = syncer.round_trip(stack.room, f"!token generate --note bench {i}")
        assert "/register?token=" in reply, reply
        generate.append(took)
    return whoami, generate


def revocation_latencies(stack: BotStack, count: int) -> list[float]:
    browser = GuestBrowser()
    samples: list[float] = []
    for i in range(count):
        operator = stack.add_operator(f"rev{i}")
        url = onboarding_url(operator.ask(stack.room, "!token generate"))
        assert browser.open(url)[0] == 200
        started = time.perf_counter()
        stack.deactivate(operator)
        while browser.open(url)[0] != 410:
            if time.perf_counter() - started > 30:
                raise TimeoutError("the token was not revoked within 30 s")
            time.sleep(0.01)
        samples.append(time.perf_counter() - started)
    return samples


def run(commands: int, revocations: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-bot-"))
    try:
        with (
            Synapse(workdir / "internal", name="corp") as internal,
            Synapse(workdir / "dmz", name="dmz") as dmz,
            BotStack(workdir / "stack", internal, dmz) as stack,
        ):
            whoami, generate = command_latencies(stack, commands)
            revoked = revocation_latencies(stack, revocations)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    w, g, r = summary(whoami), summary(generate), summary(revoked)
    return {
        "whoami": w,
        "token_generate": g,
        "ratio_p50": round(g["p50_ms"] / w["p50_ms"], 2),
        "ratio_p99": round(g["p99_ms"] / w["p99_ms"], 2),
        "deactivation_to_revoked": r,
        "revocation_target_ms": 2000,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=40, help="round trips of each command")
    parser.add_argument("--revocations", type=int, default=15, help="staff members deactivated")
    args = parser.parse_args()
    if args.commands < 30:
        parser.error("--commands must be at least 30")
    result = run(args.commands, args.revocations)
    rows = [
        ("!bastion whoami → reply", result["whoami"]),
        ("!token generate → reply", result["token_generate"]),
        ("deactivation → token refused", result["deactivation_to_revoked"]),
    ]
    print(f"{'':32} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for name, row in rows:
        print(
            f"{name:32} {row['n']:>4} {row['p50_ms']:>9.1f} {row['p99_ms']:>9.1f} "
            f"{row['mean_ms']:>9.1f}"
        )
    print(
        f"!token generate / !bastion whoami: {result['ratio_p50']}x at p50, "
        f"{result['ratio_p99']}x at p99"
    )
    write_results(RESULTS, result)


if __name__ == "__main__":
    main()
