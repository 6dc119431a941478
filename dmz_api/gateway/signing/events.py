"""PDUs as the spec signs and names them: the redaction algorithm per room version, the
reference hash, the event id.

A policy server signs the *redacted* event (spec: "Signing Events"; Synapse verifies a
policy signature over ``redact_event(event).get_pdu_json()``), so what is kept must be
exactly what the room version's redaction rules keep. The sign request carries no room
version, so ``room_version_of`` infers it: a room id without a server part is a version 12
room (ids are the create event's hash from v12 on), a version learned from the room's
create event is remembered, anything else is taken as the fallback version
(``gateway.policy_server.fallback_room_version``, default ``FALLBACK_VERSION``). For most events
(messages, encrypted events, redactions' targets...) every version from 3 to 12 keeps the
same keys; they differ only for create, member, join_rules, power_levels and redaction
events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from canonicaljson import encode_canonical_json
from unpaddedbase64 import encode_base64

# Pre-v11 rules: room version 10 was the default of Synapse (and most servers) before v12.
FALLBACK_VERSION = "10"
KNOWN_VERSIONS = frozenset(str(v) for v in range(1, 13))

_TOP_V1 = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
# v11 (MSC2176/MSC3989) no longer keeps origin, membership and prev_state.
_TOP_V11 = _TOP_V1 - {"origin", "membership", "prev_state"}
_POWER_LEVELS = frozenset(
    {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
)


def _number(room_version: str) -> int:
    return int(room_version)


def _content_keys(event_type: str, version: int) -> frozenset[str] | None:
    """The content keys kept for ``event_type`` (None: all of them)."""
    if event_type == "m.room.member":
        if version >= 9:
            return frozenset({"membership", "join_authorised_via_users_server"})
        return frozenset({"membership"})
    if event_type == "m.room.create":
        return None if version >= 11 else frozenset({"creator"})
    if event_type == "m.room.join_rules":
        return frozenset({"join_rule", "allow"}) if version >= 8 else frozenset({"join_rule"})
    if event_type == "m.room.power_levels":
        return _POWER_LEVELS | {"invite"} if version >= 11 else _POWER_LEVELS
    if event_type == "m.room.history_visibility":
        return frozenset({"history_visibility"})
    if event_type == "m.room.aliases" and version <= 5:
        return frozenset({"aliases"})
    if event_type == "m.room.redaction" and version >= 11:
        return frozenset({"redacts"})
    return frozenset()


def redact(event: Mapping[str, Any], room_version: str) -> dict[str, Any]:
    """``event`` as the redaction algorithm of ``room_version`` leaves it."""
    version = _number(room_version)
    top = _TOP_V11 if version >= 11 else _TOP_V1
    redacted = {k: v for k, v in event.items() if k in top}
    content = event.get("content")
    content = content if isinstance(content, Mapping) else {}
    event_type = str(event.get("type", ""))
    keep = _content_keys(event_type, version)
    kept = dict(content) if keep is None else {k: v for k, v in content.items() if k in keep}
    if version >= 11 and event_type == "m.room.member":
        invite = content.get("third_party_invite")
        if isinstance(invite, Mapping) and "signed" in invite:
            kept["third_party_invite"] = {"signed": invite["signed"]}
    redacted["content"] = kept
    return redacted


def reference_hash(event: Mapping[str, Any], room_version: str) -> bytes:
    """SHA-256 of the redacted event less ``signatures``, ``unsigned`` and ``age_ts``."""
    redacted = redact(event, room_version)
    for key in ("signatures", "unsigned", "age_ts"):
        redacted.pop(key, None)
    return hashlib.sha256(encode_canonical_json(redacted)).digest()


def event_id(event: Mapping[str, Any], room_version: str) -> str:
    """The event's id: carried by the event in v1 and v2, its reference hash from v3 on."""
    version = _number(room_version)
    if version <= 2:
        given = event.get("event_id")
        return given if isinstance(given, str) else ""
    digest = encode_base64(reference_hash(event, room_version), urlsafe=version >= 4)
    return "$" + digest


class RoomVersions:
    """What each room's version is taken to be (see the module docstring)."""

    def __init__(self, fallback: str = FALLBACK_VERSION, limit: int = 100_000) -> None:
        self._known: dict[str, str] = {}
        self._fallback = fallback
        self._limit = limit

    def learn(self, event: Mapping[str, Any]) -> None:
        """Remember the version a room's create event names (v1 when it names none)."""
        room = event.get("room_id")
        if event.get("type") != "m.room.create" or event.get("state_key") != "":
            return
        if not isinstance(room, str):
            return
        content = event.get("content")
        version = content.get("room_version", "1") if isinstance(content, Mapping) else "1"
        if isinstance(version, str) and len(self._known) < self._limit:
            self._known[room] = version

    def of(self, room_id: str | None) -> str:
        if room_id is None or ":" not in room_id:
            return "12"
        return self._known.get(room_id, self._fallback)
