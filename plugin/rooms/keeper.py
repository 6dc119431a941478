"""Protected rooms, live: protect, unprotect, check, and hold rooms to their protection.

The gateway keeps the list of protected rooms and says what each needs
(``plugin.dmz.Gateway.room_desired`` / ``room_check``); the keeper reads the room's state
through the bot's client, writes what is missing, and reports. Rules stay the single
source: after every rule write the keeper re-applies each protected room
(``rules_changed``), and when someone else changes a protected room's power levels, ACL or
policy state (``on_state``) it puts back what it can and tells the control rooms. Each
change it makes on its own is one audit entry (``sbg room sync`` / ``sbg room restore``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Mapping
from typing import Any

from attrs import frozen
from maubot.matrix import MaubotMatrixClient
from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError, MForbidden, MNotFound
from mautrix.types import EventType, MessageType, RoomAlias, RoomID
from mautrix.util import background_task

from .. import fmt
from ..audit import AuditLog, AuditRecord, Outcome
from ..config import Config
from ..dmz import Acting, DmzError, Gateway
from ..gate import Failed
from .state import (
    GUARDED,
    POLICY,
    POWER_LEVELS,
    SERVER_ACL,
    acl_matches,
    describe_acl,
    merge_power_levels,
    policy_matches,
    standing,
)

State = dict[str, dict[str, Any] | None]


@frozen
class Applied:
    """What one pass over a room wrote, and what it could not put right."""

    changes: tuple[str, ...]
    unfixable: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def state_type(name: str) -> EventType:
    return EventType.find(name, EventType.Class.STATE)


class RoomKeeper:
    def __init__(
        self,
        client: MaubotMatrixClient,
        gateway: Gateway,
        audit: AuditLog,
        config: Config,
        log: logging.Logger,
    ) -> None:
        self.client = client
        self.gateway = gateway
        self.audit = audit
        self.config = config
        self.log = log
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def bot(self) -> str:
        return str(self.client.mxid)

    def acting(self) -> Acting:
        return Acting(self.bot, secrets.token_hex(8))

    # ---- reading a room --------------------------------------------------------------

    async def resolve(self, room: str) -> RoomID:
        """A room ID from a room ID or an alias."""
        if room.startswith("!"):
            return RoomID(room)
        try:
            return (await self.client.resolve_room_alias(RoomAlias(room))).room_id
        except MNotFound:
            raise Failed(f"No room has the alias {fmt.code(room)}.", "alias unknown") from None
        except MatrixRequestError as e:
            raise Failed(
                f"The alias {fmt.code(room)} cannot be resolved ({fmt.md(e.message or '')}).",
                f"alias: {e.errcode}",
            ) from None

    async def read_state(self, room_id: RoomID) -> State:
        """The guarded state of the room, content by type (None when the room has none)."""
        state: State = {}
        for name in GUARDED:
            try:
                content = await self.client.api.request(
                    Method.GET, Path.v3.rooms[room_id].state[name][""]
                )
            except MNotFound:
                content = None
            except MForbidden:
                raise Failed(
                    f"I am not in room {fmt.code(room_id)}; invite me and give me the top power "
                    "level first. Nothing was changed.",
                    "bot not in room",
                ) from None
            state[name] = content if isinstance(content, dict) else None
        return state

    def require_standing(self, room_id: RoomID, state: State) -> None:
        levels = state.get(POWER_LEVELS)
        if levels is None:
            raise Failed(
                f"Room {fmt.code(room_id)} has no power levels I can build on; nothing was "
                "changed.",
                "no power levels",
            )
        mine = standing(levels, self.bot)
        if not mine.ok:
            needed = max(mine.top, mine.needed)
            raise Failed(
                f"I hold power level {mine.level} in room {fmt.code(room_id)}, but protecting it "
                f"needs the top level ({needed}): give me power level {needed} there first. "
                "Nothing was changed.",
                f"bot level {mine.level} below {needed}",
            )

    # ---- writing a room --------------------------------------------------------------

    async def apply(self, room_id: RoomID, desired: Mapping[str, Any], state: State) -> Applied:
        """Write what the room lacks of ``desired``: power levels, then ACL, then policy."""
        changes: list[str] = []
        levels = state.get(POWER_LEVELS)
        if levels is not None:
            merge = merge_power_levels(levels, self.bot, desired)
            if merge.changed:
                await self._send(room_id, POWER_LEVELS, merge.content)
                changes.append("power levels " + ", ".join(merge.raised))
        acl = desired.get("server_acl")
        if isinstance(acl, dict) and not acl_matches(state.get(SERVER_ACL), acl):
            await self._send(room_id, SERVER_ACL, acl)
            changes.append(f"ACL set ({describe_acl(acl)})")
        policy = desired.get("policy")
        if isinstance(policy, dict) and not policy_matches(state.get(POLICY), policy):
            await self._send(room_id, POLICY, policy)
            changes.append(f"policy server {policy.get('via')}")
        notes = tuple(str(n) for n in desired.get("notes") or ())
        return Applied(tuple(changes), notes=notes)

    async def _send(self, room_id: RoomID, name: str, content: dict[str, Any]) -> None:
        try:
            await self.client.send_state_event(room_id, state_type(name), content)
        except MatrixRequestError as e:
            self.log.warning("Cannot write %s in %s: %s %s", name, room_id, e.errcode, e.message)
            raise Failed(
                f"The homeserver refused my {name} change in room {fmt.code(room_id)}: "
                f"{fmt.md(e.message or e.errcode)}.",
                f"{name} refused: {e.errcode}",
            ) from None

    # ---- commands --------------------------------------------------------------------

    async def protect(
        self, acting: Acting, room_id: RoomID, protections: Mapping[str, bool]
    ) -> tuple[dict[str, Any], Applied]:
        """Check the bot's standing, record the protection, write the state. A failed write
        removes the protection again, so the gateway never guards a room left half-done."""
        state = await self.read_state(room_id)
        self.require_standing(room_id, state)
        before = next(
            (r for r in await self.gateway.protected_rooms(acting) if r.get("room_id") == room_id),
            None,
        )
        room = await self.gateway.protect_room(acting, room_id, protections)
        try:
            desired = await self.gateway.room_desired(acting, room_id)
            applied = await self.apply(room_id, desired, state)
            check = await self.gateway.room_check(acting, room_id, await self.read_state(room_id))
        except BaseException:
            # Back to what the gateway held before: no protection, or the earlier one.
            try:
                if before is None:
                    await self.gateway.unprotect_room(acting, room_id)
                else:
                    flags = {k: bool(before.get(k)) for k in ("ledger", "acl", "policy_server")}
                    await self.gateway.protect_room(acting, room_id, flags)
            except Exception:
                self.log.exception("Cannot withdraw the protection of %s", room_id)
            raise
        unfixable = tuple(
            str(d.get("text")) for d in check["differences"] if not d.get("fixable", True)
        )
        return room, Applied(applied.changes, unfixable, applied.notes)

    async def check(self, acting: Acting, room_id: RoomID) -> dict[str, Any]:
        return await self.gateway.room_check(acting, room_id, await self.read_state(room_id))

    # ---- holding rooms to their protection ------------------------------------------

    async def restore(
        self,
        room_id: RoomID,
        *,
        command: str,
        sender: str,
        event_id: str,
        why: str,
        done: str = "I put it back",
    ) -> Applied | None:
        """Put the room back where it can; report and audit when it changed anything or
        cannot be put right. None when the room is not protected."""
        acting = self.acting()
        async with self._lock:
            try:
                state = await self.read_state(room_id)
                check = await self.gateway.room_check(acting, room_id, state)
            except DmzError as e:
                if e.status == 404:
                    return None
                raise
            except Failed as e:
                # The bot can no longer read the room (it left, or was removed).
                await self._record(
                    room_id, command, sender, event_id, Outcome.FAILED, e.detail, acting.request_id
                )
                await self._tell(f"Room {fmt.code(room_id)} {why}, but {e.message}")
                return Applied(())
            if check.get("in_order"):
                return Applied(())
            fixable = [d for d in check["differences"] if d.get("fixable", True)]
            unfixable = tuple(
                str(d.get("text")) for d in check["differences"] if not d.get("fixable", True)
            )
            outcome, detail = Outcome.OK, ""
            applied = Applied((), unfixable)
            try:
                if fixable:
                    applied = await self.apply(room_id, check["desired"], state)
                    applied = Applied(applied.changes, unfixable, applied.notes)
                detail = "; ".join(applied.changes) or "nothing could be put back"
            except Failed as e:
                outcome, detail = Outcome.FAILED, e.detail
                await self._tell(f"Room {fmt.code(room_id)} {why}, and {e.message}")
            if applied.changes or unfixable or outcome is Outcome.FAILED:
                await self._record(
                    room_id, command, sender, event_id, outcome, detail, acting.request_id
                )
            if outcome is Outcome.OK and (applied.changes or unfixable):
                lines = [f"Room {fmt.code(room_id)} {why}."]
                if applied.changes:
                    lines.append(f"{done}: " + fmt.md("; ".join(applied.changes)) + ".")
                for text in unfixable:
                    lines.append(f"I cannot fix: {fmt.md(text)}.")
                await self._tell("  \n".join(lines))
            return applied

    async def on_state(self, room_id: RoomID, sender: str, event_id: str, event_type: str) -> None:
        """Someone else changed guarded state in a room: restore it if it is protected."""
        try:
            await self.restore(
                room_id,
                command="sbg room restore",
                sender=sender,
                event_id=event_id,
                why=f"was changed by {fmt.user(sender)} ({event_type}) so that it no longer met "
                "its protection",
            )
        except Exception:
            self.log.exception("Cannot restore the protection of %s", room_id)

    def rules_changed(self, acting: Acting) -> None:
        """After a rule write: re-apply every protected room, in the background."""
        self._spawn(self._sync_all(acting))

    async def _sync_all(self, acting: Acting) -> None:
        try:
            rooms = await self.gateway.protected_rooms(acting)
        except Exception:
            self.log.exception("Cannot list the protected rooms after a rule change")
            return
        for room in rooms:
            room_id = RoomID(str(room["room_id"]))
            try:
                await self.restore(
                    room_id,
                    command="sbg room sync",
                    sender=acting.user_id,
                    event_id="",
                    why=f"follows the gateway rules changed by {fmt.user(acting.user_id)}",
                    done="I applied them",
                )
            except Failed as e:
                await self._tell(
                    f"Room {fmt.code(room_id)} could not follow the rules: {e.message}"
                )
            except Exception:
                self.log.exception("Cannot re-apply the protection of %s", room_id)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = background_task.create(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Cancel background work (the plugin stops)."""
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def idle(self) -> None:
        """Wait for background work started so far (tests; shutdown)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _tell(self, text: str) -> None:
        for room in self.config.control_rooms:
            try:
                await self.client.send_markdown(RoomID(room), text, msgtype=MessageType.NOTICE)
            except Exception:
                self.log.exception("Cannot report to control room %s", room)

    async def _record(
        self,
        room_id: RoomID,
        command: str,
        sender: str,
        event_id: str,
        outcome: Outcome,
        detail: str,
        request_id: str,
    ) -> None:
        try:
            await self.audit.append(
                AuditRecord(
                    room_id=room_id,
                    event_id=event_id,
                    sender=sender,
                    command=command,
                    args={"room": room_id},
                    outcome=outcome,
                    detail=detail,
                    request_id=request_id,
                )
            )
        except Exception:
            self.log.exception("Could not write the audit entry for %s in %s", command, room_id)
