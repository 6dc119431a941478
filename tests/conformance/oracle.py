"""What the gateway must do with a request generated from the spec: forward it or refuse it.

::

    rules = ReferenceRules(...)                 # also the rules loaded into the gateway
    expected = expect(request, rules)           # Expected("forward" | "refuse" | "unchecked")

The oracle is deliberately independent of ``dmz_api.gateway.policy``: it never parses a
path. What a request *is* comes from the spec operation it was generated from: its API
(client-server or server-server: the request class), its ``security`` (none: a public
federation endpoint), its path parameters (``roomId``, ``eventType``) and the body fields the
spec documents (``createRoom``). What the rules *do* with it is section 2 and 3 of
``docs/rules.md``, written out again here for the kinds the reference ruleset uses.

Out of scope (``unchecked``): ``/_matrix/policy/*`` and the PDUs inside a federation
transaction (``PUT /send/{txnId}``: judged by origin only; the events in it are judged one by
one elsewhere).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .spec_requests import READS, SpecRequest

MEMBER = "m.room.member"

# The event types an operation asks the homeserver to create, by the spec's operationId (the
# spec describes each; docs/rules.md section 1 lists the same endpoints). Writes with an
# ``eventType`` path parameter create that type (see ``event_types``).
CREATES: Mapping[str, tuple[str, ...]] = {
    # client-server
    "inviteUser": (MEMBER,),
    "joinRoomById": (MEMBER,),
    "joinRoom": (MEMBER,),
    "knockRoom": (MEMBER,),
    "leaveRoom": (MEMBER,),
    "kick": (MEMBER,),
    "ban": (MEMBER,),
    "unban": (MEMBER,),
    # third_party_membership.yaml: "the homeserver ... will send an m.room.third_party_invite
    # event into the room" (the same path as inviteUser, told apart by its body).
    "inviteBy3PID": ("m.room.third_party_invite",),
    "redactEvent": ("m.room.redaction",),
    "upgradeRoom": ("m.room.tombstone",),
    # server-server: membership handshakes and invites
    "makeJoin": (MEMBER,),
    "sendJoinV2": (MEMBER,),
    "makeLeave": (MEMBER,),
    "sendLeaveV2": (MEMBER,),
    "makeKnock": (MEMBER,),
    "sendKnock": (MEMBER,),
    "sendInviteV1": (MEMBER,),
    "sendInviteV2": (MEMBER,),
    "exchangeThirdPartyInvite": (MEMBER,),
}
# Writes that name a room but create no room event (account data, receipts, typing, tags,
# key backup, directory visibility, reports): listed so that a new operation of the spec
# that names a room must be placed in CREATES or here (test_oracle_knows_every_room_write).
CREATES_NOTHING = frozenset(
    {
        "setAccountDataPerRoom",
        "updateAppserviceRoomDirectoryVisibility",
        "putRoomKeyBySessionId",
        "deleteRoomKeyBySessionId",
        "putRoomKeysByRoomId",
        "deleteRoomKeysByRoomId",
        "forgetRoom",
        "setRoomVisibilityOnDirectory",
        "setReadMarker",
        "postReceipt",
        "reportRoom",
        "reportEvent",
        "setRoomTag",
        "deleteRoomTag",
        "setTyping",
        "getMissingPreviousEvents",  # a POST that reads
    }
)
# createRoom body fields and the state events they make (create_room.yaml).
CREATE_ROOM_FIELDS: Mapping[str, str] = {
    "name": "m.room.name",
    "topic": "m.room.topic",
    "invite": MEMBER,
    "room_alias_name": "m.room.canonical_alias",
    "power_level_content_override": "m.room.power_levels",
    "invite_3pid": "m.room.third_party_invite",
}
OUT_OF_SCOPE_PREFIXES = ("/_matrix/policy/",)


def _create_room_types(body: Any) -> list[str]:
    if not isinstance(body, Mapping):
        return []
    types = [
        e["type"]
        for e in body.get("initial_state") or []
        if isinstance(e, Mapping) and isinstance(e.get("type"), str)
    ]
    types += [event_type for key, event_type in CREATE_ROOM_FIELDS.items() if body.get(key)]
    return types


def event_types(request: SpecRequest) -> tuple[str, ...]:
    """The event types ``request`` asks the homeserver to create, per the spec."""
    operation = request.operation
    if operation.api == "client" and request.method in READS:
        return ()  # docs/rules.md section 1 (make_join is a federation GET that counts)
    types = list(CREATES.get(operation.operation_id, ()))
    body = request.json_body
    if operation.operation_id == "inviteBy3PID" and not (
        isinstance(body, Mapping) and "medium" in body and "address" in body
    ):
        types = [MEMBER]  # without a third-party identifier it is a plain invite (inviteUser)
    if "eventType" in request.params and request.method not in READS:
        types.append(request.params["eventType"])
    if operation.operation_id == "createRoom":
        types += _create_room_types(request.json_body)
    return tuple(dict.fromkeys(types))


def room(request: SpecRequest) -> str | None:
    return request.params.get("roomId") or request.params.get("roomIdOrAlias")


def is_public(request: SpecRequest) -> bool:
    """A federation endpoint the spec defines without authentication."""
    return request.operation.api == "federation" and not request.operation.security


# ---- the rules (docs/rules.md sections 2 and 3) -----------------------------------------


def _glob(pattern: str) -> re.Pattern[str]:
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE)


def server_matches(pattern: str, server: str) -> bool:
    """Section 2.1: globs as in m.room.server_acl; a pattern without a port (or ``:*``)
    matches the host on any port, one with a port only that port."""
    host, _, port = pattern.rpartition(":") if ":" in pattern else (pattern, "", "")
    if port in ("", "*"):
        server_host = server.rpartition(":")[0] if ":" in server else server
        return _glob(host).fullmatch(server_host) is not None
    return _glob(pattern).fullmatch(server) is not None


def _listed(patterns: Sequence[str], server: str) -> bool:
    return any(server_matches(p, server) for p in patterns)


@dataclass(frozen=True)
class PartnerScope:
    servers: tuple[str, ...]
    rooms: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReferenceRules:
    """The enforce-mode reference ruleset (audit rules never change whether a request is
    forwarded, section 3.1, so they have no place here)."""

    server_block: tuple[str, ...] = ()
    server_allow: tuple[str, ...] = ()
    client_user_agents: tuple[str, ...] = ()
    # (event types, scope) of each event_type_block rule
    event_type_blocks: tuple[tuple[tuple[str, ...], str], ...] = ()
    partner_scopes: tuple[PartnerScope, ...] = field(default=())


@dataclass(frozen=True)
class Expected:
    outcome: str  # "forward", "refuse" or "unchecked"
    why: str

    def __str__(self) -> str:
        return f"{self.outcome} ({self.why})"


def _judge(request: SpecRequest, rules: ReferenceRules) -> Expected:
    api = request.operation.api
    origin = request.origin if api == "federation" else None
    types = event_types(request)
    if origin is not None and _listed(rules.server_block, origin):
        return Expected("refuse", f"server_block {origin}")
    if rules.server_allow:
        if origin is not None and not _listed(rules.server_allow, origin):
            return Expected("refuse", f"server_allow: {origin} not listed")
        if api == "federation" and origin is None and not is_public(request):
            return Expected("refuse", "server_allow: unsigned")
    if api == "client" and rules.client_user_agents:
        agent = request.identity.user_agent or ""
        if not any(re.search(p, agent) for p in rules.client_user_agents):
            return Expected("refuse", f"client_allow: {agent!r}")
    for blocked, scope in rules.event_type_blocks:
        if scope in (api, "both"):
            hit = [t for t in types if t in blocked]
            if hit:
                return Expected("refuse", f"event_type_block {hit[0]}")
    if origin is not None:
        name = room(request)
        for scope_rule in rules.partner_scopes:
            if not _listed(scope_rule.servers, origin):
                continue
            if scope_rule.rooms and name is not None and name not in scope_rule.rooms:
                return Expected("refuse", f"partner_scope room {name}")
            outside = [
                t for t in types if scope_rule.event_types and t not in scope_rule.event_types
            ]
            if outside:
                return Expected("refuse", f"partner_scope event type {outside[0]}")
    why = ", ".join(types) if types else "no event type"
    return Expected("forward", why)


def expect(request: SpecRequest, rules: ReferenceRules) -> Expected:
    """What the proxy must do with ``request`` under ``rules``."""
    if request.operation.full_template.startswith(OUT_OF_SCOPE_PREFIXES):
        return Expected("unchecked", "/_matrix/policy is not covered by this suite")
    expected = _judge(request, rules)
    body = request.json_body
    if (
        request.operation.operation_id == "sendTransaction"
        and isinstance(body, Mapping)
        and body.get("pdus")
        and expected.outcome == "forward"
    ):
        # The PDUs inside are judged one by one, not by this suite: only a refusal by
        # origin is certain.
        return Expected("unchecked", "PDUs of a transaction are judged elsewhere")
    return expected


__all__ = [
    "CREATES",
    "CREATES_NOTHING",
    "Expected",
    "PartnerScope",
    "ReferenceRules",
    "event_types",
    "expect",
    "is_public",
    "room",
    "server_matches",
]
