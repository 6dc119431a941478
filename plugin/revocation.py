"""Revocation when a staff account is deactivated: on its ``leave``, and in a periodic sweep.

Synapse makes a deactivated user leave every room shortly after deactivating them; the
bot sees that ``leave`` in a control room, confirms the status live, and asks the
registrar to revoke what that sponsor left open. The sweep re-checks every sponsor with
open tokens (or active guests), so a deactivation while the bot was down is handled too.
"""

from __future__ import annotations

import logging
import secrets
import time

from mautrix.types import EventID, MessageType, RoomID, UserID

from . import fmt
from .audit import AuditRecord, Outcome
from .dmz import Acting, DmzFailure
from .services import Services

COMMAND = "revoke on deactivation"


class Revoker:
    def __init__(self, services: Services, log: logging.Logger) -> None:
        self.services = services
        self.config = services.config
        self.log = log
        self._busy: set[UserID] = set()
        # Unix times of the sweep's last start and last complete run (0: never), for /metrics.
        self.last_attempt = 0.0
        self.last_success = 0.0

    @property
    def server_name(self) -> str:
        return self.services.client.mxid.partition(":")[2]

    async def on_leave(self, room_id: RoomID, user_id: UserID, event_id: EventID) -> None:
        status = await self.services.identity.status(user_id, [room_id])
        if not status.deactivated:
            self.log.debug("%s left %s; account is %s", user_id, room_id, status.state.value)
            return
        await self.revoke(user_id, room_id=room_id, event_id=event_id, trigger="leave")

    async def sweep(self) -> int:
        """Revoke for every deactivated sponsor still holding something open; how many."""
        self.last_attempt = time.time()
        acting = Acting(self.services.client.mxid, secrets.token_hex(8))
        registrar = self.services.registrar
        try:
            tokens = await registrar.all_tokens(acting, status="active")
            sponsors = {token.sponsor for token in tokens}
            if self.config.guests_on_deactivation == "deactivate":
                guests = await registrar.all_guests(acting, status="active")
                sponsors |= {guest.sponsor for guest in guests}
        except DmzFailure as e:
            self.log.warning("Sweep skipped: %s", e)
            return 0
        revoked = 0
        for sponsor in sorted(s for s in sponsors if s.partition(":")[2] == self.server_name):
            status = await self.services.identity.status(UserID(sponsor))
            if status.deactivated:
                await self.revoke(
                    UserID(sponsor), room_id=RoomID(""), event_id=EventID(""), trigger="sweep"
                )
                revoked += 1
        self.log.debug("Sweep checked %d sponsors, revoked for %d", len(sponsors), revoked)
        self.last_success = time.time()
        return revoked

    async def revoke(
        self, user_id: UserID, *, room_id: RoomID, event_id: EventID, trigger: str
    ) -> None:
        if not self.config.revoke_tokens_on_deactivation:
            self.log.info("%s is deactivated; revoke_tokens is off, leaving their tokens", user_id)
            return
        if user_id in self._busy:
            return
        self._busy.add(user_id)
        try:
            await self._revoke(user_id, room_id=room_id, event_id=event_id, trigger=trigger)
        finally:
            self._busy.discard(user_id)

    async def _revoke(
        self, user_id: UserID, *, room_id: RoomID, event_id: EventID, trigger: str
    ) -> None:
        bot = self.services.client.mxid
        acting = Acting(bot, secrets.token_hex(8))
        guests = self.config.guests_on_deactivation

        def record(outcome: Outcome, detail: str) -> AuditRecord:
            args = {"user": user_id, "guests": guests, "trigger": trigger}
            return AuditRecord(
                room_id=room_id,
                event_id=event_id,
                sender=bot,
                command=COMMAND,
                args=args,
                outcome=outcome,
                detail=detail,
                request_id=acting.request_id,
            )

        try:
            result = await self.services.registrar.revoke_sponsor(acting, user_id, guests)
        except DmzFailure as e:
            await self.services.audit.append(record(Outcome.FAILED, str(e)))
            await self._notice(
                f"{fmt.user(user_id)} is deactivated, but their tokens could not be revoked "
                "yet (the DMZ service did not accept the request); the next sweep retries."
            )
            return
        detail = (
            f"{fmt.plural(result.tokens_revoked, 'token')} revoked, "
            f"{fmt.plural(result.guests_deactivated, 'guest')} deactivated"
        )
        await self.services.audit.append(record(Outcome.OK, detail))
        self.log.info("%s deactivated (%s): %s", user_id, trigger, detail)
        guests_text = (
            f"; {fmt.plural(result.guests_deactivated, 'guest')} deactivated"
            if guests == "deactivate"
            else ""
        )
        await self._notice(
            f"{fmt.user(user_id)} is deactivated: revoked "
            f"{fmt.plural(result.tokens_revoked, 'open token')}{guests_text}."
        )

    async def _notice(self, text: str) -> None:
        for room_id in self.config.control_rooms:
            try:
                await self.services.client.send_markdown(room_id, text, msgtype=MessageType.NOTICE)
            except Exception as e:
                self.log.warning("Could not post to %s: %s", room_id, type(e).__name__)
