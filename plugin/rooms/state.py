"""A protected room's state, pure: the bot's standing, the power levels merge, what to write.

The gateway says what a protected room needs (``GET /v1/rooms/{id}/desired``): event types
and power-level fields that must require the room's *top level*, the ACL content and the
policy content. The merge changes only those entries, and only upwards:

* every member keeps what they could do: ``m.room.message``, reactions and every other
  event keep their levels, ``users`` is left alone (nobody is demoted);
* the listed events and fields are raised to the bot's level, which must be the top level
  (the highest level in the room). The auth rules let a sender set levels only up to its
  own, and change the level of another user only when that user is below it: the bot can
  never lower a partner who holds the top level too, so such a partner keeps every power
  (``!sbg room check`` reports it; only they can lower themselves).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from attrs import frozen

POWER_LEVELS = "m.room.power_levels"
SERVER_ACL = "m.room.server_acl"
POLICY = "m.room.policy"
GUARDED = (POWER_LEVELS, SERVER_ACL, POLICY)
# Spec defaults for fields the power levels leave out.
_DEFAULTS = {"users_default": 0, "events_default": 0, "state_default": 50, "redact": 50}
# Of the event types a protection lists, these are state events (default state_default).
_STATE_TYPES = frozenset({"m.room.encryption", "m.room.tombstone", *GUARDED})


def level(value: Any, default: int) -> int:
    """A power level: an integer (old room versions also allow numeric strings)."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    return default


def user_level(content: Mapping[str, Any], user_id: str) -> int:
    users = content.get("users")
    default = level(content.get("users_default"), 0)
    if isinstance(users, Mapping) and user_id in users:
        return level(users[user_id], default)
    return default


def top_level(content: Mapping[str, Any]) -> int:
    users = content.get("users")
    levels = [level(content.get("users_default"), 0)]
    if isinstance(users, Mapping):
        levels += [level(v, 0) for v in users.values()]
    return max(levels)


def event_level(content: Mapping[str, Any], event_type: str) -> int:
    key = "state_default" if event_type in _STATE_TYPES else "events_default"
    default = level(content.get(key), _DEFAULTS[key])
    events = content.get("events")
    if isinstance(events, Mapping) and event_type in events:
        return level(events[event_type], default)
    return default


@frozen
class Standing:
    """The bot's place in a room's power levels."""

    level: int
    top: int
    # The level needed to change the power levels at all.
    needed: int

    @property
    def ok(self) -> bool:
        return self.level >= self.top and self.level >= self.needed


def standing(content: Mapping[str, Any], bot: str) -> Standing:
    return Standing(
        user_level(content, bot), top_level(content), event_level(content, POWER_LEVELS)
    )


@frozen
class Merge:
    content: dict[str, Any]
    # "m.room.encryption 50 → 100" for each raised entry, in order.
    raised: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.raised)


def merge_power_levels(current: Mapping[str, Any], bot: str, desired: Mapping[str, Any]) -> Merge:
    """``current`` with the desired events and fields raised to the bot's level."""
    wanted = desired.get("power_levels") or {}
    target = user_level(current, bot)
    content = copy.deepcopy(dict(current))
    events = dict(content.get("events") or {})
    raised: list[str] = []
    for event_type in wanted.get("top_level_events", ()):
        have = event_level(current, event_type)
        if have < target:
            events[event_type] = target
            raised.append(f"{event_type} {have} → {target}")
    content["events"] = events
    for name in wanted.get("top_level_fields", ()):
        have = level(current.get(name), _DEFAULTS.get(name, 50))
        if have < target:
            content[name] = target
            raised.append(f"{name} {have} → {target}")
    return Merge(content, tuple(raised))


def acl_matches(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    if current is None:
        return False

    def as_set(value: Any) -> set[str] | None:
        return set(value) if isinstance(value, list) else None

    return (
        as_set(current.get("allow", [])) == set(wanted["allow"])
        and as_set(current.get("deny", [])) == set(wanted["deny"])
        and current.get("allow_ip_literals", True) is wanted.get("allow_ip_literals", True)
    )


def policy_matches(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    if current is None:
        return False
    keys = current.get("public_keys")
    return (
        current.get("via") == wanted.get("via")
        and isinstance(keys, Mapping)
        and (keys.get("ed25519") == wanted["public_keys"]["ed25519"])
    )


def describe_acl(content: Mapping[str, Any]) -> str:
    allow = ", ".join(content.get("allow", [])) or "nobody"
    deny = ", ".join(content.get("deny", [])) or "none"
    return f"allow {allow}; deny {deny}"
