"""The token stack for real: internal Synapse + maubot with the plugin, registrar + DMZ Synapse.

    stack = BotStack(tmp / "stack", internal, dmz).start()
    stack.staff.ask(stack.room, "!token generate")   # a real command, a real reply
    stack.stop()

Roles are globs (``@<prefix>op*`` operators, ``@<prefix>aud`` the auditor), so more staff
can be added while the bot runs (``add_operator``). Given the ``gateway`` in front of the
internal homeserver (``devstack.border``), the bot's ``!sbg`` commands go to it and the
first operator is its gateway admin too; the registrar shares the gateway's API key.
"""

from __future__ import annotations

import http.cookiejar
import re
import secrets
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from devstack.dmz import DmzApi
from devstack.maubot import Maubot, build_mbp
from devstack.synapse import Synapse

from .matrix import MatrixUser

URL_IN_REPLY = re.compile(r"(https?://\S+/register\?token=[A-Za-z0-9_\-]+)")
TOKEN_ID_IN_REPLY = re.compile(r"Token `([0-9a-f]+)`")
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def control_room(owner: MatrixUser, *members: MatrixUser, name: str = "Bastion control") -> str:
    """A private room ``owner`` creates, with ``members`` invited and joined."""
    room = owner.create_room(invite=tuple(m.user_id for m in members), name=name)
    for member in members:
        member.join(room)
    return room


def plugin_config(
    room: str,
    internal: Synapse,
    *,
    operators: list[str] | tuple[str, ...] = (),
    gateway_admins: list[str] | tuple[str, ...] = (),
    auditors: list[str] | tuple[str, ...] = (),
    registrar_url: str,
    gateway_url: str,
    api_key: str,
    **extra: Any,
) -> dict[str, Any]:
    """The plugin's config for one control room, live identity checks on ``internal``."""
    return {
        "control_rooms": [room],
        "roles": {
            "operator": list(operators),
            "gateway_admin": list(gateway_admins),
            "auditor": list(auditors),
        },
        "identity": {"mode": "synapse_admin", "admin_token": internal.admin_token},
        "dmz": {
            "registrar_url": registrar_url,
            "gateway_url": gateway_url,
            "api_key": api_key,
            "timeout": "10s",
        },
        **extra,
    }


def start_bot(
    workdir: Path, internal: Synapse, bot: MatrixUser, room: str, inviter: MatrixUser,
    config: dict[str, Any],
) -> Maubot:  # fmt: skip
    """maubot with the freshly built plugin as ``bot``, invited into ``room`` and joined.

    Messages sent before the bot's first sync are ignored, so the invite comes after start.
    """
    maubot = Maubot(
        workdir / "maubot",
        mbp=build_mbp(workdir / "build"),
        user_id=bot.user_id,
        homeserver=internal.base_url,
        access_token=bot.token,
        plugin_config=config,
    ).start()
    try:
        inviter.invite(room, bot.user_id)
        inviter.wait_membership(room, bot.user_id)
    except Exception:
        maubot.stop()
        raise
    return maubot


def wait_answering(user: MatrixUser, room: str, attempts: int = 20) -> None:
    """Until the bot answers ``!bastion whoami`` (after a start it ignores its first sync)."""
    for _ in range(attempts):
        command = user.send(room, "!bastion whoami")
        try:
            user.wait_reply(room, command, timeout=1.5)
            return
        except TimeoutError:
            continue
    raise TimeoutError(f"the bot did not answer in {room} after {attempts} tries")


class BotStack:
    def __init__(
        self,
        workdir: Path,
        internal: Synapse,
        dmz: Synapse,
        *,
        prefix: str | None = None,
        plugin_config: dict[str, Any] | None = None,
        registrar_config: dict[str, Any] | None = None,
        gateway: DmzApi | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.gateway = gateway
        self.registrar_extra = registrar_config or {}
        self.internal = internal
        self.dmz = dmz
        self.prefix = prefix or f"s{secrets.token_hex(3)}"
        self.extra_config = plugin_config or {}
        self.export_key = secrets.token_urlsafe(24)
        self.password = secrets.token_urlsafe(12)
        self.registrar: DmzApi | None = None
        self.maubot: Maubot | None = None

    def user(self, suffix: str) -> MatrixUser:
        return MatrixUser.register(self.internal, f"{self.prefix}{suffix}", self.password)

    def start(self) -> BotStack:
        server = self.internal.server_name
        self.bot = self.user("bot")
        self.staff = self.user("op1")
        self.auditor = self.user("aud")
        self.outsider = self.user("x")
        self.room = control_room(self.staff, self.auditor, self.outsider)

        self.registrar = DmzApi(
            self.workdir / "registrar",
            {
                "log_level": "WARNING",
                "registrar": {
                    "homeserver": {
                        "kind": "synapse",
                        "url": self.dmz.base_url,
                        "server_name": self.dmz.server_name,
                        "admin_token": self.dmz.admin_token,
                        "timeout": 10,
                    },
                    "secret": secrets.token_urlsafe(32),
                    "rate_limit": {"per_minute": 60000, "burst": 1000},
                    "password_min_length": 10,
                    **self.registrar_extra,
                },
            },
            api_key=self.gateway.api_key if self.gateway else None,
        ).start()
        config = plugin_config(
            self.room,
            self.internal,
            operators=[f"@{self.prefix}op*:{server}"],
            gateway_admins=[self.staff.user_id] if self.gateway else [],
            auditors=[self.auditor.user_id],
            registrar_url=self.registrar.base_url,
            gateway_url=(self.gateway or self.registrar).base_url,
            api_key=self.registrar.api_key,
            sweep_interval=0,
            audit={"export_key": self.export_key},
            **self.extra_config,
        )
        self.maubot = start_bot(
            self.workdir, self.internal, self.bot, self.room, self.staff, config
        )
        return self

    def stop(self) -> None:
        if self.maubot is not None:
            self.maubot.stop()
        if self.registrar is not None:
            self.registrar.stop()

    def __enter__(self) -> BotStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_operator(self, suffix: str) -> MatrixUser:
        """One more operator (the role is a glob), joined to the control room."""
        operator = self.user(f"op{suffix}")
        self.staff.invite(self.room, operator.user_id)
        operator.join(self.room)
        return operator

    def deactivate(self, user: MatrixUser) -> None:
        status, body = self.internal.admin(
            "POST", f"/_synapse/admin/v1/deactivate/{user.user_id}", {"erase": False}
        )
        if status != 200:
            raise RuntimeError(f"deactivation failed: {status} {body}")

    @property
    def audit_db(self) -> Path:
        assert self.maubot is not None
        return self.maubot.workdir / "maubot.db"

    def tamper(self, sql: str, *params: Any) -> None:
        """Change the audit trail behind the bot's back (dropping the append-only triggers)."""
        with sqlite3.connect(self.audit_db) as db:
            db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
            db.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
            db.execute(sql, params)


def onboarding_url(reply: str) -> str:
    match = URL_IN_REPLY.search(reply)
    assert match, f"no onboarding URL in {reply!r}"
    return match.group(1)


def token_id(reply: str) -> str:
    match = TOKEN_ID_IN_REPLY.search(reply)
    assert match, f"no token id in {reply!r}"
    return match.group(1)


class GuestBrowser:
    """A guest opening the onboarding URL and submitting the form (cookies kept, no JS)."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def open(self, url: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(url, data=data, timeout=15) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def register(self, url: str, username: str, password: str) -> tuple[int, str]:
        status, page = self.open(url)
        if status != 200:
            return status, page
        csrf = CSRF_FIELD.search(page)
        assert csrf, "the onboarding page has no CSRF field"
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
        action = url.split("?", 1)[0]
        return self.open(
            action,
            {
                "token": token,
                "csrf_token": csrf.group(1),
                "username": username,
                "password": password,
                "password_confirm": password,
                "display_name": "",
            },
        )
