"""Guests that expire: the sponsor is warned ahead, and an expired guest leaves our rooms.

The registrar deactivates a guest whose ``expires_at`` has passed (its own periodic task).
Every ``guest_expiry.check_interval`` the bot lists the guests and

* warns the sponsor once per expiry date, ``guest_expiry.warn_before`` ahead, in the
  control rooms (``!guest extend`` moves the date, and the new date is warned of again);
* removes each guest the registrar deactivated for expiry from every room they share
  with the bot (kicks, see ``removal.py``), once, and says what it did and could not.

Each is claimed in ``guest_followup`` (items ``warn:<date>`` and ``expired``) before it is
done, so a restart repeats nothing; each is one audit entry.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime

from mautrix.types import MessageType

from . import fmt
from .audit import AuditRecord, Outcome
from .db import FollowupStore
from .dmz import Acting, DmzFailure, Guest
from .durations import format_time
from .removal import remove_everywhere
from .services import Services
from .spelling import spell

EXPIRY_ACTOR = "expiry"
LEASE_MS = 60 * 1000
REASON = "Guest access expired"


def now_ms() -> int:
    return int(time.time() * 1000)


class GuestExpiry:
    def __init__(self, services: Services, store: FollowupStore, log: logging.Logger) -> None:
        self.services = services
        self.store = store
        self.log = log
        self._checked = -1e18

    async def maybe_check(self) -> None:
        """``check`` if ``guest_expiry.check_interval`` has passed since the last one."""
        if time.monotonic() - self._checked >= self.services.config.expiry_check_interval:
            self._checked = time.monotonic()
            await self.check()

    async def check(self) -> None:
        acting = Acting(self.services.client.mxid, secrets.token_hex(8))
        registrar = self.services.registrar
        try:
            active = await registrar.all_guests(acting, status="active")
            gone = await registrar.all_guests(acting, status="deactivated")
        except DmzFailure as e:
            self.log.warning("Guest expiry not checked: %s", e)
            return
        horizon = datetime.now(UTC).timestamp() + self.services.config.expiry_warn_before
        for guest in active:
            if guest.expires_at is not None and guest.expires_at.timestamp() <= horizon:
                await self._warn(guest)
        for guest in gone:
            if guest.deactivated_by == EXPIRY_ACTOR:
                await self._remove(guest)

    async def _warn(self, guest: Guest) -> None:
        assert guest.expires_at is not None
        item = f"warn:{int(guest.expires_at.timestamp())}"
        if not await self.store.claim(guest.user_id, item, now_ms(), LEASE_MS):
            return
        extend = spell(self.services.config, "guest extend")
        await self._notice(
            f"{fmt.user(guest.sponsor)}: guest {fmt.user(guest.user_id)} expires "
            f"{format_time(guest.expires_at)}. `{extend} {guest.user_id} 30d` lets them "
            "stay longer."
        )
        await self._audit("guest expiry warning", guest, Outcome.OK, f"expires {item[5:]}")
        await self.store.finish(guest.user_id, item, "done")

    async def _remove(self, guest: Guest) -> None:
        if not await self.store.claim(guest.user_id, "expired", now_ms(), LEASE_MS):
            return
        removal = await remove_everywhere(self.services.client, guest.user_id, REASON)
        text = (
            f"{fmt.user(guest.sponsor)}: guest {fmt.user(guest.user_id)}'s access expired; "
            "the DMZ account is deactivated"
        )
        if removal.removed:
            text += ", removed from " + ", ".join(fmt.code(r) for r in removal.removed)
        for room, why in removal.failed:
            text += f"; could not remove from {fmt.code(room)} ({fmt.md(why)})"
        await self._notice(text + ".")
        detail = f"removed from {len(removal.removed)} rooms" + "".join(
            f"; {room}: {why}" for room, why in removal.failed
        )
        outcome = Outcome.FAILED if removal.failed else Outcome.OK
        await self._audit("guest expired", guest, outcome, detail)
        await self.store.finish(guest.user_id, "expired", "done", detail)

    async def _audit(self, command: str, guest: Guest, outcome: Outcome, detail: str) -> None:
        await self.services.audit.append(
            AuditRecord(
                room_id="",
                event_id="",
                sender=self.services.client.mxid,
                command=command,
                args={"guest": guest.user_id, "sponsor": guest.sponsor},
                outcome=outcome,
                detail=detail,
                request_id=secrets.token_hex(8),
            )
        )

    async def _notice(self, text: str) -> None:
        for room_id in self.services.config.control_rooms:
            try:
                await self.services.client.send_markdown(room_id, text, msgtype=MessageType.NOTICE)
            except Exception as e:
                self.log.warning("Could not post to %s: %s", room_id, type(e).__name__)
