"""Rules: the model, the kinds and their parameters, validation and presets.

The exact semantics of each kind are written down in ``docs/rules.md``; this module only
checks and normalises what a rule may contain.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ...errors import InvalidParam
from . import server_names
from .actions import ACTIONS
from .model import Mode, iso


class Kind(StrEnum):
    SERVER_ALLOW = "server_allow"
    SERVER_BLOCK = "server_block"
    CLIENT_ALLOW = "client_allow"
    EVENT_TYPE_BLOCK = "event_type_block"
    PARTNER_SCOPE = "partner_scope"
    EXPR = "expr"


class Scope(StrEnum):
    CLIENT = "client"
    FEDERATION = "federation"
    BOTH = "both"


RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
DEFAULT_PRIORITY = 100
MAX_PRIORITY = 1_000_000
MAX_LIST = 1000
MAX_NOTE = 500
LIFE_SPAN = frozenset({"not_before", "expires_at"})

# Event types are matched exactly; printable ASCII without quotes, backslashes or spaces.
# Federation endpoints that are unsigned by the spec yet not public (identity servers call
# them): a server_allow rule lets them through only when it names them. Name → endpoint.
UNSIGNED_ENDPOINTS = {"3pid/onbind": "federation.3pid_onbind"}
_EVENT_TYPE = re.compile(r"^[!#-\[\]-~]{1,255}$")
_ROOM_ID = re.compile(r"^![!-~]{1,254}$")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    kind: Kind
    params: Mapping[str, Any]
    mode: Mode
    enabled: bool
    priority: int
    note: str
    author: str | None
    created: int
    updated: int
    # Life span in ms since the epoch (None: unbounded); see ``active`` and docs/rules.md.
    not_before: int | None = None
    expires_at: int | None = None

    def active(self, now_ms: int) -> bool:
        """Does the rule apply at ``now_ms``: from not_before (inclusive) to expires_at (not)."""
        return (self.not_before is None or now_ms >= self.not_before) and (
            self.expires_at is None or now_ms < self.expires_at
        )

    @property
    def sort_key(self) -> tuple[int, str]:
        """Pipeline order: lower priority numbers first, then the id."""
        return (self.priority, self.id)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "params": dict(self.params),
            "mode": self.mode.value,
            "enabled": self.enabled,
            "priority": self.priority,
            "note": self.note,
            "author": self.author,
            "created": iso(self.created),
            "updated": iso(self.updated),
            "not_before": iso(self.not_before),
            "expires_at": iso(self.expires_at),
        }

    @classmethod
    def from_row(cls, data: Mapping[str, Any]) -> Rule:
        """A rule as stored (re-validated, so a bad row fails loudly instead of misjudging)."""
        kind = Kind(data["kind"])
        return cls(
            id=str(data["id"]),
            kind=kind,
            params=validate_params(kind, data["params"]),
            mode=Mode(data["mode"]),
            enabled=bool(data["enabled"]),
            priority=int(data["priority"]),
            note=str(data.get("note") or ""),
            author=data.get("author"),
            created=int(data["created"]),
            updated=int(data["updated"]),
            not_before=_optional_int(data.get("not_before")),
            expires_at=_optional_int(data.get("expires_at")),
        )


split_server = server_names.split


def _optional_int(value: Any) -> int | None:
    return int(value) if value is not None else None


def parse_instant(value: Any, field: str) -> int | None:
    """An ISO 8601 time (``2027-03-31``, ``2027-03-31T18:00:00Z``) or null, as ms; UTC if no zone.

    A bare date means the start of that day in UTC.
    """
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise InvalidParam(
            f"{field} must be an ISO 8601 time such as 2027-03-31T00:00:00Z, or null"
        )
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise InvalidParam(
            f"{field}: {value[:40]!r} is not an ISO 8601 time such as 2027-03-31T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def check_life_span(not_before: int | None, expires_at: int | None) -> None:
    if not_before is not None and expires_at is not None and expires_at <= not_before:
        raise InvalidParam("expires_at must be later than not_before")


def _str_list(params: Mapping[str, Any], key: str, *, required: bool) -> list[str]:
    value = params.get(key)
    if value is None:
        if required:
            raise InvalidParam(f"params.{key} is required")
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParam(f"params.{key} must be a list of strings")
    if len(value) > MAX_LIST:
        raise InvalidParam(f"params.{key} may hold at most {MAX_LIST} entries")
    seen: dict[str, None] = {}
    for item in value:
        seen.setdefault(item.strip(), None)
    return [item for item in seen if item]


def _servers(params: Mapping[str, Any]) -> list[str]:
    servers: list[str] = []
    for server in _str_list(params, "servers", required=True):
        name = server_names.canonical_glob(server)
        if name is None:
            raise InvalidParam(
                f"params.servers: {server[:80]!r} is not a server name or glob"
                " (such as partner.example, *.example.org or localhost:8448)"
            )
        servers.append(name)
    if not servers:
        raise InvalidParam("params.servers must list at least one server name or glob")
    return list(dict.fromkeys(servers))


def _event_types(params: Mapping[str, Any], *, required: bool) -> list[str]:
    types = _str_list(params, "event_types", required=required)
    for event_type in types:
        if not _EVENT_TYPE.match(event_type):
            raise InvalidParam(f"params.event_types: {event_type[:80]!r} is not an event type")
    return types


def _check_keys(params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidParam(
            f"params: unknown key {unknown[0]!r} (this kind takes {', '.join(allowed)})"
        )


def validate_params(kind: Kind, params: Any) -> dict[str, Any]:
    """The normalised parameters of a rule of ``kind``; raises InvalidParam."""
    if not isinstance(params, Mapping):
        raise InvalidParam("params must be an object")
    if kind is Kind.SERVER_ALLOW:
        _check_keys(params, ("servers", "allow_unsigned_endpoints"))
        result_allow: dict[str, Any] = {"servers": _servers(params)}
        unsigned = _str_list(params, "allow_unsigned_endpoints", required=False)
        for endpoint in unsigned:
            if endpoint not in UNSIGNED_ENDPOINTS:
                raise InvalidParam(
                    f"params.allow_unsigned_endpoints: {endpoint[:80]!r} is not an unsigned"
                    f" federation endpoint (known: {', '.join(UNSIGNED_ENDPOINTS)})"
                )
        if unsigned:
            result_allow["allow_unsigned_endpoints"] = unsigned
        return result_allow
    if kind is Kind.SERVER_BLOCK:
        _check_keys(params, ("servers",))
        return {"servers": _servers(params)}
    if kind is Kind.CLIENT_ALLOW:
        _check_keys(params, ("user_agents", "networks"))
        agents = _str_list(params, "user_agents", required=False)
        for pattern in agents:
            if len(pattern) > 500:
                raise InvalidParam("params.user_agents: a pattern may be at most 500 characters")
            try:
                re.compile(pattern)
            except re.error as e:
                raise InvalidParam(
                    f"params.user_agents: {pattern[:80]!r} is not a regex ({e})"
                ) from None
        networks: list[str] = []
        for item in _str_list(params, "networks", required=False):
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise InvalidParam(
                    f"params.networks: {item[:80]!r} is not a CIDR network"
                ) from None
        if not agents and not networks:
            raise InvalidParam("params: give user_agents (regexes) and/or networks (CIDR)")
        result: dict[str, Any] = {}
        if agents:
            result["user_agents"] = agents
        if networks:
            result["networks"] = list(dict.fromkeys(networks))
        return result
    if kind is Kind.EVENT_TYPE_BLOCK:
        _check_keys(params, ("event_types", "actions", "scope"))
        types = _event_types(params, required=False)
        actions = _str_list(params, "actions", required=False)
        for action in actions:
            if action not in ACTIONS:
                raise InvalidParam(
                    f"params.actions: {action[:80]!r} is not an action"
                    f" (actions: {', '.join(sorted(ACTIONS))})"
                )
        if not types and not actions:
            raise InvalidParam("params.event_types must list at least one event type")
        scope = params.get("scope", Scope.BOTH.value)
        if scope not in {s.value for s in Scope}:
            raise InvalidParam("params.scope must be client, federation or both")
        result = {"event_types": types, "scope": str(scope)}
        if actions:
            result["actions"] = sorted(actions)
        return result
    if kind is Kind.PARTNER_SCOPE:
        _check_keys(params, ("servers", "rooms", "event_types"))
        servers = _servers(params)
        rooms = _str_list(params, "rooms", required=False)
        for room in rooms:
            if not _ROOM_ID.match(room):
                raise InvalidParam(f"params.rooms: {room[:80]!r} is not a room ID (!...)")
        types = _event_types(params, required=False)
        if not rooms and not types:
            raise InvalidParam("params: give rooms and/or event_types the servers may reach")
        result = {"servers": servers}
        if rooms:
            result["rooms"] = rooms
        if types:
            result["event_types"] = types
        return result
    if kind is Kind.EXPR:
        return _expr_params(params)
    raise InvalidParam(f"kind must be one of {', '.join(k.value for k in Kind)}")


def _expr_params(params: Mapping[str, Any]) -> dict[str, Any]:
    from .expr import compile_expression  # the CEL runtime loads only where rules are judged

    _check_keys(params, ("expression",))
    text = params.get("expression")
    if not isinstance(text, str):
        raise InvalidParam("params.expression is required: a CEL expression (docs/rules.md)")
    compile_expression(text)
    return {"expression": text}


def parse_kind(value: Any) -> Kind:
    try:
        return Kind(value)
    except ValueError:
        raise InvalidParam(f"kind must be one of {', '.join(k.value for k in Kind)}") from None


def parse_mode(value: Any) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise InvalidParam("mode must be audit or enforce") from None


def parse_priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
        raise InvalidParam(f"priority must be a whole number from 0 to {MAX_PRIORITY}")
    return value


def parse_enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidParam("enabled must be true or false")
    return value


def parse_note(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_NOTE:
        raise InvalidParam(f"note must be a string of at most {MAX_NOTE} characters")
    return value.strip()


def parse_rule_id(value: Any) -> str:
    if not isinstance(value, str) or not RULE_ID.match(value):
        raise InvalidParam(
            "id must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def new_rule(spec: Mapping[str, Any], *, rule_id: str, author: str | None, now: int) -> Rule:
    """A rule from a create request body (``kind``, ``params``, optional fields)."""
    unknown = sorted(
        set(spec)
        - {"id", "kind", "params", "mode", "enabled", "priority", "note", "reason"}
        - LIFE_SPAN
    )
    if unknown:
        raise InvalidParam(f"unknown field {unknown[0]!r}")
    kind = parse_kind(spec.get("kind"))
    not_before = parse_instant(spec.get("not_before"), "not_before")
    expires_at = parse_instant(spec.get("expires_at"), "expires_at")
    check_life_span(not_before, expires_at)
    return Rule(
        id=rule_id,
        kind=kind,
        params=validate_params(kind, spec.get("params", {})),
        mode=parse_mode(spec.get("mode", Mode.ENFORCE.value)),
        enabled=parse_enabled(spec.get("enabled", True)),
        priority=parse_priority(spec.get("priority", DEFAULT_PRIORITY)),
        note=parse_note(spec.get("note", "")),
        author=author,
        created=now,
        updated=now,
        not_before=not_before,
        expires_at=expires_at,
    )


def patch_rule(rule: Rule, patch: Mapping[str, Any], *, now: int) -> Rule:
    """``rule`` with the fields of a PATCH body changed (the kind and id never change)."""
    allowed = {"params", "mode", "enabled", "priority", "note", "reason"} | LIFE_SPAN
    unknown = sorted(set(patch) - allowed)
    if unknown:
        what = "cannot be changed" if unknown[0] in ("id", "kind") else "is not a rule field"
        raise InvalidParam(f"{unknown[0]!r} {what}")
    changes: dict[str, Any] = {}
    if "params" in patch:
        changes["params"] = validate_params(rule.kind, patch["params"])
    if "mode" in patch:
        changes["mode"] = parse_mode(patch["mode"])
    if "enabled" in patch:
        changes["enabled"] = parse_enabled(patch["enabled"])
    if "priority" in patch:
        changes["priority"] = parse_priority(patch["priority"])
    if "note" in patch:
        changes["note"] = parse_note(patch["note"])
    for key in sorted(LIFE_SPAN & set(patch)):
        changes[key] = parse_instant(patch[key], key)
    if not changes:
        raise InvalidParam(
            "nothing to change: give params, mode, enabled, priority, note,"
            " not_before or expires_at"
        )
    check_life_span(
        changes.get("not_before", rule.not_before), changes.get("expires_at", rule.expires_at)
    )
    return replace(rule, updated=now, **changes)


@dataclass(frozen=True)
class Preset:
    name: str
    rule_id: str
    kind: Kind
    params: Mapping[str, Any]
    note: str


# The ledger: nothing that hides or alters history gets in (docs/rules.md, section 5).
LEDGER_EVENT_TYPES = (
    "m.room.encryption",
    "m.room.encrypted",
    "m.room.redaction",
    "m.room.retention",
    "m.room_key",
    "m.room_key_request",
    "m.forwarded_room_key",
    "m.room_key.withheld",
    "m.secret.request",
    "m.secret.send",
    "m.dummy",
)

PRESETS: dict[str, Preset] = {
    "compliance-ledger": Preset(
        name="compliance-ledger",
        rule_id="compliance-ledger",
        kind=Kind.EVENT_TYPE_BLOCK,
        params={
            "event_types": list(LEDGER_EVENT_TYPES),
            "actions": sorted(ACTIONS),
            "scope": "both",
        },
        note=(
            "preset compliance-ledger: no encryption, no ciphertext or key sharing, no"
            " redaction, retention or erasure (immutable, auditable history)"
        ),
    ),
}
