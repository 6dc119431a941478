"""What the gateway must do with a request generated from the spec: forward it or refuse it.

::

    rules = [Rule.from_payload(p) for p in payloads]  # the rules loaded into the gateway
    expected = expect(request, rules)    # Expected("forward" | "refuse" | "unchecked", ...)

The oracle is deliberately independent of ``dmz_api.gateway.policy``: it never parses a
path. What a request *is* comes from the spec operation it was generated from: its API
(client-server or server-server: the request class), its ``security`` (none: a public
federation endpoint), its path parameters (``roomId``, ``eventType``) and the body fields the
spec documents (``createRoom``). What the rules *do* with it is section 2 and 3 of
``docs/rules.md``, written out again here: the outcome, the decision recorded (``allow``,
``block``, ``would_block``) and the rule it names (pipeline order, audit mode).

Out of scope (``unchecked``): ``/_matrix/policy/*`` and the PDUs inside a federation
transaction (``PUT /send/{txnId}``: judged by origin only; the events in it are judged one by
one elsewhere).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
JOINS = frozenset({"joinRoom", "knockRoom"})


# Operations that are an action of docs/rules.md section 2 (``event_type_block`` ``actions``),
# by the spec's operationId: writes of end-to-end encryption keys (publishing, claiming,
# server-side backup), and the bodies that erase an account or redact on kick/ban.
E2EE_KEY_WRITES = frozenset(
    {
        "uploadKeys",
        "claimKeys",
        "uploadCrossSigningKeys",
        "uploadCrossSigningSignatures",
        "postRoomKeysVersion",
        "putRoomKeysVersion",
        "deleteRoomKeysVersion",
        "putRoomKeys",
        "deleteRoomKeys",
        "putRoomKeysByRoomId",
        "deleteRoomKeysByRoomId",
        "putRoomKeyBySessionId",
        "deleteRoomKeyBySessionId",
        "claimUserEncryptionKeys",
    }
)
REDACT_FLAGS = ("redact_events", "org.matrix.msc4293.redact_events")


def actions(request: SpecRequest) -> tuple[str, ...]:
    """The actions ``request`` performs, from its operation and documented body fields."""
    operation_id = request.operation.operation_id
    body = request.json_body
    if operation_id in E2EE_KEY_WRITES:
        return ("e2ee.keys",)
    if operation_id == "deactivateAccount" and isinstance(body, Mapping):
        return ("account.erase",) if body.get("erase") is True else ()
    if operation_id in ("kick", "ban") and isinstance(body, Mapping):
        if any(body.get(flag) is True for flag in REDACT_FLAGS):
            return ("membership.redact_events",)
    return ()


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
    """The room the path names (section 1: a room ID, or an alias for client joins)."""
    if "roomId" in request.params:
        return request.params["roomId"]
    value = request.params.get("roomIdOrAlias")
    if value is not None and (value.startswith("!") or request.operation.operation_id in JOINS):
        return value
    return None


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
class Rule:
    """A rule as the admin API takes it (``POST /v1/rules``), enabled."""

    id: str
    kind: str
    params: Mapping[str, Any]
    priority: int = 100
    mode: str = "enforce"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Rule:
        return cls(
            payload["id"],
            payload["kind"],
            payload["params"],
            payload.get("priority", 100),
            payload.get("mode", "enforce"),
        )


@dataclass(frozen=True)
class Expected:
    outcome: str  # "forward", "refuse" or "unchecked"
    why: str
    decision: str = ""  # the recorded outcome: "allow", "block" or "would_block"
    rule: str | None = None  # the rule the decision names

    def __str__(self) -> str:
        return f"{self.outcome} ({self.why})"


@dataclass(frozen=True)
class _Facts:
    api: str
    origin: str | None
    types: tuple[str, ...]
    actions: tuple[str, ...]
    room: str | None
    public: bool
    user_agent: str


def _facts(request: SpecRequest) -> _Facts:
    api = request.operation.api
    return _Facts(
        api=api,
        origin=request.origin if api == "federation" else None,
        types=event_types(request),
        actions=actions(request),
        room=room(request),
        public=is_public(request),
        user_agent=request.identity.user_agent or "",
    )


def _refusals(facts: _Facts, rules: Sequence[Rule]) -> list[tuple[Rule, str]]:
    """Every (rule, reason) that refuses the request, rules in pipeline order."""
    refusals: list[tuple[Rule, str]] = []
    origin = facts.origin
    allow = [r for r in rules if r.kind == "server_allow"]
    if allow:
        servers = [s for r in allow for s in r.params["servers"]]
        if origin is not None and not _listed(servers, origin):
            refusals.append((allow[0], f"server_allow: {origin} not listed"))
        elif origin is None and facts.api == "federation" and not facts.public:
            refusals.append((allow[0], "server_allow: unsigned"))
    clients = [r for r in rules if r.kind == "client_allow"]
    if clients and facts.api == "client":
        agent = facts.user_agent
        if not any(re.search(p, agent) for r in clients for p in r.params["user_agents"]):
            refusals.append((clients[0], f"client_allow: {agent!r}"))
    for rule in rules:
        params = rule.params
        if rule.kind == "server_block" and origin is not None:
            if _listed(params["servers"], origin):
                refusals.append((rule, f"server_block {origin}"))
        elif rule.kind == "event_type_block" and params.get("scope", "both") in (facts.api, "both"):
            hit = [t for t in facts.types if t in params.get("event_types", ())]
            acts = [a for a in facts.actions if a in params.get("actions", ())]
            if hit:
                refusals.append((rule, f"event_type_block {hit[0]}"))
            elif acts:
                refusals.append((rule, f"event_type_block action {acts[0]}"))
        elif rule.kind == "partner_scope" and origin is not None:
            if not _listed(params["servers"], origin):
                continue
            rooms, allowed = params.get("rooms"), params.get("event_types")
            if rooms and facts.room is not None and facts.room not in rooms:
                refusals.append((rule, f"partner_scope room {facts.room}"))
            elif allowed and any(t not in allowed for t in facts.types):
                refusals.append((rule, "partner_scope event type"))
    order = {rule.id: i for i, rule in enumerate(rules)}
    return sorted(refusals, key=lambda refusal: order[refusal[0].id])


def _lister(facts: _Facts, rules: Sequence[Rule]) -> str | None:
    """The first allow rule that lists the request (section 3), if any."""
    for rule in rules:
        if rule.kind == "server_allow" and facts.origin is not None:
            if _listed(rule.params["servers"], facts.origin):
                return rule.id
        elif rule.kind == "client_allow" and facts.api == "client":
            if any(re.search(p, facts.user_agent) for p in rule.params["user_agents"]):
                return rule.id
    return None


def judge(request: SpecRequest, rules: Sequence[Rule]) -> Expected:
    """Sections 2 and 3 (audit mode included) for ``request``, rules in any order."""
    pipeline = sorted(rules, key=lambda rule: (rule.priority, rule.id))
    facts = _facts(request)
    enforced = [rule for rule in pipeline if rule.mode == "enforce"]
    refusals = _refusals(facts, enforced)
    if refusals:
        rule, why = refusals[0]
        return Expected("refuse", why, "block", rule.id)
    audited = _refusals(facts, pipeline)
    if audited:
        rule, why = audited[0]
        return Expected("forward", f"audit: {why}", "would_block", rule.id)
    why = ", ".join(facts.types) if facts.types else "no event type"
    if facts.public and facts.origin is None:
        why += ", public"
    return Expected("forward", why, "allow", _lister(facts, enforced))


def expect(request: SpecRequest, rules: Sequence[Rule]) -> Expected:
    """What the proxy must do with ``request`` under ``rules``."""
    if request.operation.full_template.startswith(OUT_OF_SCOPE_PREFIXES):
        return Expected("unchecked", "/_matrix/policy is not covered by this suite")
    expected = judge(request, rules)
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
    "Rule",
    "actions",
    "event_types",
    "expect",
    "is_public",
    "judge",
    "room",
    "server_matches",
]
