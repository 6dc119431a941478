"""Guest invite benchmark: from the guest's "Create account" to the invite in their client.

    .venv/bin/python bench/guest_invite.py [--registrations 20] [--poll-interval 5s]

Starts two Synapses that federate over TLS on loopback (internal: staff, the bot, the
project room, behind the ``dmz_api`` gateway with zero trust letting only the DMZ server
in; DMZ: the guests), the registrar and maubot with the plugin. Staff mint one token with
``!token generate --invite <project room> --uses N``; each guest then opens the onboarding
URL in Debian's Chromium and types the form, and the clock starts when they press "Create
account". It stops when the invite to the project room reaches the guest's own client
(sign-in right after the page answers, then long-poll ``/sync``), as a person would see
it. Each guest starts at a random moment within a poll interval (the wait before is not
counted), so the figures are not phase-locked to the bot's reads.

The reference is the form submission alone (click → registrar → DMZ Synapse → answer
loaded in Chromium), so the ratio shows what following up adds: the wait for the bot's
next read of the registrations feed (``registrations.poll_interval``, the dominant term)
and the invite over federation. Prints a table and writes ``bench/results/guest_invite.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import summary, write_results  # noqa: E402
from devstack.border import GatewayedSynapse  # noqa: E402
from devstack.browser import ChromiumGuests  # noqa: E402
from devstack.guests import project_room, sign_in, wait_invited  # noqa: E402
from devstack.stack import BotStack, onboarding_url  # noqa: E402
from devstack.synapse import Synapse  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "guest_invite.json"


def one_guest(stack: BotStack, browser: ChromiumGuests, url: str, room: str) -> tuple[float, float]:
    """(form submission alone, submission to invite in the client), in seconds."""
    localpart = f"bench{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    answer = browser.register(url, localpart, password)
    assert answer.heading == "Your account is ready", answer.text[:300]
    guest = sign_in(stack.dmz, localpart, password)
    arrived = wait_invited(guest, room, timeout=60)
    return answer.answered - answer.submitted, arrived - answer.submitted


def run(registrations: int, poll_interval: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-invite-"))
    config = {"registrations": {"poll_interval": poll_interval}}
    # The gateway's decision log as shipped (not the tests' every-allow-in-full).
    border = GatewayedSynapse(workdir, name="corp", gateway={"decision_log": {}})
    dmz = Synapse(workdir / "dmz", name="dmz", federation=True)
    try:
        with (
            border.started(also=(dmz.start,)),
            BotStack(
                workdir / "stack", border.synapse, dmz, plugin_config=config, gateway=border.gateway
            ) as stack,
            ChromiumGuests() as browser,
        ):
            stack.staff.ask(
                stack.room, f"!sbg rule add server_allow {dmz.server_name} --yes"
            )  # zero trust: only the DMZ homeserver federates
            room = project_room(stack.staff, stack.bot)
            reply = stack.staff.ask(
                stack.room, f"!token generate --uses {registrations + 1} --invite {room}"
            )
            url = onboarding_url(reply)
            one_guest(stack, browser, url, room)  # warm-up: first handshake, key fetches
            page: list[float] = []
            invite: list[float] = []
            for _ in range(registrations):
                # Registrations come at any moment, not right after the bot's last read.
                time.sleep(random.uniform(0, poll_interval))
                submitted, invited = one_guest(stack, browser, url, room)
                page.append(submitted)
                invite.append(invited)
    finally:
        dmz.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    p, i = summary(page), summary(invite)
    return {
        "poll_interval_s": poll_interval,
        "create_account": p,
        "create_account_to_invite": i,
        "ratio_p50": round(i["p50_ms"] / p["p50_ms"], 2),
        "ratio_p99": round(i["p99_ms"] / p["p99_ms"], 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", value.strip())
    if not match:
        raise argparse.ArgumentTypeError("a duration such as 5s, 0.5s or 500ms")
    number = float(match.group(1))
    return number / 1000 if match.group(2) == "ms" else number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registrations", type=int, default=20, help="guests (at least 20)")
    parser.add_argument(
        "--poll-interval", type=seconds, default=5.0, help="registrations.poll_interval"
    )
    args = parser.parse_args()
    if not 20 <= args.registrations <= 200:
        parser.error("--registrations must be from 20 to 200")
    result = run(args.registrations, args.poll_interval)
    print(f"poll_interval {result['poll_interval_s']} s")
    print(f"{'':34} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for name, row in (
        ("Create account → page answers", result["create_account"]),
        ("Create account → invite in client", result["create_account_to_invite"]),
    ):
        print(
            f"{name:34} {row['n']:>4} {row['p50_ms']:>9.1f} {row['p99_ms']:>9.1f} "
            f"{row['mean_ms']:>9.1f}"
        )
    print(f"invite / page: {result['ratio_p50']}x at p50, {result['ratio_p99']}x at p99")
    name = f"guest_invite-{result['poll_interval_s']:g}s.json"
    write_results(RESULTS.with_name(name), result)


if __name__ == "__main__":
    main()
