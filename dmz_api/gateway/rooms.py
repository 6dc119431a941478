"""Protected rooms, live: the stored list, the desired state, and the proxy's guard.

``ProtectedRooms`` belongs to the ``GatewayService`` (``gateway.rooms``). It keeps the
protected rooms in memory (reloaded from the store every ``reload_interval``, so replicas
sharing a database agree within that time) and computes each room's desired state from the
ruleset being enforced (``protection.desired``). The proxy asks two things of it::

    if rooms.guards(method, path_info):          # PUT of guarded state into a protected room
        refusal = rooms.judge(info, path_info, content, problem)
        if refusal is not None: refuse 403 M_FORBIDDEN with it (already logged and recorded)

A guarded write is judged on its content, whoever sends it, the bot included: the bot only
ever writes state that meets the protection, so it needs no exemption (and the gateway no
copy of the bot's token). A write that would loosen the room is refused.

The policy server asks ``rooms.judge_event(...)`` about each event it is asked to sign: an
event of another server's user that would loosen a protected room is refused (the same
judge, ``protection.judge_write``, for guarded state), logged and recorded like the guard's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParam, NotFound, Unavailable
from .policy.matrix_paths import PathInfo
from .policy.model import Decision, Mode, Outcome, RequestInfo, safe_text
from .protection import (
    GUARDED_STATE,
    REMOTE_JUDGED,
    Check,
    Desired,
    PolicyServerRef,
    Protection,
    check_state,
    desired,
    judge_remote_event,
    judge_write,
)
from .store import RoomStore

if TYPE_CHECKING:
    from .service import GatewayService

log = logging.getLogger("dmz_api.gateway.rooms")

ROOM_ID = re.compile(r"^![!-~]{1,254}$")
# The rule id decisions made by the guard are recorded under.
GUARD_RULE = "protected-room"
_FIELDS = ("ledger", "acl", "policy_server")


def parse_room_id(value: str) -> str:
    if not ROOM_ID.match(value):
        raise InvalidParam("room_id must be a room ID such as !abc:corp.example")
    return value


class ProtectedRooms:
    def __init__(self, service: GatewayService) -> None:
        self.service = service
        self._store: RoomStore | None = None
        self.own_servers: tuple[str, ...] = service.config.own_servers or (
            service.config.server_name.lower(),
        )
        # Set by the policy server (enforce/policy_server.py) when gateway.policy_server is on.
        self.policy_server: PolicyServerRef | None = None
        self._rooms: dict[str, Protection] = {}
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="gateway-rooms-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def store(self) -> RoomStore:
        if self._store is None:
            self._store = RoomStore(self.service.store.db)
        return self._store

    async def refresh(self) -> None:
        self._rooms = {room.room_id: room for room in await self.store.all()}

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.service.config.reload_interval)
            try:
                await self.refresh()
            except Exception as e:
                # Keep the last list: a protection is never dropped because a read failed.
                log.warning("Cannot read the protected rooms (%s)", type(e).__name__)

    # ---- admin -----------------------------------------------------------------------

    def rooms(self) -> list[Protection]:
        return sorted(self._rooms.values(), key=lambda r: r.room_id)

    def get(self, room_id: str) -> Protection:
        room = self._rooms.get(room_id)
        if room is None:
            raise NotFound(f"Room {room_id[:80]} is not protected")
        return room

    async def protect(
        self, room_id: str, body: Mapping[str, Any], *, author: str | None
    ) -> tuple[Protection, bool]:
        """Protect a room (or change its protections); returns it and whether it is new."""
        room_id = parse_room_id(room_id)
        unknown = sorted(set(body) - set(_FIELDS))
        if unknown:
            raise InvalidParam(f"unknown field {unknown[0]!r} (give ledger, acl, policy_server)")
        flags: dict[str, bool] = {}
        for name in _FIELDS:
            value = body.get(name, True)
            if not isinstance(value, bool):
                raise InvalidParam(f"{name} must be true or false")
            flags[name] = value
        if not any(flags.values()):
            raise InvalidParam("give at least one of ledger, acl, policy_server")
        if flags["policy_server"] and "policy_server" in body and self.policy_server is None:
            raise InvalidParam("no policy server configured: policy_server cannot be set")
        if self.policy_server is None:
            flags["policy_server"] = False
        now = int(time.time() * 1000)
        stored, created = await self.store.put(
            Protection(room_id, author=author, created=now, updated=now, **flags)
        )
        self._rooms[room_id] = stored
        log.info(
            "Room %s protected (%s) by %s",
            room_id,
            ", ".join(name for name in _FIELDS if flags[name]),
            author,
        )
        return stored, created

    async def unprotect(self, room_id: str, *, author: str | None) -> Protection:
        room_id = parse_room_id(room_id)
        removed = await self.store.delete(room_id)
        self._rooms.pop(room_id, None)
        if removed is None:
            raise NotFound(f"Room {room_id[:80]} is not protected")
        log.info("Room %s no longer protected, by %s", room_id, author)
        return removed

    def desired(self, room_id: str) -> Desired:
        """The room's desired state under the ruleset being enforced (never audit rules)."""
        room = self.get(room_id)
        compiled = self.service.ruleset
        if compiled is None:
            # Failing closed: no ruleset, so no state may be computed from one.
            raise Unavailable(f"The gateway has no ruleset loaded ({self.service.failure})")
        # Rules outside their life span (not_before/expires_at) are not in force: not in the ACL.
        now_ms = int(time.time() * 1000)
        rules = [rule for rule in compiled.rules if rule.active(now_ms)]
        return desired(room, rules, compiled.version, self.own_servers, self.policy_server)

    def check(self, room_id: str, state: Mapping[str, Any]) -> tuple[Desired, Check]:
        want = self.desired(room_id)
        return want, check_state(want, state, self.own_servers)

    # ---- the proxy's guard -----------------------------------------------------------

    def guards(self, method: str, path_info: PathInfo) -> bool:
        """Whether this request writes guarded state (state key "") into a protected room."""
        return (
            path_info.endpoint == "client.state"
            and method in ("PUT", "POST")
            and path_info.room in self._rooms
            and bool(path_info.event_types)
            and path_info.event_types[0] in GUARDED_STATE
            and not path_info.template.endswith("{stateKey}")
        )

    def judge(
        self, info: RequestInfo, path_info: PathInfo, content: Any, problem: str | None
    ) -> str | None:
        """Why the write is refused, or None. A refusal is logged and recorded."""
        room = path_info.room or ""
        event_type = path_info.event_types[0]
        try:
            want = self.desired(room)
        except Exception as e:
            why = f"the protection of the room cannot be computed ({type(e).__name__})"
        else:
            if problem is not None or not isinstance(content, dict):
                why = f"the {event_type} content cannot be inspected"
            else:
                why = judge_write(want, event_type, content, self.own_servers) or ""
        if not why:
            return None
        log.warning(
            "Refused %s %s state write into protected room %s: %s",
            info.method,
            event_type,
            room,
            why,
        )
        return self._refuse(info, room, event_type, "Refused by the gateway", why, 403)

    # ---- the policy server's judge ---------------------------------------------------

    def judge_event(
        self,
        info: RequestInfo,
        room: str | None,
        sender: str,
        event_type: str,
        state_key: str | None,
        content: Mapping[str, Any],
    ) -> str | None:
        """Why the policy server refuses to sign this event, or None. Logged and recorded.

        Only events of *other* servers' users in a protected room are judged here
        (``protection.judge_remote_event``). Our users' writes were judged by the proxy guard
        when written; judging them again when a partner re-checks them could refuse a write
        that met the rules then, and the partner would soft-fail state we hold.
        """
        if event_type not in REMOTE_JUDGED or room is None or room not in self._rooms:
            return None  # an ordinary message costs no desired-state computation
        if sender.partition(":")[2].lower() in self.own_servers:
            return None
        try:
            want = self.desired(room)
        except Exception as e:
            why = f"the protection of the room cannot be computed ({type(e).__name__})"
        else:
            why = judge_remote_event(want, event_type, state_key, content, self.own_servers) or ""
        if not why:
            return None
        log.warning(
            "Policy server refused %s from %s in protected room %s: %s",
            event_type,
            sender,
            room,
            why,
        )
        return self._refuse(
            info, room, event_type, "Refused by the gateway's policy server", why, 400
        )

    def _refuse(
        self, info: RequestInfo, room: str, event_type: str, who: str, why: str, status: int
    ) -> str:
        reason = safe_text(f"{who}: {room} is a protected room and {why}")
        compiled = self.service.ruleset
        self.service.record(
            replace(info, event_types=(event_type,), room=room),
            Decision(
                Outcome.BLOCK,
                GUARD_RULE,
                Mode.ENFORCE,
                reason,
                compiled.version if compiled is not None else 0,
                status,
            ),
        )
        return reason
