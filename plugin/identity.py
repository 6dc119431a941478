"""Account status of staff on the internal homeserver, looked up live for every check."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from enum import StrEnum
from urllib.parse import quote

import aiohttp
from attrs import frozen
from mautrix.client import Client
from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import EventType, Membership, MemberStateEventContent, RoomID, UserID

from .config import Config


class AccountState(StrEnum):
    ACTIVE = "active"
    DEACTIVATED = "deactivated"
    LOCKED = "locked"
    SUSPENDED = "suspended"
    NOT_FOUND = "unknown to the internal homeserver"
    NOT_MEMBER = "not a member of the control room"
    UNCONFIRMED = "unconfirmed"


@frozen
class AccountStatus:
    state: AccountState
    # Why the status could not be confirmed (for logs and the audit trail, not for users).
    reason: str = ""
    # How it was checked: "synapse_admin" or "membership".
    source: str = ""

    @property
    def active(self) -> bool:
        return self.state is AccountState.ACTIVE

    @property
    def deactivated(self) -> bool:
        return self.state is AccountState.DEACTIVATED


class IdentityChecker:
    """``synapse_admin``: the homeserver's admin API; ``membership``: control-room membership."""

    def __init__(
        self, config: Config, http: aiohttp.ClientSession, client: Client, log: logging.Logger
    ) -> None:
        self.config = config
        self.http = http
        self.client = client
        self.log = log

    async def status(self, user_id: UserID, rooms: Iterable[RoomID] = ()) -> AccountStatus:
        mode = self.config.identity_mode
        if mode == "synapse_admin":
            return await self._admin_status(user_id)
        if mode == "membership":
            return await self._membership_status(user_id, rooms or self.config.control_rooms)
        return AccountStatus(AccountState.UNCONFIRMED, f"unknown identity.mode {mode!r}", mode)

    async def _admin_status(self, user_id: UserID) -> AccountStatus:
        base = self.config.identity_homeserver_url or str(self.client.api.base_url).rstrip("/")
        token = self.config.identity_admin_token or self.client.api.token
        url = f"{base}/_synapse/admin/v2/users/{quote(user_id, safe='@:')}"

        def unconfirmed(reason: str) -> AccountStatus:
            self.log.warning("Could not confirm the status of %s: %s", user_id, reason)
            return AccountStatus(AccountState.UNCONFIRMED, reason, "synapse_admin")

        try:
            async with self.http.get(
                url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=self.config.identity_timeout),
            ) as resp:
                if resp.status == 404:
                    return AccountStatus(AccountState.NOT_FOUND, "", "synapse_admin")
                if resp.status != 200:
                    return unconfirmed(f"the admin API answered HTTP {resp.status}")
                body = await resp.json()
        except TimeoutError:
            return unconfirmed("the admin API did not answer in time")
        except (aiohttp.ClientError, ValueError) as e:
            return unconfirmed(f"the admin API could not be used ({type(e).__name__})")
        if not isinstance(body, dict):
            return unconfirmed("the admin API answered with something other than an object")
        if body.get("deactivated") is True:
            return AccountStatus(AccountState.DEACTIVATED, "", "synapse_admin")
        if body.get("locked") is True:
            return AccountStatus(AccountState.LOCKED, "", "synapse_admin")
        if body.get("suspended") is True:
            return AccountStatus(AccountState.SUSPENDED, "", "synapse_admin")
        if body.get("deactivated") is not False:
            return unconfirmed("the admin API did not say whether the account is deactivated")
        return AccountStatus(AccountState.ACTIVE, "", "synapse_admin")

    async def _membership_status(self, user_id: UserID, rooms: Iterable[RoomID]) -> AccountStatus:
        rooms = list(rooms)
        if not rooms:
            return AccountStatus(
                AccountState.UNCONFIRMED, "no control room is configured", "membership"
            )
        unconfirmed = ""
        for room_id in rooms:
            try:
                member = await asyncio.wait_for(
                    self.client.get_state_event(room_id, EventType.ROOM_MEMBER, user_id),
                    self.config.identity_timeout,
                )
            except MNotFound:
                continue
            except TimeoutError:
                unconfirmed = "the homeserver did not answer in time"
                continue
            except (MatrixRequestError, aiohttp.ClientError) as e:
                unconfirmed = f"the membership could not be read ({type(e).__name__})"
                continue
            if isinstance(member, MemberStateEventContent) and (
                member.membership == Membership.JOIN
            ):
                return AccountStatus(AccountState.ACTIVE, "", "membership")
        if unconfirmed:
            self.log.warning("Could not confirm the membership of %s: %s", user_id, unconfirmed)
            return AccountStatus(AccountState.UNCONFIRMED, unconfirmed, "membership")
        return AccountStatus(AccountState.NOT_MEMBER, "", "membership")
