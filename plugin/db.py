"""Small plugin tables besides the audit trail."""

from __future__ import annotations

from mautrix.types import RoomID, UserID
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
