"""Following up registrations: invite each guest into its token's rooms, tell the sponsor.

The bot reads the registrar's registrations feed (``GET /v1/registrations``, oldest
first) every ``registrations.poll_interval``. Exactly once across restarts:

* the feed position is kept in the plugin database and each poll re-reads OVERLAP_MS
  before it (registrar replicas' clocks, registrations committed out of order);
* every (guest, room) invite and the guest's report (notice and audit entry) is claimed
  by one conditional upsert before it is done and marked done after, so re-reading a
  guest does nothing twice. A claim left by a bot that stopped mid-way is taken again
  after LEASE_MS (an invite repeated then is a no-op in Synapse: same membership, same
  sender);
* the position never moves past a guest whose follow-up is not settled, so a guest is
  re-read until it is, however long the bot was down.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import aiohttp
from mautrix.errors import MatrixRequestError
from mautrix.types import MessageType, RoomID, UserID

from . import fmt
from .audit import AuditRecord, Outcome
from .db import Followup, FollowupStore
from .dmz import Acting, DmzFailure, Registration
from .removal import refusal
from .services import Services

OVERLAP_MS = 10 * 60 * 1000
LEASE_MS = 60 * 1000
# Passing failures (homeserver 5xx/429, no answer) are retried by later polls this often.
MAX_ATTEMPTS = 5
PAGE_SIZE = 200
MAX_PAGES = 50
REPORT = "report"
COMMAND = "guest welcome"


class Transient(Exception):
    """The invite may work later: the homeserver was busy or did not answer."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Welcomer:
    def __init__(self, services: Services, store: FollowupStore, log: logging.Logger) -> None:
        self.services = services
        self.store = store
        self.log = log
        self._lock = asyncio.Lock()

    async def poll(self) -> int:
        """Follow up every registration not yet settled; how many guests were looked at."""
        async with self._lock:
            return await self._poll()

    async def _poll(self) -> int:
        acting = Acting(self.services.client.mxid, secrets.token_hex(8))
        since, after = await self.store.cursor()
        settled = (since, after)
        position = (max(0, since - OVERLAP_MS), "")
        blocked = False
        seen = 0
        for _ in range(MAX_PAGES):
            try:
                page = await self.services.registrar.registrations(
                    acting, position[0], position[1], PAGE_SIZE
                )
            except DmzFailure as e:
                self.log.warning("Registrations not read: %s", e)
                break
            for registration in page:
                seen += 1
                here = (registration.created_at_ms, registration.user_id)
                if not await self.follow_up(registration):
                    blocked = True
                if not blocked and here > settled:
                    settled = here
                position = here
            if len(page) < PAGE_SIZE:
                break
        if settled != (since, after):
            await self.store.set_cursor(*settled)
        return seen

    async def follow_up(self, registration: Registration) -> bool:
        """Invite and report for one guest; whether everything for them is settled."""
        if not registration.invites and not registration.notify:
            return True  # minted before this feature, or by another client: nothing asked
        user = registration.user_id
        for room in registration.invites:
            if await self.store.claim(user, room, now_ms(), LEASE_MS):
                await self._invite(user, room)
        done = {row.item: row for row in await self.store.of_guest(user)}
        if any(room not in done or done[room].state == "claimed" for room in registration.invites):
            return False
        if await self.store.claim(user, REPORT, now_ms(), LEASE_MS):
            await self._report(registration, [done[room] for room in registration.invites])
        return True

    async def _invite(self, user: str, room: str) -> None:
        try:
            await self._send_invite(user, room)
        except Transient as e:
            attempts = next(
                (row.attempts for row in await self.store.of_guest(user) if row.item == room), 1
            )
            if attempts < MAX_ATTEMPTS:
                self.log.info("Invite of %s to %s: %s; retrying later", user, room, e)
                await self.store.release(user, room)
                return
            await self.store.finish(user, room, "failed", str(e))
        except MatrixRequestError as e:
            await self.store.finish(user, room, "failed", refusal(e))
        else:
            await self.store.finish(user, room, "done")
            self.log.info("Invited guest %s to %s", user, room)

    async def _send_invite(self, user: str, room: str) -> None:
        try:
            await self.services.client.invite_user(RoomID(room), UserID(user))
        except MatrixRequestError as e:
            if e.http_status == 429 or e.http_status >= 500:
                raise Transient(f"the homeserver answered {e.http_status}") from None
            if "already in the room" in (e.message or "") or "already joined" in (e.message or ""):
                return
            raise
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Transient(f"no answer from the homeserver ({type(e).__name__})") from None

    async def _report(self, registration: Registration, invites: list[Followup]) -> None:
        invited = [row.item for row in invites if row.state == "done"]
        failed = [row for row in invites if row.state != "done"]
        text = report_text(registration, invited, failed)
        detail = f"invited to {len(invited)} of {len(invites)} rooms"
        where = registration.notify
        try:
            if where == "dm":
                await self.services.direct.send(UserID(registration.sponsor), text)
            elif where:
                await self.services.client.send_markdown(
                    RoomID(where), text, msgtype=MessageType.NOTICE
                )
        except Exception as e:
            # Reported once at most: a notice is not worth a second one later.
            self.log.warning("Could not tell %s: %s", registration.sponsor, type(e).__name__)
            detail += f"; sponsor not told ({type(e).__name__})"
        await self.services.audit.append(
            AuditRecord(
                room_id=where if where.startswith("!") else "",
                event_id="",
                sender=self.services.client.mxid,
                command=COMMAND,
                args={
                    "guest": registration.user_id,
                    "token": registration.token_id,
                    "sponsor": registration.sponsor,
                    "rooms": list(registration.invites),
                },
                outcome=Outcome.FAILED if failed else Outcome.OK,
                detail=detail + "".join(f"; {row.item}: {row.detail}" for row in failed),
                request_id=secrets.token_hex(8),
            )
        )
        await self.store.finish(registration.user_id, REPORT, "done", detail)


def room_link(room: str) -> str:
    return fmt.code(room)


def report_text(registration: Registration, invited: list[str], failed: list[Followup]) -> str:
    parts = [
        f"{fmt.user(registration.sponsor)}: guest {fmt.user(registration.user_id)} registered "
        f"with token {fmt.code(registration.token_id)}"
    ]
    if invited:
        parts.append("invited to " + ", ".join(room_link(room) for room in invited))
    for row in failed:
        parts.append(f"could not invite to {room_link(row.item)} ({fmt.md(row.detail)})")
    return "; ".join(parts) + "."
