"""A guest's side of onboarding, for tests and benchmarks: sign in, see invites, count them.

guest = sign_in(dmz, localpart, password)
wait_invited(guest, room_id)                 # the invite reached the guest's client
join_when_invited(guest, room_id)            # joined over federation
invites_of(staff, room_id, guest.user_id)    # how many invite events the room holds
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from devstack.matrix import MatrixUser
from devstack.process import http_json
from devstack.synapse import Synapse


def sign_in(hs: Synapse, localpart: str, password: str) -> MatrixUser:
    status, login = hs.login(localpart, password)
    if status != 200:
        raise RuntimeError(f"{localpart} could not sign in: {status} {login}")
    return MatrixUser(hs, str(login["user_id"]), str(login["access_token"]))


def invited_rooms(
    user: MatrixUser, since: str | None = None, timeout_ms: int = 0
) -> tuple[set[str], str]:
    """Rooms ``user`` is invited to as /sync shows them, and the next sync token."""
    path = f"/_matrix/client/v3/sync?timeout={timeout_ms}"
    if since:
        path += f"&since={quote(since)}"
    sync = user.call("GET", path)
    return set(sync.get("rooms", {}).get("invite", {})), str(sync["next_batch"])


def wait_invited(user: MatrixUser, room_id: str, timeout: float = 20.0) -> float:
    """Long-poll /sync until ``user`` sees an invite to ``room_id``; when it arrived (monotonic)."""
    deadline = time.monotonic() + timeout
    since: str | None = None
    while time.monotonic() < deadline:
        rooms, since = invited_rooms(user, since, timeout_ms=1000)
        if room_id in rooms:
            return time.monotonic()
    raise TimeoutError(f"{user.user_id} was not invited to {room_id} within {timeout} s")


def join_when_invited(user: MatrixUser, room_id: str, timeout: float = 15.0) -> None:
    """Join ``room_id`` (on another server) once its invite has arrived there.

    A remote join needs the invite on the joining server and the room's server reachable;
    right after an invite, or on a loaded machine, the first try can fail where a person
    would simply try again, so this does, and names the last answer if it never works.
    """
    path = f"{user.hs.base_url}/_matrix/client/v3/join/{quote(room_id)}"
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_json("POST", path, {}, token=user.token)
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{user.user_id} cannot join {room_id}: {status} {body}")
        time.sleep(0.1)


def invites_of(member: MatrixUser, room_id: str, target: str, limit: int = 500) -> int:
    """How many ``invite`` membership events for ``target`` the room's timeline holds."""
    filter_ = quote(json.dumps({"types": ["m.room.member"]}))
    path = (
        f"/_matrix/client/v3/rooms/{quote(room_id)}/messages?dir=b&limit={limit}&filter={filter_}"
    )
    chunk: list[dict[str, Any]] = member.call("GET", path)["chunk"]
    return sum(
        1
        for event in chunk
        if event.get("state_key") == target and event["content"].get("membership") == "invite"
    )


def project_room(
    owner: MatrixUser,
    *members: MatrixUser,
    alias: str | None = None,
    name: str = "Project",
    moderators: tuple[MatrixUser, ...] = (),
    moderator_level: int = 50,
) -> str:
    """A private room ``owner`` creates (with ``alias`` if given), ``members`` joined,
    ``moderators`` (members too) at ``moderator_level`` (50 may kick; 100 may also
    protect the room)."""
    body: dict[str, Any] = {
        "preset": "private_chat",
        "name": name,
        "invite": [m.user_id for m in members],
    }
    if moderators:
        # Room version 12: the creator's power is implied, not listed.
        levels = {m.user_id: moderator_level for m in moderators}
        body["power_level_content_override"] = {"users": levels}
    if alias:
        body["room_alias_name"] = alias
    room = str(owner.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"])
    for member in members:
        owner.wait_membership(room, member.user_id, "invite")
        member.join(room)
    return room
