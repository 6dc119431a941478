"""Protected rooms, pure: what a protected room's state must be, and how far a room is from it.

A room is replicated on every server that takes part in it; the gateway sees only what
crosses our border. A protected room is held by the mechanisms every server enforces
(docs/rules.md, "Protected rooms"):

* ``ledger`` — power levels: the ``LEDGER_EVENTS`` (enabling encryption, sending encrypted
  events, redacting) and ``redact`` need the room's top level;
* every protection — ``GUARD_EVENTS`` (the power levels, the ACL, the policy state, and the
  tombstone: an upgrade would move the room out of its protection) need the top level too,
  so only the top level can loosen the protection;
* ``acl`` — ``m.room.server_acl`` from the *enforced*, enabled ``server_allow`` and
  ``server_block`` rules (audit rules never change a room), our own server names always
  allowed and never denied, ``allow_ip_literals: false``;
* ``policy_server`` — ``m.room.policy`` naming the gateway's policy server (MSC4284).

``desired(...)`` computes the target from a ruleset; ``check_state(...)`` lists the
differences between a room's state and it; ``judge_write(...)`` is what the proxy asks about
one state write from our users; ``judge_remote_event(...)`` is what the policy server asks
about an event of another server's user (it uses ``judge_write`` for guarded state).
"Top level" is the highest level in the room's ``users`` map (or ``users_default``): the
level the bot must hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .policy.model import Mode, iso
from .policy.rules import Kind, Rule, split_server

POWER_LEVELS = "m.room.power_levels"
SERVER_ACL = "m.room.server_acl"
POLICY = "m.room.policy"
# The state whose change could loosen a protection; the proxy judges writes of these.
GUARDED_STATE = (POWER_LEVELS, SERVER_ACL, POLICY)
LEDGER_EVENTS = ("m.room.encryption", "m.room.encrypted", "m.room.redaction")
GUARD_EVENTS = (*GUARDED_STATE, "m.room.tombstone")
# Every event type judge_remote_event may refuse (the policy server skips the rest cheaply).
REMOTE_JUDGED = frozenset((*LEDGER_EVENTS, *GUARD_EVENTS))
# Event types among those above that are state events (their default is state_default).
_STATE_TYPES = frozenset({"m.room.encryption", *GUARD_EVENTS})
# Power-level fields (not events) that need the top level in a ledger room.
LEDGER_FIELDS = ("redact",)
# Spec defaults when the power levels leave a field out.
_DEFAULTS = {"users_default": 0, "events_default": 0, "state_default": 50, "redact": 50}


@dataclass(frozen=True, slots=True)
class Protection:
    """One protected room, as stored."""

    room_id: str
    ledger: bool
    acl: bool
    policy_server: bool
    author: str | None
    created: int
    updated: int

    def to_json(self) -> dict[str, Any]:
        return {
            "room_id": self.room_id,
            "ledger": self.ledger,
            "acl": self.acl,
            "policy_server": self.policy_server,
            "author": self.author,
            "created": iso(self.created),
            "updated": iso(self.updated),
        }


@dataclass(frozen=True, slots=True)
class PolicyServerRef:
    """The policy server the gateway answers for: ``via`` (a server name) and its key."""

    via: str
    public_key: str

    def to_json(self) -> dict[str, str]:
        return {"via": self.via, "public_key": self.public_key}

    def content(self) -> dict[str, Any]:
        """The ``m.room.policy`` state content naming it."""
        return {"via": self.via, "public_keys": {"ed25519": self.public_key}}


@dataclass(frozen=True)
class Desired:
    """What a protected room's state must be under one ruleset version."""

    protection: Protection
    version: int | None
    top_level_events: tuple[str, ...]
    top_level_fields: tuple[str, ...]
    server_acl: dict[str, Any] | None
    policy: dict[str, Any] | None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "room_id": self.protection.room_id,
            "version": self.version,
            "protection": self.protection.to_json(),
            "power_levels": {
                "top_level_events": list(self.top_level_events),
                "top_level_fields": list(self.top_level_fields),
            },
            "server_acl": self.server_acl,
            "policy": self.policy,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Difference:
    """One way a room's state falls short. ``fixable``: the bot can put it right itself."""

    event_type: str
    field: str
    want: Any
    have: Any
    text: str
    fixable: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "field": self.field,
            "want": self.want,
            "have": self.have,
            "text": self.text,
            "fixable": self.fixable,
        }


def acl_host(server: str) -> str:
    """A server name or glob as ``m.room.server_acl`` takes it: the host, without port."""
    host, _ = split_server(server.lower())
    return host


def _acl_glob(pattern: str) -> re.Pattern[str]:
    # ACL globs know only * (any run) and ? (one character); brackets are literal.
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z")


def own_hosts(own_servers: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(acl_host(name) for name in own_servers))


def server_acl(
    rules: Iterable[Rule], own_servers: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """The ACL the enforced rules ask for, and notes on what could not be carried over."""
    notes: list[str] = []
    allow: dict[str, None] = {}
    deny: dict[str, None] = {}
    for rule in sorted(rules, key=lambda r: r.sort_key):
        if not rule.enabled or rule.mode is not Mode.ENFORCE:
            continue
        if rule.kind is Kind.SERVER_ALLOW:
            target = allow
        elif rule.kind is Kind.SERVER_BLOCK:
            target = deny
        else:
            continue
        for server in rule.params.get("servers", ()):
            host = acl_host(server)
            if host != server:
                notes.append(
                    f"rule {rule.id}: {server} is {host} in the ACL (an ACL names hosts, not ports)"
                )
            target.setdefault(host, None)
    ours = own_hosts(own_servers)
    for entry in list(deny):
        glob = _acl_glob(entry)
        hit = next((host for host in ours if glob.match(host)), None)
        if hit is not None:
            del deny[entry]
            notes.append(f"deny {entry} left out: it would lock out our own server {hit}")
    if allow:
        allowed = list(dict.fromkeys([*ours, *allow]))
    else:
        allowed = ["*"]
    return {"allow": allowed, "deny": list(deny), "allow_ip_literals": False}, notes


def desired(
    protection: Protection,
    rules: Iterable[Rule],
    version: int | None,
    own_servers: Sequence[str],
    policy_server: PolicyServerRef | None,
) -> Desired:
    notes: list[str] = []
    events = [*LEDGER_EVENTS, *GUARD_EVENTS] if protection.ledger else list(GUARD_EVENTS)
    acl = None
    if protection.acl:
        acl, acl_notes = server_acl(rules, own_servers)
        notes += acl_notes
    policy = None
    if protection.policy_server:
        if policy_server is None:
            notes.append("no policy server configured: m.room.policy is not set")
        else:
            policy = policy_server.content()
    return Desired(
        protection=protection,
        version=version,
        top_level_events=tuple(events),
        top_level_fields=LEDGER_FIELDS if protection.ledger else (),
        server_acl=acl,
        policy=policy,
        notes=tuple(notes),
    )


def _level(value: Any, default: int) -> int:
    # Power levels are integers; old room versions also allow numeric strings.
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,16}", value.strip()):
        return int(value)
    return default


def top_level(content: Mapping[str, Any]) -> int:
    """The highest level anyone in the room holds."""
    users = content.get("users")
    levels = [_level(content.get("users_default"), 0)]
    if isinstance(users, Mapping):
        levels += [_level(v, 0) for v in users.values()]
    return max(levels)


def event_level(content: Mapping[str, Any], event_type: str) -> int:
    """The level the power levels require to send ``event_type``."""
    events = content.get("events")
    default_key = "state_default" if event_type in _STATE_TYPES else "events_default"
    default = _level(content.get(default_key), _DEFAULTS[default_key])
    if isinstance(events, Mapping) and event_type in events:
        return _level(events[event_type], default)
    return default


def field_level(content: Mapping[str, Any], name: str) -> int:
    return _level(content.get(name), _DEFAULTS.get(name, 50))


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2].lower()


def check_power_levels(
    want: Desired, content: Mapping[str, Any] | None, own_servers: Sequence[str]
) -> list[Difference]:
    if content is None:
        return [Difference(POWER_LEVELS, "", "power levels", None, "the room has no power levels")]
    top = top_level(content)
    found: list[Difference] = []
    for event_type in want.top_level_events:
        have = event_level(content, event_type)
        if have < top:
            found.append(
                Difference(
                    POWER_LEVELS,
                    f"events.{event_type}",
                    top,
                    have,
                    f"{event_type} can be sent at level {have}, below the top level {top}",
                )
            )
    for name in want.top_level_fields:
        have = field_level(content, name)
        if have < top:
            found.append(
                Difference(
                    POWER_LEVELS,
                    name,
                    top,
                    have,
                    f"{name} is level {have}, below the top level {top}",
                )
            )
    ours = {name.lower() for name in own_servers}
    users = content.get("users")
    if isinstance(users, Mapping):
        for user, value in users.items():
            if isinstance(user, str) and _level(value, 0) >= top and _server_of(user) not in ours:
                found.append(
                    Difference(
                        POWER_LEVELS,
                        f"users.{user}",
                        f"below {top}",
                        _level(value, 0),
                        f"{user} of another server holds the top level {top}; only they can"
                        " lower themselves",
                        fixable=False,
                    )
                )
    return found


def _as_set(value: Any) -> set[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return set(value)
    return None


def check_acl(want: Desired, content: Mapping[str, Any] | None) -> list[Difference]:
    target = want.server_acl
    if target is None:
        return []
    if content is None:
        return [Difference(SERVER_ACL, "", target, None, "the room has no server ACL")]
    found: list[Difference] = []
    for name in ("allow", "deny"):
        have = _as_set(content.get(name, []))
        if have != set(target[name]):
            missing = sorted(set(target[name]) - (have or set()))
            extra = sorted((have or set()) - set(target[name]))
            parts = [*(f"+{m}" for m in missing), *(f"-{e}" for e in extra)]
            found.append(
                Difference(
                    SERVER_ACL,
                    name,
                    target[name],
                    content.get(name),
                    f"ACL {name} differs from the rules ({', '.join(parts) or 'malformed'})",
                )
            )
    literals = content.get("allow_ip_literals", True)
    if literals is not False:
        found.append(
            Difference(
                SERVER_ACL,
                "allow_ip_literals",
                False,
                literals,
                "the ACL admits servers named by IP address",
            )
        )
    return found


def check_policy(want: Desired, content: Mapping[str, Any] | None) -> list[Difference]:
    target = want.policy
    if target is None:
        return []
    have_via = content.get("via") if content else None
    keys = content.get("public_keys") if content else None
    have_key = keys.get("ed25519") if isinstance(keys, Mapping) else None
    if have_via == target["via"] and have_key == target["public_keys"]["ed25519"]:
        return []
    return [
        Difference(
            POLICY,
            "",
            target,
            dict(content) if content else None,
            f"the room does not name the policy server {target['via']} with its key",
        )
    ]


@dataclass(frozen=True)
class Check:
    differences: list[Difference] = field(default_factory=list)

    @property
    def in_order(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "in_order": self.in_order,
            "differences": [d.to_json() for d in self.differences],
        }


def check_state(want: Desired, state: Mapping[str, Any], own_servers: Sequence[str]) -> Check:
    """The differences between a room's state (content by event type; absent = None)."""

    def content(event_type: str) -> Mapping[str, Any] | None:
        value = state.get(event_type)
        return value if isinstance(value, Mapping) else None

    return Check(
        [
            *check_power_levels(want, content(POWER_LEVELS), own_servers),
            *check_acl(want, content(SERVER_ACL)),
            *check_policy(want, content(POLICY)),
        ]
    )


def judge_write(
    want: Desired, event_type: str, content: Mapping[str, Any], own_servers: Sequence[str]
) -> str | None:
    """Why a client's write of ``event_type`` state would loosen the room, or None.

    Only what the writer controls counts: a remote user already at the top level is not the
    writer's doing (``check_state`` reports it).
    """
    if event_type == POWER_LEVELS:
        found = [d for d in check_power_levels(want, content, own_servers) if d.fixable]
    elif event_type == SERVER_ACL:
        found = check_acl(want, content) if want.server_acl is not None else []
    elif event_type == POLICY:
        found = check_policy(want, content) if want.policy is not None else []
    else:
        found = []
    if not found:
        return None
    return found[0].text


def judge_remote_event(
    want: Desired,
    event_type: str,
    state_key: str | None,
    content: Mapping[str, Any],
    own_servers: Sequence[str],
) -> str | None:
    """Why an event sent by a user of *another* server would loosen the room, or None.

    The auth rules already refuse these events below the top level; this holds the room
    against a partner who holds the top level (raised by mistake). Guarded state (state key
    "") is judged on its content by ``judge_write``, the proxy guard's judge, so a partner at
    the top level may still lower themselves; every other event type the protection reserves
    to the top level (the ledger events, the tombstone) is refused outright, whatever its
    state key: in a protected room only our own top level sends them.
    """
    if event_type in GUARDED_STATE:
        if state_key != "":
            return None
        return judge_write(want, event_type, content, own_servers)
    if event_type in want.top_level_events:
        return f"{event_type} is reserved to our own top level, not another server's user"
    return None
