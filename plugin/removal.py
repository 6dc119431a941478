"""Taking a guest out of the rooms they share with the bot: a kick where the bot may.

``shared_rooms`` finds the bot's joined rooms where the guest is joined or invited;
``remove_from`` kicks them there (an invite is withdrawn the same way). A kick refused
because the guest has meanwhile left (Synapse parts a deactivated user on its own) counts
as done; any other refusal is kept with the homeserver's reason, for the caller to say.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixRequestError
from mautrix.types import EventType, Membership, MemberStateEventContent, RoomID, UserID

STILL_THERE = (Membership.JOIN, Membership.INVITE)


@frozen
class Removal:
    removed: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]


def refusal(error: MatrixRequestError) -> str:
    """A homeserver's refusal, short enough for a chat line."""
    return f"{error.errcode or error.http_status}: {(error.message or '')[:160]}"


async def _membership(
    client: MaubotMatrixClient, room_id: RoomID, user_id: str
) -> Membership | None:
    """The user's membership in the room; None when the bot cannot tell (or never one)."""
    try:
        member = await client.get_state_event(room_id, EventType.ROOM_MEMBER, user_id)
    except MatrixRequestError:
        return None
    return member.membership if isinstance(member, MemberStateEventContent) else None


async def _there(client: MaubotMatrixClient, room_id: RoomID, user_id: str) -> bool:
    return await _membership(client, room_id, user_id) in STILL_THERE


async def shared_rooms(client: MaubotMatrixClient, user_id: str) -> list[RoomID]:
    return [room for room in await client.get_joined_rooms() if await _there(client, room, user_id)]


async def remove_from(
    client: MaubotMatrixClient, user_id: str, rooms: Sequence[RoomID], reason: str
) -> Removal:
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for room_id in rooms:
        try:
            await client.kick_user(room_id, UserID(user_id), reason=reason)
        except MatrixRequestError as e:
            # Counted as done only when the guest is seen gone (they left meanwhile).
            if await _membership(client, room_id, user_id) not in (
                Membership.LEAVE,
                Membership.BAN,
            ):
                failed.append((room_id, refusal(e)))
                continue
        removed.append(room_id)
    return Removal(tuple(removed), tuple(failed))


async def remove_everywhere(client: MaubotMatrixClient, user_id: str, reason: str) -> Removal:
    return await remove_from(client, user_id, await shared_rooms(client, user_id), reason)
