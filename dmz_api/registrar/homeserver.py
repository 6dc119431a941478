"""Homeserver adapters: how a guest account is created once the registrar has claimed a use.

The token in an onboarding URL is always the registrar's own: the homeserver never knows
it, so it cannot be used from any Matrix client, only on the page, where the registrar
claims one use exactly once in its database before it calls the homeserver.

* ``SynapseAdapter``: for each registration the page has claimed, a native Synapse
  registration token with ``uses_allowed: 1`` is minted just in time (admin API), used in
  that one ``/register`` flow and deleted; it never leaves dmz_api. It also reads and
  deletes native tokens minted by registrars before 0.x (``legacy_tokens``).
* ``MatrixAdapter``: the homeserver knows one static registration token that only
  dmz_api holds, and the page registers with it. Deactivation needs an admin token and a
  homeserver serving Synapse's admin API.

Both create accounts only through ``/register``, which fails with ``M_USER_IN_USE`` for an
existing name: nothing here can modify an existing account. Homeserver error texts are
never passed on (Synapse echoes tokens in some of them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote

import aiohttp
from yarl import URL

from .config import HomeserverConfig
from .crypto import new_token

log = logging.getLogger("dmz_api.registrar.homeserver")

RefusalReason = Literal["username_taken", "username_invalid", "password_weak", "token_rejected"]

_REFUSALS: dict[str, RefusalReason] = {
    "M_USER_IN_USE": "username_taken",
    "M_EXCLUSIVE": "username_taken",
    "M_INVALID_USERNAME": "username_invalid",
    "M_WEAK_PASSWORD": "password_weak",
}

TOKEN_STAGE = "m.login.registration_token"  # noqa: S105 (a UIA stage name)
DUMMY_STAGE = "m.login.dummy"


class HomeserverError(Exception):
    pass


class HomeserverUnavailable(HomeserverError):
    """No usable answer (network, timeout, 5xx, rate limit, misconfiguration)."""


class OutcomeUnknown(HomeserverUnavailable):
    """The request that creates the account got no answer: it may or may not have happened."""


class RegistrationRefused(HomeserverError):
    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(reason)
        self.reason = reason


class DeactivationUnsupported(HomeserverError):
    pass


@dataclass(frozen=True, slots=True)
class NativeToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None


@dataclass(frozen=True, slots=True)
class Registration:
    """A registration the homeserver has accepted the username and password for."""

    request: dict[str, Any] = field(repr=False)
    session: str | None
    display_name: str | None
    # Set when the homeserver registered without asking for a token (misconfigured).
    user_id: str | None = None
    access_token: str | None = field(default=None, repr=False)


class HomeserverAdapter(Protocol):
    kind: str
    # True when the homeserver may still hold native tokens minted by the old design
    # (onboarding URLs that were native Synapse tokens), which list_tokens reads.
    legacy_tokens: bool

    async def list_tokens(self) -> list[NativeToken]: ...

    async def expire_token(self, token: str, at_ms: int) -> bool: ...

    async def delete_token(self, token: str) -> None: ...

    async def check_username(self, localpart: str) -> None: ...

    async def begin_registration(
        self, localpart: str, password: str, display_name: str | None
    ) -> Registration: ...

    async def complete_registration(self, registration: Registration, token: str) -> str: ...

    async def deactivate(self, user_id: str) -> None: ...


class _Http:
    """JSON calls on one homeserver; every failure becomes a homeserver exception."""

    def __init__(self, config: HomeserverConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.base = config.url

    async def call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        token: str | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = URL(self.base + path, encoded=True)
        try:
            async with self.session.request(
                method, url, json=body, headers=headers, params=params
            ) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                return resp.status, data if isinstance(data, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as e:
            # The exception text can hold the URL, and the URL can hold a token.
            log.warning("Homeserver call %s failed: %s", what, type(e).__name__)
            raise HomeserverUnavailable(what) from None

    @staticmethod
    def unexpected(what: str, status: int, data: dict[str, Any]) -> HomeserverUnavailable:
        log.warning(
            "Homeserver call %s answered HTTP %d %s", what, status, data.get("errcode", "-")
        )
        return HomeserverUnavailable(what)


class _ClientServerAdapter:
    kind = "matrix"
    legacy_tokens = False

    def __init__(self, config: HomeserverConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = _Http(config, session)

    def _stage_token(self, token: str) -> str:
        raise NotImplementedError

    async def check_username(self, localpart: str) -> None:
        status, data = await self.http.call(
            "GET",
            "/_matrix/client/v3/register/available",
            "username check",
            params={"username": localpart},
        )
        if status == 200 and data.get("available") is True:
            return
        if (reason := _REFUSALS.get(str(data.get("errcode")))) is not None:
            raise RegistrationRefused(reason)
        if status == 429:
            # Synapse allows one concurrent availability check per address: not an outage.
            raise HomeserverUnavailable("username check (rate limited)")
        raise self.http.unexpected("username check", status, data)

    async def _register_step(
        self, request: dict[str, Any], what: str
    ) -> tuple[int, dict[str, Any]]:
        status, data = await self.http.call(
            "POST", "/_matrix/client/v3/register", what, body=request
        )
        if status in (400, 403) and (reason := _REFUSALS.get(str(data.get("errcode")))):
            raise RegistrationRefused(reason)
        if status not in (200, 401):
            raise self.http.unexpected(what, status, data)
        return status, data

    async def begin_registration(
        self, localpart: str, password: str, display_name: str | None
    ) -> Registration:
        """Open a UIA session; the homeserver checks username and password, nothing is used."""
        request: dict[str, Any] = {
            "username": localpart,
            "password": password,
            "initial_device_display_name": "Guest onboarding page",
            # A session is needed only to set the display name, and is ended right after.
            "inhibit_login": display_name is None,
        }
        status, data = await self._register_step(request, "register (start)")
        if status == 200:
            log.error("The homeserver registered a guest without asking for a token")
            return Registration(
                request, None, display_name, _user_id(data), data.get("access_token")
            )
        session = data.get("session")
        flows = data.get("flows") or []
        if not isinstance(session, str) or not any(
            TOKEN_STAGE in (flow.get("stages") or []) for flow in flows if isinstance(flow, dict)
        ):
            log.error("The homeserver does not offer %s registration", TOKEN_STAGE)
            raise HomeserverUnavailable("register (no token flow)")
        if not all(
            isinstance(flow, dict) and TOKEN_STAGE in (flow.get("stages") or []) for flow in flows
        ):
            # Anyone could then register without a token, bypassing the registrar.
            log.error("The homeserver offers registration without %s", TOKEN_STAGE)
        return Registration(request, session, display_name)

    async def complete_registration(self, registration: Registration, token: str) -> str:
        """Finish the UIA flow: the registration token stage, then the dummy stage."""
        user_id, access_token = registration.user_id, registration.access_token
        if user_id is None:
            request, session = registration.request, registration.session
            auth = {"type": TOKEN_STAGE, "token": self._stage_token(token), "session": session}
            status, data = await self._register_step(
                {**request, "auth": auth}, "register (token stage)"
            )
            if status == 401:
                if TOKEN_STAGE not in (data.get("completed") or []):
                    raise RegistrationRefused("token_rejected")
                try:
                    status, data = await self._register_step(
                        {**request, "auth": {"type": DUMMY_STAGE, "session": session}},
                        "register (dummy stage)",
                    )
                except RegistrationRefused:
                    raise
                except HomeserverUnavailable:
                    raise OutcomeUnknown("register (dummy stage)") from None
                if status != 200:
                    raise OutcomeUnknown("register (dummy stage)")
            user_id, access_token = _user_id(data), data.get("access_token")
        if registration.display_name is not None and isinstance(access_token, str):
            await self._set_display_name(user_id, registration.display_name, access_token)
        return user_id

    async def _set_display_name(self, user_id: str, display_name: str, access_token: str) -> None:
        try:
            status, data = await self.http.call(
                "PUT",
                f"/_matrix/client/v3/profile/{quote(user_id, safe='')}/displayname",
                "set display name",
                body={"displayname": display_name},
                token=access_token,
            )
            if status != 200:
                self.http.unexpected("set display name", status, data)
        except HomeserverUnavailable:
            pass  # The account exists; a missing display name is not worth failing for.
        finally:
            # The page's session is not the guest's: end it so no stray device remains.
            try:
                await self.http.call("POST", "/_matrix/client/v3/logout", "logout", body={},
                                     token=access_token)  # fmt: skip
            except HomeserverUnavailable:
                pass

    async def _admin_deactivate(self, user_id: str, admin_token: str) -> None:
        status, data = await self.http.call(
            "POST",
            f"/_synapse/admin/v1/deactivate/{quote(user_id, safe='')}",
            "deactivate",
            body={"erase": False},
            token=admin_token,
        )
        if status == 200:
            return
        if status == 404 and data.get("errcode") == "M_NOT_FOUND":
            log.warning("Guest %s no longer exists on the homeserver", user_id)
            return
        if status in (400, 404, 405, 501) and data.get("errcode") in (None, "M_UNRECOGNIZED"):
            raise DeactivationUnsupported("deactivate")
        raise self.http.unexpected("deactivate", status, data)


class SynapseAdapter(_ClientServerAdapter):
    kind = "synapse"
    legacy_tokens = True

    def __init__(self, config: HomeserverConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(config, session)
        assert config.admin_token is not None
        self.admin_token = config.admin_token
        # Long enough for both UIA stages at their timeouts; a token left by a crash dies.
        self.one_use_lifetime_ms = int(max(300.0, 3 * config.timeout) * 1000)

    def _stage_token(self, token: str) -> str:
        return token

    async def complete_registration(self, registration: Registration, token: str) -> str:
        """Register with a one-use native token minted for this registration only.

        ``token`` (the guest's, already claimed in our database) never reaches Synapse.
        Synapse's own check of a token is not atomic, but nobody else knows this one,
        and it allows one registration.
        """
        if registration.user_id is not None:
            return await super().complete_registration(registration, "")
        one_use = await self._create_one_use_token()
        try:
            return await super().complete_registration(registration, one_use)
        finally:
            # Shielded: the deletion must happen even if the caller is cancelled.
            await asyncio.shield(self._delete_one_use_token(one_use))

    async def _create_one_use_token(self) -> str:
        for _ in range(3):
            token = new_token()
            expiry = int(time.time() * 1000) + self.one_use_lifetime_ms
            status, data = await self.http.call(
                "POST",
                "/_synapse/admin/v1/registration_tokens/new",
                "create one-use token",
                body={"token": token, "uses_allowed": 1, "expiry_time": expiry},
                token=self.admin_token,
            )
            if status == 200:
                return token
            if status != 400 or "exists" not in str(data.get("error", "")):
                raise self.http.unexpected("create one-use token", status, data)
        raise HomeserverUnavailable("create one-use token (exists)")

    async def _delete_one_use_token(self, token: str) -> None:
        try:
            await self.delete_token(token)
        except HomeserverUnavailable:
            # Harmless: it allows one use, only we knew it, and it expires shortly.
            log.warning("A one-use registration token could not be deleted; it will expire")

    async def list_tokens(self) -> list[NativeToken]:
        status, data = await self.http.call(
            "GET", "/_synapse/admin/v1/registration_tokens", "list tokens", token=self.admin_token
        )
        items = data.get("registration_tokens")
        if status != 200 or not isinstance(items, list):
            raise self.http.unexpected("list tokens", status, data)
        tokens = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("token"), str):
                tokens.append(
                    NativeToken(
                        token=item["token"],
                        uses_allowed=item.get("uses_allowed"),
                        pending=int(item.get("pending") or 0),
                        completed=int(item.get("completed") or 0),
                        expiry_time=item.get("expiry_time"),
                    )
                )
        return tokens

    async def expire_token(self, token: str, at_ms: int) -> bool:
        """Let a native token expire at ``at_ms``; False if the homeserver refused that time."""
        status, data = await self.http.call(
            "PUT",
            f"/_synapse/admin/v1/registration_tokens/{quote(token, safe='')}",
            "expire token",
            body={"expiry_time": at_ms},
            token=self.admin_token,
        )
        if status in (200, 404):
            return True
        if status == 400:
            return False  # "must not be in the past": the clocks disagree
        raise self.http.unexpected("expire token", status, data)

    async def delete_token(self, token: str) -> None:
        status, data = await self.http.call(
            "DELETE",
            f"/_synapse/admin/v1/registration_tokens/{quote(token, safe='')}",
            "delete token",
            token=self.admin_token,
        )
        if status not in (200, 404):
            raise self.http.unexpected("delete token", status, data)

    async def deactivate(self, user_id: str) -> None:
        await self._admin_deactivate(user_id, self.admin_token)


class MatrixAdapter(_ClientServerAdapter):
    kind = "matrix"
    legacy_tokens = False

    def __init__(self, config: HomeserverConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(config, session)
        assert config.registration_token is not None
        self.static_token = config.registration_token

    def _stage_token(self, token: str) -> str:
        # The guest's token was checked and claimed in our database; the homeserver only
        # ever sees the static token.
        return self.static_token

    async def list_tokens(self) -> list[NativeToken]:
        return []

    async def expire_token(self, token: str, at_ms: int) -> bool:
        return True

    async def delete_token(self, token: str) -> None:
        return None

    async def deactivate(self, user_id: str) -> None:
        if self.config.admin_token is None:
            raise DeactivationUnsupported("no admin token")
        await self._admin_deactivate(user_id, self.config.admin_token)


def _user_id(data: dict[str, Any]) -> str:
    user_id = data.get("user_id")
    if not isinstance(user_id, str):
        # The account may exist; the caller must not count the token as unused.
        raise OutcomeUnknown("register (result)")
    return user_id


def make_adapter(config: HomeserverConfig, session: aiohttp.ClientSession) -> HomeserverAdapter:
    if config.kind == "synapse":
        return SynapseAdapter(config, session)
    return MatrixAdapter(config, session)
