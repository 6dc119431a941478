"""Small plugin tables besides the audit trail: direct rooms, pending confirmations."""

from __future__ import annotations

import json
from typing import Any

from attrs import frozen
from mautrix.types import EventID, RoomID, UserID
from mautrix.util.async_db import Database


class DirectRoomStore:
    """The direct-message room the bot uses with each staff member."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: UserID) -> RoomID | None:
        room_id = await self.db.fetchval("SELECT room_id FROM dm_room WHERE user_id=$1", user_id)
        return RoomID(room_id) if room_id else None

    async def put(self, user_id: UserID, room_id: RoomID) -> None:
        await self.db.execute(
            "INSERT INTO dm_room (user_id, room_id) VALUES ($1, $2) "
            "ON CONFLICT (user_id) DO UPDATE SET room_id=excluded.room_id",
            user_id,
            room_id,
        )


@frozen
class PendingConfirmation:
    """A request waiting for ✅ from its sender: what to run again, and until when."""

    request_event: EventID
    prompt_event: EventID | None
    thread_root: EventID | None
    room_id: RoomID
    sender: UserID
    command: str
    args: dict[str, Any]
    payload: dict[str, Any]
    expires_at: int
    confirmed_at: int | None

    @classmethod
    def from_row(cls, row: Any) -> PendingConfirmation:
        return cls(
            request_event=EventID(row["request_event"]),
            prompt_event=EventID(row["prompt_event"]) if row["prompt_event"] else None,
            thread_root=EventID(row["thread_root"]) if row["thread_root"] else None,
            room_id=RoomID(row["room_id"]),
            sender=UserID(row["sender"]),
            command=row["command"],
            args=json.loads(row["args"]),
            payload=json.loads(row["payload"]),
            expires_at=int(row["expires_at"]),
            confirmed_at=int(row["confirmed_at"]) if row["confirmed_at"] is not None else None,
        )


class ConfirmationStore:
    """Pending confirmations; a confirmation is claimed once, by one conditional UPDATE."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, pending: PendingConfirmation) -> None:
        await self.db.execute(
            "INSERT INTO confirmation (request_event, prompt_event, thread_root, room_id, sender, "
            "command, args, payload, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            pending.request_event,
            pending.prompt_event,
            pending.thread_root,
            pending.room_id,
            pending.sender,
            pending.command,
            json.dumps(pending.args, sort_keys=True, default=str),
            json.dumps(pending.payload, sort_keys=True),
            pending.expires_at,
        )

    async def set_prompt(self, request_event: EventID, prompt_event: EventID) -> None:
        await self.db.execute(
            "UPDATE confirmation SET prompt_event=$2 WHERE request_event=$1",
            request_event,
            prompt_event,
        )

    async def find(self, event_id: EventID) -> PendingConfirmation | None:
        """The confirmation whose request or prompt is ``event_id``."""
        row = await self.db.fetchrow(
            "SELECT request_event, prompt_event, thread_root, room_id, sender, command, args, "
            "payload, expires_at, confirmed_at FROM confirmation "
            "WHERE request_event=$1 OR prompt_event=$1",
            event_id,
        )
        return PendingConfirmation.from_row(row) if row is not None else None

    async def claim(self, request_event: EventID, now_ms: int) -> bool:
        """Mark it confirmed if it is still pending and unexpired; True for the one winner."""
        claimed = await self.db.fetchval(
            "UPDATE confirmation SET confirmed_at=$2 "
            "WHERE request_event=$1 AND confirmed_at IS NULL AND expires_at > $2 "
            "RETURNING request_event",
            request_event,
            now_ms,
        )
        return claimed is not None

    async def forget_before(self, cutoff_ms: int) -> None:
        """Drop confirmations that expired before ``cutoff_ms`` (kept a while for the reply)."""
        await self.db.execute("DELETE FROM confirmation WHERE expires_at < $1", cutoff_ms)


@frozen
class Followup:
    """One thing done (or not) for a registered guest: an invite into a room, or the notice."""

    user_id: str
    item: str
    state: str
    attempts: int
    detail: str


class FollowupStore:
    """The registrations feed position and, per guest, what was done for them, claimed once."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def cursor(self) -> tuple[int, str]:
        row = await self.db.fetchrow(
            "SELECT since_ms, after_user FROM registration_cursor WHERE id=1"
        )
        return (int(row["since_ms"]), str(row["after_user"])) if row else (0, "")

    async def set_cursor(self, since_ms: int, after_user: str) -> None:
        await self.db.execute(
            "INSERT INTO registration_cursor (id, since_ms, after_user) VALUES (1, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET since_ms=excluded.since_ms, "
            "after_user=excluded.after_user",
            since_ms,
            after_user,
        )

    async def claim(self, user_id: str, item: str, now_ms: int, lease_ms: int) -> bool:
        """Take ``item`` for ``user_id`` (new, or its lease ran out); True for the winner."""
        claimed = await self.db.fetchval(
            "INSERT INTO guest_followup (user_id, item, state, claimed_at) "
            "VALUES ($1, $2, 'claimed', $3) "
            "ON CONFLICT (user_id, item) DO UPDATE SET claimed_at=$3, "
            "attempts=guest_followup.attempts + 1 "
            "WHERE guest_followup.state='claimed' AND guest_followup.claimed_at < $4 "
            "RETURNING item",
            user_id,
            item,
            now_ms,
            now_ms - lease_ms,
        )
        return claimed is not None

    async def finish(self, user_id: str, item: str, state: str, detail: str = "") -> None:
        await self.db.execute(
            "UPDATE guest_followup SET state=$3, detail=$4 WHERE user_id=$1 AND item=$2",
            user_id,
            item,
            state,
            detail,
        )

    async def release(self, user_id: str, item: str) -> None:
        """Give a claim back at once (a passing failure: the next poll tries again)."""
        await self.db.execute(
            "UPDATE guest_followup SET claimed_at=0 WHERE user_id=$1 AND item=$2 "
            "AND state='claimed'",
            user_id,
            item,
        )

    async def of_guest(self, user_id: str) -> list[Followup]:
        rows = await self.db.fetch(
            "SELECT user_id, item, state, attempts, detail FROM guest_followup "
            "WHERE user_id=$1 ORDER BY item",
            user_id,
        )
        return [
            Followup(r["user_id"], r["item"], r["state"], int(r["attempts"]), r["detail"])
            for r in rows
        ]
