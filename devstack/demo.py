"""``make demo``: the whole of Bastion on one machine, on loopback, with throwaway data.

Starts the internal Synapse (staff, the bot, a project room) behind the gateway, which is
its federation border and the project room's policy server; the DMZ Synapse (guests), which
federates with it through the gateway; the registrar; and maubot running the plugin in a
control room with a staff user, a security user and an auditor. Runs a scripted scenario
through the client-server API — a guest onboarded into the project room, the room protected
on the guest's own server, a rule promoted, the guest offboarded, a leaver's links revoked,
the trail verified — and prints the transcript, then leaves the stack up, printing URLs
and passwords for any Matrix client, until Ctrl-C stops everything.

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

from .border import Gateway, GatewayedSynapse, endpoint, wait_consulted
from .dmz import DmzApi
from .guests import join_when_invited, project_room, sign_in, wait_invited
from .matrix import MatrixUser
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

    def start(self, say: Callable[[str], None]) -> DemoStack:
        say("starting the internal homeserver behind the gateway (its border, with a policy "
            "server), and the DMZ homeserver")  # fmt: skip
        # Loopback federation needs names of the form localhost:PORT (TESTING-NOTES): the
        # internal server is named after the gateway's port, so the DMZ server reaches it
        # only through the gateway.
        self.border = GatewayedSynapse(
            self.workdir,
            name="internal",
            gateway={"policy_server": {}},
            api_key=self.api_key,
        )
        # The bot's key may change rules and read decisions at the border, nothing else.
        self.border.gateway.config["api_keys"] = [
            {"name": "chatops-bot", "key": self.api_key, "scopes": ["rules", "decisions"]}
        ]
        self.dmz = Synapse(self.workdir / "dmz", name="dmz", federation=True)
        self.running.append(self.dmz)
        self.running.append(self.border)
        self.border.start(also=(self.dmz.start,))
        self.internal: Synapse = self.border.synapse
        self.gateway: Gateway = self.border.gateway
        say("starting dmz_api's registrar (in front of the DMZ homeserver)")
        self.registrar: DmzApi = DmzApi(
            self.workdir / "registrar",
            {
                "log_level": "WARNING",
                "api_keys": [
                    {"name": "chatops-bot", "key": self.api_key, "scopes": ["tokens", "guests"]}
                ],
                "registrar": {
                    "homeserver": {
                        "kind": "synapse",
                        "url": self.dmz.base_url,
                        "server_name": self.dmz.server_name,
                        "admin_token": self.dmz.admin_token,
                    },
                    "secret": secrets.token_urlsafe(32),
                    "token_defaults": {"uses": 1, "expires_in": "24h"},
                },
            },
            name="registrar",
        )
        self.running.append(self.registrar)
        self.registrar.start()
        say("creating the staff, security and auditor accounts, the control room and the "
            "project room")  # fmt: skip
        self.bot = MatrixUser.register(self.internal, "bastion", self.password)
        self.staff = MatrixUser.register(self.internal, "alice", self.password)
        self.security = MatrixUser.register(self.internal, "sam", self.password)
        self.auditor = MatrixUser.register(self.internal, "ada", self.password)
        self.room = control_room(self.staff, self.security, self.auditor)
        say("starting maubot with the Bastion plugin")
        config = plugin_config(
            self.room,
            self.internal,
            # sam too, so that someone can still mint links once the scenario has
            # deactivated alice.
            operators=[self.staff.user_id, self.security.user_id],
            gateway_admins=[self.security.user_id],
            auditors=[self.auditor.user_id],
            registrar_url=self.registrar.base_url,
            gateway_url=self.gateway.base_url,
            api_key=self.api_key,
            on_staff_deactivated={"revoke_tokens": True, "guests": "keep"},
            sweep_interval="1m",
            registrations={"poll_interval": 1},
            audit={"export_key": secrets.token_urlsafe(24)},
        )
        self.maubot = start_bot(
            self.workdir, self.internal, self.bot, self.room, self.staff, config
        )
        self.running.append(self.maubot)
        # The project room: alice's, the bot at the top level so that it may invite guests,
        # protect the room and take guests out again.
        self.project = project_room(
            self.staff, self.bot, alias="contoso", name="Contoso project", moderators=(self.bot,),
            moderator_level=100,
        )  # fmt: skip
        self.project_alias = f"#contoso:{self.internal.server_name}"
        return self

    def stop(self) -> None:
        while self.running:
            self.running.pop().stop()

    def describe(self) -> dict[str, Any]:
        """Every process: PID and the ports it listens on (for operators and tests)."""
        parts = {
            "internal": (
                self.internal.process,
                [self.internal.port, self.internal.federation_port],
            ),
            "dmz": (self.dmz.process, [self.dmz.port, self.dmz.federation_port]),
            "gateway": (self.gateway.process, [self.gateway.port, self.border.proxy_port]),
            "registrar": (self.registrar.process, [self.registrar.port]),
            "maubot": (self.maubot.process, [self.maubot.port]),
        }
        return {
            "demo_pid": os.getpid(),
            "processes": {
                name: {
                    "pid": process.proc.pid if process.proc else None,
                    "ports": [port for port in ports if port is not None],
                }
                for name, (process, ports) in parts.items()
            },
        }


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``check()`` once it is truthy (federation is quick but not instant), else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def join_steps(stack: DemoStack, room: str) -> set[str]:
    """The federation join endpoints the gateway let through from the DMZ server for ``room``."""
    rows = stack.gateway.decisions(origin=stack.dmz.server_name, decision="allow")
    return {endpoint(row) for row in rows if row.get("room") == room}


def run_scenario(stack: DemoStack, t: Transcript) -> None:
    staff, security, auditor, room = stack.staff, stack.security, stack.auditor, stack.room
    project, dmz = stack.project, stack.dmz

    def ask(user: MatrixUser, text: str) -> str:
        reply = user.ask(room, text, timeout=30)
        t.command(user.user_id, text, reply)
        return reply

    t.step("1. Security staff set the border: the compliance-ledger preset")
    reply = ask(security, "!sbg preset compliance-ledger --yes")
    t.check("version" in reply, "the preset's rules are enforced at the gateway")

    t.step("2. A staff member mints a link that brings the guest into the project room")
    listing = ask(staff, "!bastion help")
    t.check("`!token generate" in listing, "!bastion help lists what the staff member may run")
    ask(staff, "!bastion whoami")
    reply = ask(
        staff,
        f'!token generate --invite {stack.project_alias} --note "Partner onboarding: Bob from '
        'Contoso"',
    )
    url = onboarding_url(reply)
    t.check("/register?token=" in url, "the bot answered with a single-use onboarding URL")
    t.check(f"`{project}`" in reply, "its guest will be invited to the project room")

    t.step("3. The guest registers on the DMZ homeserver and lands in the project room")
    guest_page = GuestBrowser()
    guest_password = secrets.token_urlsafe(12)
    bob_id = dmz.user_id("bob")
    status, page = guest_page.register(url, "bob", guest_password)
    t.check(status == 200 and bob_id in page, f"account {bob_id} created on the page")
    status, _ = guest_page.open(url)
    t.check(status == 410, f"the used link now answers {status} (used)")
    bob = sign_in(dmz, "bob", guest_password)
    t.say(f"  (the guest signs in to {dmz.base_url} with any Matrix client)")
    wait_invited(bob, project, timeout=30)
    t.check(True, f"the bot invited {bob_id} into {stack.project_alias}")
    join_when_invited(bob, project)
    joined = eventually(lambda: staff.membership(project, bob_id) == "join")
    t.check(joined, "the guest joined over federation")
    through = eventually(lambda: {"make_join", "send_join"} <= join_steps(stack, project))
    t.check(through, "the DMZ server's make_join and send_join passed the gateway (its log)")
    notice = staff.wait_event(
        room, lambda e: f"guest {bob_id} registered" in e["content"].get("body", ""), timeout=30
    )
    t.command("bastion", "(notice)", notice["content"]["body"])

    t.step("4. Security staff protect the project room: its rules hold on the guest's server too")
    reply = ask(security, f"!sbg room protect {stack.project_alias}")
    t.check("policy server" in reply, "power levels, server ACL and our policy server are set")
    has_policy = eventually(lambda: bob.state(project, "m.room.policy"))
    t.check(bool(has_policy), "the guest's homeserver names our policy server for the room")
    try:
        wait_consulted(stack.gateway, bob, project, probe="Hello from Contoso")
        consulted = True
    except AssertionError:
        consulted = False
    t.check(consulted, "the guest's homeserver asks our policy server before it sends")
    mine = staff.send(project, "Minutes of the kick-off, for the record")
    eventually(lambda: any(e["event_id"] == mine for e in bob.messages(project)))
    status, refused = bob_call(
        bob, "PUT", f"/rooms/{quote(project)}/state/m.room.encryption/",
        {"algorithm": "m.megolm.v1.aes-sha2"},
    )  # fmt: skip
    t.say(f"  guest > PUT …/state/m.room.encryption → {status} {refused}")
    t.check(
        status in (400, 403) and "gateway rule" in str(refused.get("error")),
        "turning on encryption is refused by the guest's own homeserver, on our policy "
        "server's answer (the room's history stays readable)",
    )
    status, refused = bob_call(
        bob, "PUT", f"/rooms/{quote(project)}/redact/{quote(mine)}/demo1", {"reason": "oops"}
    )
    t.say(f"  guest > PUT …/redact/<the minutes> → {status} {refused}")
    t.check(
        status in (400, 403) and "gateway rule" in str(refused.get("error")),
        "redacting our record is refused too",
    )
    bob.send(project, "Understood, plain text it is")
    heard = eventually(
        lambda: any(
            e["content"].get("body") == "Understood, plain text it is"
            for e in staff.messages(project)
        )
    )
    t.check(heard, "ordinary messages still flow both ways")
    ask(security, "!sbg decisions --blocked --limit 3")

    t.step("5. A rule in audit mode first, then promoted to enforce; the room's ACL follows")
    reply = ask(
        security, '!sbg rule add server_block evil.example --audit --note "known bad actor"'
    )
    match = RULE_ID.search(reply)
    t.check(match is not None, "the rule was added in audit mode")
    if match:
        ask(security, "!sbg test federation evil.example --type m.room.message")
        ask(security, f"!sbg rule promote {match.group(1)} --yes")
        ask(security, "!sbg test federation evil.example --type m.room.message")
    acl = eventually(
        lambda: "evil.example" in (bob.state(project, "m.room.server_acl") or {}).get("deny", [])
    )
    t.check(acl, "the project room's server ACL denies evil.example, on the guest's server too")
    ask(auditor, "!sbg rule list")

    t.step("6. The project ends: one command offboards the guest")
    reply = ask(staff, f"!guest offboard {bob_id} --yes")
    left = eventually(lambda: staff.membership(project, bob_id) in ("leave", None))
    t.check(left, "the guest is out of the project room")
    status, account = dmz.admin("GET", f"/_synapse/admin/v2/users/{quote(bob_id)}")
    t.check(status == 200 and account.get("deactivated") is True,
            "the guest's DMZ account is deactivated")  # fmt: skip

    t.step("7. A staff member leaves: their open links are revoked at once")
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
        lambda e: (
            e["sender"] == bot_id
            and e["content"].get("body", "").startswith(f"{staff.user_id} is deactivated")
        ),
        timeout=30,
    )
    t.command("bastion", "(notice)", notice["content"]["body"])
    status, page = GuestBrowser().open(open_url)
    t.check(status == 410, f"token {open_id}: the onboarding page now answers {status} (revoked)")

    t.step("8. The auditor checks the trail")
    reply = ask(auditor, "!audit --limit 5")
    reply = ask(auditor, "!audit verify")
    t.check("is intact" in reply, "the hash chain verifies")


def bob_call(guest: MatrixUser, method: str, path: str, body: Any) -> tuple[int, Any]:
    """One client-server request of the guest's, answered by the guest's own homeserver."""
    status, answer = http_json(
        method, f"{guest.hs.base_url}/_matrix/client/v3{path}", body, token=guest.token
    )
    return status, answer if isinstance(answer, dict) else {}


def print_access(stack: DemoStack, say: Callable[[str], None]) -> None:
    say("\n── The stack is up. Sign in with any Matrix client (password for all: "
        f"{stack.password})")  # fmt: skip
    say(f"  internal homeserver  {stack.internal.base_url}  "
        f"users: {stack.staff.user_id} (deactivated by the scenario), {stack.security.user_id}, "
        f"{stack.auditor.user_id}")  # fmt: skip
    say(f"  control room         {stack.room}")
    say(f"  project room         {stack.project_alias}  (protected)")
    say(f"  DMZ homeserver       {stack.dmz.base_url}  ({stack.dmz.server_name})")
    say(f"  registrar            {stack.registrar.base_url}  (onboarding page /register, API /v1)")
    say(f"  gateway              https://localhost:{stack.border.proxy_port} (the internal "
        f"server's federation), admin API {stack.gateway.base_url}")  # fmt: skip
    say(f"  dmz_api API key      {stack.api_key}")
    say(f"  synapse admins       {stack.internal.admin_user_id} / {stack.dmz.admin_user_id}, "
        f"passwords {stack.internal.admin_password} / {stack.dmz.admin_password}")  # fmt: skip
    alias = stack.project_alias
    say("Try `!bastion help` in the control room as @sam (operator and security) or @ada; as "
        f"@sam, `!token generate --invite {alias}` onboards another guest and "
        f"`!sbg room check {alias}` checks the room. Press Ctrl-C to stop.")  # fmt: skip


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
