"""``make demo``: the whole of Bastion on one machine, on loopback, with throwaway data.

Starts the internal Synapse (staff and the bot), the DMZ Synapse (guests), the gateway in
front of the DMZ Synapse, the registrar, and maubot running the plugin in a control room
with a staff user, a security user and an auditor. Runs a scripted scenario through the
client-server API and prints the transcript, then leaves the stack up, printing URLs and
passwords for any Matrix client, until Ctrl-C stops everything.

Ctrl-C, SIGTERM and SIGHUP (its terminal closed) stop every process cleanly; if the demo
itself is killed outright, the kernel stops its children (``devstack.process``). Once up it
writes ``stack.json`` in the work directory: every process's PID and ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from .dmz import DmzApi
from .matrix import MatrixUser
from .ports import free_port
from .process import http_json
from .stack import GuestBrowser, control_room, onboarding_url, plugin_config, start_bot, token_id
from .synapse import Synapse

RULE_ID = re.compile(r"`(r[0-9a-z_-]+|[0-9a-f]{6,})`")


def _quiet_print(text: str) -> None:
    """Print unless the terminal is gone (SIGHUP): stopping must not fail on a dead tty."""
    with contextlib.suppress(OSError, ValueError):
        print(text, flush=True)


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass
class Transcript:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(text)
        _quiet_print(text)

    def step(self, title: str) -> None:
        self.say(f"\n── {title}")

    def command(self, who: str, text: str, reply: str) -> None:
        self.say(f"  {who} > {text}")
        for line in reply.strip().splitlines() or [""]:
            self.say(f"      bastion │ {line}")

    def check(self, ok: bool, text: str) -> None:
        self.say(f"  {'✔' if ok else '✘'} {text}")
        if not ok:
            self.failures.append(text)


class DemoStack:
    """Every process of the demo; ``stop()`` stops what was started, in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Stoppable] = []
        self.password = secrets.token_urlsafe(9)
        self.api_key = secrets.token_urlsafe(32)

    def _start(self, thing: Any) -> Any:
        self.running.append(thing)
        thing.start()
        return thing

    def start(self, say: Callable[[str], None]) -> DemoStack:
        say("starting the internal homeserver (corp.localhost) and the DMZ homeserver")
        self.internal: Synapse = self._start(
            Synapse(self.workdir / "internal", name="corp", server_name="corp.localhost")
        )
        self.dmz: Synapse = self._start(
            Synapse(self.workdir / "dmz", name="dmz", server_name="partners.localhost")
        )
        shared = {"log_level": "WARNING"}
        gateway_port = free_port()
        say("starting dmz_api: the gateway (in front of the DMZ homeserver) and the registrar")
        self.gateway: DmzApi = self._start(
            DmzApi(
                self.workdir / "gateway",
                {
                    **shared,
                    "api_keys": [
                        {
                            "name": "chatops-bot",
                            "key": self.api_key,
                            "scopes": ["rules", "decisions"],
                        }
                    ],
                    "gateway": {
                        "server_name": self.dmz.server_name,
                        "upstream": self.dmz.base_url,
                        "listen": {"host": "127.0.0.1", "port": gateway_port},
                        "decision_log": {"flush_interval": 0.1},
                    },
                },
                name="gateway",
            )
        )
        self.gateway_port = gateway_port
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        self.registrar: DmzApi = self._start(
            DmzApi(
                self.workdir / "registrar",
                {
                    **shared,
                    "api_keys": [
                        {"name": "chatops-bot", "key": self.api_key, "scopes": ["tokens", "guests"]}
                    ],
                    "registrar": {
                        "homeserver": {
                            "kind": "synapse",
                            "url": self.dmz.base_url,
                            # Guests reach their homeserver through the gateway.
                            "client_url": self.gateway_url,
                            "server_name": self.dmz.server_name,
                            "admin_token": self.dmz.admin_token,
                        },
                        "secret": secrets.token_urlsafe(32),
                        "token_defaults": {"uses": 1, "expires_in": "24h"},
                    },
                },
                name="registrar",
            )
        )
        say("creating the staff, security and auditor accounts and the control room")
        self.bot = MatrixUser.register(self.internal, "bastion", self.password)
        self.staff = MatrixUser.register(self.internal, "alice", self.password)
        self.security = MatrixUser.register(self.internal, "sam", self.password)
        self.auditor = MatrixUser.register(self.internal, "ada", self.password)
        self.room = control_room(self.staff, self.security, self.auditor)
        say("starting maubot with the Bastion plugin")
        config = plugin_config(
            self.room,
            self.internal,
            operators=[self.staff.user_id],
            gateway_admins=[self.security.user_id],
            auditors=[self.auditor.user_id],
            registrar_url=self.registrar.base_url,
            gateway_url=self.gateway.base_url,
            api_key=self.api_key,
            on_staff_deactivated={"revoke_tokens": True, "guests": "keep"},
            sweep_interval="1m",
            audit={"export_key": secrets.token_urlsafe(24)},
        )
        self.maubot = start_bot(
            self.workdir, self.internal, self.bot, self.room, self.staff, config
        )
        self.running.append(self.maubot)
        return self

    def stop(self) -> None:
        while self.running:
            self.running.pop().stop()

    def describe(self) -> dict[str, Any]:
        """Every process: PID and the ports it listens on (for operators and tests)."""
        parts = {
            "internal": (self.internal.process, [self.internal.port]),
            "dmz": (self.dmz.process, [self.dmz.port]),
            "gateway": (self.gateway.process, [self.gateway.port, self.gateway_port]),
            "registrar": (self.registrar.process, [self.registrar.port]),
            "maubot": (self.maubot.process, [self.maubot.port]),
        }
        return {
            "demo_pid": os.getpid(),
            "processes": {
                name: {"pid": process.proc.pid if process.proc else None, "ports": ports}
                for name, (process, ports) in parts.items()
            },
        }


def guest_call(stack: DemoStack, token: str, method: str, path: str, body: Any = None) -> Any:
    """A guest's client-server request, through the gateway like a real guest client."""
    return http_json(method, f"{stack.gateway_url}{path}", body, token=token)


def run_scenario(stack: DemoStack, t: Transcript) -> None:
    staff, security, auditor, room = stack.staff, stack.security, stack.auditor, stack.room

    def ask(user: MatrixUser, text: str) -> str:
        reply = user.ask(room, text, timeout=30)
        t.command(user.user_id, text, reply)
        return reply

    t.step("1. A staff member mints an onboarding link")
    listing = ask(staff, "!bastion help")
    t.check("`!token generate" in listing, "!bastion help lists what the staff member may run")
    ask(staff, "!bastion whoami")
    reply = ask(staff, '!token generate --note "Partner onboarding: Bob from Contoso"')
    url = onboarding_url(reply)
    t.check("/register?token=" in url, "the bot answered with a single-use onboarding URL")

    t.step("2. The guest opens the link and creates an account on the DMZ homeserver")
    guest = GuestBrowser()
    guest_password = secrets.token_urlsafe(12)
    status, page = guest.register(url, "bob", guest_password)
    t.check(
        status == 200 and "@bob:partners.localhost" in page,
        "account @bob:partners.localhost created",
    )
    status, login = http_json(
        "POST",
        f"{stack.gateway_url}/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
         "password": guest_password},
    )  # fmt: skip
    t.check(status == 200, "the guest signs in through the gateway")
    guest_token = login["access_token"] if status == 200 else ""
    status, _ = guest.open(url)
    t.check(status == 410, f"the used link now answers {status} (used)")

    t.step("3. Security staff switch on the compliance-ledger preset")
    ask(security, "!sbg preset compliance-ledger --yes")
    status, created = guest_call(stack, guest_token, "POST", "/_matrix/client/v3/createRoom",
                                 {"name": "Contoso project"})  # fmt: skip
    t.check(status == 200, "the guest creates an ordinary room")
    guest_room = created.get("room_id", "") if isinstance(created, dict) else ""
    path = f"/_matrix/client/v3/rooms/{quote(guest_room)}/state/m.room.encryption/"
    status, refused = guest_call(
        stack, guest_token, "PUT", path, {"algorithm": "m.megolm.v1.aes-sha2"}
    )
    t.say(f"  guest > PUT …/state/m.room.encryption → {status} {refused}")
    t.check(
        status == 403 and refused.get("errcode") == "M_FORBIDDEN",
        "turning on encryption is refused at the gateway (immutable, auditable history)",
    )
    status, _ = guest_call(
        stack, guest_token, "PUT",
        f"/_matrix/client/v3/rooms/{quote(guest_room)}/send/m.room.message/demo1",
        {"msgtype": "m.text", "body": "Hello from Contoso"},
    )  # fmt: skip
    t.check(status == 200, "ordinary messages still pass")

    t.step("4. A rule in audit mode first, then promoted to enforce")
    reply = ask(
        security, '!sbg rule add server_block evil.example --audit --note "known bad actor"'
    )
    match = RULE_ID.search(reply)
    t.check(match is not None, "the rule was added in audit mode")
    if match:
        ask(security, "!sbg test federation evil.example --type m.room.message")
        ask(security, f"!sbg rule promote {match.group(1)} --yes")
        ask(security, "!sbg test federation evil.example --type m.room.message")
    ask(auditor, "!sbg rule list")

    t.step("5. A staff member leaves: their open links are revoked at once")
    reply = ask(staff, '!token generate --note "never used"')
    open_url = onboarding_url(reply)
    open_id = token_id(reply)
    status, _ = stack.internal.admin(
        "POST", f"/_synapse/admin/v1/deactivate/{quote(staff.user_id)}", {"erase": False}
    )
    t.say(f"  (the directory deactivates {staff.user_id}: {status})")
    bot_id = stack.bot.user_id
    notice = auditor.wait_event(
        room,
        lambda e: e["sender"] == bot_id and "deactivated" in e["content"].get("body", ""),
        timeout=30,
    )
    t.command("bastion", "(notice)", notice["content"]["body"])
    status, page = GuestBrowser().open(open_url)
    t.check(status == 410, f"token {open_id}: the onboarding page now answers {status} (revoked)")

    t.step("6. The auditor checks the trail")
    reply = ask(auditor, "!audit --limit 5")
    reply = ask(auditor, "!audit verify")
    t.check("is intact" in reply, "the hash chain verifies")


def print_access(stack: DemoStack, say: Callable[[str], None]) -> None:
    say("\n── The stack is up. Sign in with any Matrix client (password for all: "
        f"{stack.password})")  # fmt: skip
    say(f"  internal homeserver  {stack.internal.base_url}  "
        f"users: {stack.staff.user_id} (deactivated by the scenario), {stack.security.user_id}, "
        f"{stack.auditor.user_id}")  # fmt: skip
    say(f"  control room         {stack.room}")
    say(f"  DMZ homeserver       {stack.gateway_url}  (through the gateway; Synapse itself at "
        f"{stack.dmz.base_url})")  # fmt: skip
    say(f"  registrar            {stack.registrar.base_url}  (onboarding page /register, API /v1)")
    say(f"  gateway admin API    {stack.gateway.base_url}")
    say(f"  dmz_api API key      {stack.api_key}")
    say(f"  synapse admins       {stack.internal.admin_user_id} / {stack.dmz.admin_user_id}, "
        f"passwords {stack.internal.admin_password} / {stack.dmz.admin_password}")  # fmt: skip
    say("Try `!bastion help` in the control room as @sam or @ada. Press Ctrl-C to stop.")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_requested(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, help="keep data here (default: a temp dir)")
    parser.add_argument(
        "--no-wait", action="store_true", help="run the scenario, then stop (for tests and CI)"
    )
    parser.add_argument(
        "--no-scenario", action="store_true", help="start the stack and wait, without the scenario"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bastion-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    transcript = Transcript()
    stack = DemoStack(workdir)
    previous = {sig: signal.signal(sig, _stop_requested) for sig in STOP_SIGNALS}
    started = time.monotonic()
    reason = "the end of the run"
    try:
        transcript.step("Starting Bastion on loopback")
        stack.start(lambda line: transcript.say(f"  {line}"))
        transcript.say(f"  ready in {time.monotonic() - started:.1f} s")
        if not args.no_scenario:
            try:
                run_scenario(stack, transcript)
            except Exception as e:  # a failed step must still leave a readable transcript
                transcript.check(False, f"the scenario stopped: {type(e).__name__}: {e}")
            if transcript.failures:
                transcript.say(f"\n{len(transcript.failures)} step(s) did not go as expected.")
            else:
                transcript.say("\nEvery step went as expected.")
        (workdir / "transcript.txt").write_text("\n".join(transcript.lines) + "\n")
        if args.no_wait:
            return 1 if transcript.failures else 0
        print_access(stack, transcript.say)
        (workdir / "stack.json").write_text(json.dumps(stack.describe(), indent=2) + "\n")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt as e:
        reason = str(e) or "SIGINT"
        return 0
    finally:
        # A second signal (tmux sends SIGHUP, then the shell's SIGTERM) must not cut the stop
        # short; a stop that hangs is still ended by kill -9, which PDEATHSIG turns into
        # SIGTERM for every child.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        _quiet_print("\n── stopping")
        stack.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            (workdir / "stopped.txt").write_text(f"stopped cleanly on {reason}\n")
        _quiet_print("  stopped cleanly")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
