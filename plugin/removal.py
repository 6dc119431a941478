"""Taking a guest out of every room they share with the bot: a kick where the bot may.

One pass over the bot's joined rooms; a guest joined or invited there is kicked (an
invite is withdrawn the same way). What could not be done is kept with the homeserver's
reason, so the caller can say it.
"""

from __future__ import annotations

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


async def remove_everywhere(client: MaubotMatrixClient, user_id: str, reason: str) -> Removal:
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for room_id in await client.get_joined_rooms():
        try:
            member = await client.get_state_event(room_id, EventType.ROOM_MEMBER, user_id)
        except MatrixRequestError:
            continue  # never a member here
        if not isinstance(member, MemberStateEventContent) or member.membership not in STILL_THERE:
            continue
        try:
            await client.kick_user(RoomID(room_id), UserID(user_id), reason=reason)
        except MatrixRequestError as e:
            failed.append((room_id, refusal(e)))
        else:
            removed.append(room_id)
    return Removal(tuple(removed), tuple(failed))
