"""Direct messages from the bot to one staff member (``!token generate --dm``)."""

from __future__ import annotations

import logging

from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixRequestError
from mautrix.types import (
    EventID,
    EventType,
    Membership,
    MemberStateEventContent,
    MessageType,
    RoomCreatePreset,
    RoomID,
    UserID,
)

from .db import DirectRoomStore


class DirectMessages:
    def __init__(
        self, client: MaubotMatrixClient, store: DirectRoomStore, log: logging.Logger
    ) -> None:
        self.client = client
        self.store = store
        self.log = log

    async def send(self, user_id: UserID, markdown: str) -> EventID:
        room_id = await self._room_with(user_id)
        return await self.client.send_markdown(room_id, markdown, msgtype=MessageType.NOTICE)

    async def _room_with(self, user_id: UserID) -> RoomID:
        room_id = await self.store.get(user_id)
        if room_id and await self._still_there(room_id, user_id):
            return room_id
        room_id = await self.client.create_room(
            preset=RoomCreatePreset.PRIVATE,
            is_direct=True,
            invitees=[user_id],
            name="Bastion",
            topic="Onboarding URLs you asked for with --dm",
        )
        await self.store.put(user_id, room_id)
        self.log.info("Opened a direct-message room with %s", user_id)
        return room_id

    async def _still_there(self, room_id: RoomID, user_id: UserID) -> bool:
        """The room is still theirs alone: they are in it or invited, and nobody else is."""
        try:
            member = await self.client.get_state_event(room_id, EventType.ROOM_MEMBER, user_id)
            joined = await self.client.get_joined_members(room_id)
        except MatrixRequestError:
            return False
        if set(joined) - {user_id, self.client.mxid}:
            return False
        return isinstance(member, MemberStateEventContent) and member.membership in (
            Membership.JOIN,
            Membership.INVITE,
        )
