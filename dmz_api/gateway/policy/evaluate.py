"""The reference evaluator: every rule judged one by one, with a trace for the dry-run API.

This is ``docs/rules.md`` written as code, kept simple on purpose. ``compile.py`` computes the
same decisions with lookups instead of a loop; the tests hold the two to each other.

Per rule, the result is one of ``not_applicable`` (the rule says nothing about this
request), ``pass`` (a blocking rule that does not match), ``block`` (a blocking rule that
matches), ``listed`` / ``not_listed`` (an allow-list rule that does / does not list the
request), ``disabled``, or ``inactive`` (outside its life span: not yet or no longer).
An ``expr`` rule's entry also holds ``expression``: what it saw and what it returned.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .compile import MALFORMED_RULE, Ref, glob_regex, make_ref
from .expr import bind, compile_expression, request_data, visible
from .model import Decision, Mode, Outcome, RequestClass, RequestInfo, iso, safe_text
from .rules import UNSIGNED_ENDPOINTS, Kind, Rule, Scope, split_server

NOT_APPLICABLE = "not_applicable"
PASSES = "pass"
BLOCK = "block"
LISTED = "listed"
NOT_LISTED = "not_listed"
DISABLED = "disabled"
# Marks a blocked action (rather than an event type) in the third item of ``rule_result``.
ACTION_PREFIX = "action:"
INACTIVE = "inactive"


def server_matches(pattern: str, name: str) -> bool:
    """Does a server glob match a server name (see ``docs/rules.md``, "Server names")."""
    name = name.lower()
    host, _ = split_server(name)
    pattern_host, pattern_port = split_server(pattern)
    if pattern_port is None or pattern_port == "*":
        return glob_regex(pattern_host).fullmatch(host) is not None
    return glob_regex(pattern).fullmatch(name) is not None


def _first_server(patterns: Iterable[str], name: str) -> str | None:
    return next((p for p in patterns if server_matches(p, name)), None)


def _client_allow(rule: Rule, req: RequestInfo) -> tuple[str, str]:
    agents = rule.params.get("user_agents") or []
    networks = rule.params.get("networks") or []
    if agents:
        if req.user_agent is None:
            return NOT_LISTED, "user agent unknown"
        hit = next((a for a in agents if re.search(a, req.user_agent)), None)
        if hit is None:
            return NOT_LISTED, "user agent matches no pattern"
    if networks:
        try:
            address = ipaddress.ip_address(req.ip) if req.ip is not None else None
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address is None:
            return NOT_LISTED, "client address unknown"
        net = next((n for n in networks if address in ipaddress.ip_network(n, strict=False)), None)
        if net is None:
            return NOT_LISTED, "client address in no listed network"
    return LISTED, "client approved"


def rule_result(rule: Rule, req: RequestInfo) -> tuple[str, str, str | None]:
    """(result, detail, blocked event type) of one enabled rule for ``req``."""
    kind, params = rule.kind, rule.params
    if kind is Kind.SERVER_BLOCK:
        if req.origin is None:
            return NOT_APPLICABLE, "no origin server", None
        pattern = _first_server(params["servers"], req.origin)
        if pattern is None:
            return PASSES, "origin not listed", None
        return BLOCK, f"origin matches {pattern}", None
    if kind is Kind.SERVER_ALLOW:
        if req.origin is None:
            if req.request_class is RequestClass.FEDERATION and not req.public:
                for name in params.get("allow_unsigned_endpoints", ()):
                    if UNSIGNED_ENDPOINTS[name] == req.endpoint:
                        return LISTED, f"unsigned endpoint {name} allowed", None
                return NOT_LISTED, "unsigned federation request", None
            return NOT_APPLICABLE, "no origin server", None
        pattern = _first_server(params["servers"], req.origin)
        if pattern is None:
            return NOT_LISTED, "origin not listed", None
        return LISTED, f"origin matches {pattern}", None
    if kind is Kind.CLIENT_ALLOW:
        if req.request_class is not RequestClass.CLIENT:
            return NOT_APPLICABLE, "not a client request", None
        if req.user_agent is None and req.ip is None:
            return NOT_APPLICABLE, "no client connection details", None
        result, detail = _client_allow(rule, req)
        return result, detail, None
    if kind is Kind.EVENT_TYPE_BLOCK:
        scope = params["scope"]
        if scope != Scope.BOTH and scope != req.request_class.value:
            return NOT_APPLICABLE, f"scope is {scope}", None
        if not req.event_types and not req.actions:
            return NOT_APPLICABLE, "no event type", None
        listed = set(params["event_types"])
        hit = next((t for t in req.event_types if t in listed), None)
        if hit is not None:
            return BLOCK, f"event type {hit}", hit
        listed_actions = set(params.get("actions", ()))
        action = next((a for a in req.actions if a in listed_actions), None)
        if action is not None:
            return BLOCK, f"action {action}", ACTION_PREFIX + action
        return PASSES, "event type not listed", None
        if hit is None:
            return PASSES, "event type not listed", None
        return BLOCK, f"event type {hit}", hit
    if kind is Kind.EXPR:
        matched, returned, _ = expr_result(rule, req)
        if matched:
            return BLOCK, f"expression returned {json.dumps(returned)}", None
        return PASSES, "expression returned false", None
    # partner_scope
    if req.origin is None:
        return NOT_APPLICABLE, "no origin server", None
    if _first_server(params["servers"], req.origin) is None:
        return NOT_APPLICABLE, "origin not covered", None
    rooms, types = params.get("rooms"), params.get("event_types")
    if rooms and req.room is not None and req.room not in rooms:
        return BLOCK, "room outside the partner's scope", None
    if types and any(t not in types for t in req.event_types):
        return BLOCK, "event type outside the partner's scope", None
    return PASSES, "within scope", None


def _ref(rule: Rule, order: int, version: int, hit: str | None) -> Ref:
    if hit is not None and hit.startswith(ACTION_PREFIX):
        return make_ref(rule, order, version, action=hit[len(ACTION_PREFIX) :])
    return make_ref(rule, order, version, hit)


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    trace: list[dict[str, Any]]


def _judge(
    ordered: Sequence[tuple[Rule, str, str | None]],
) -> tuple[int | None, str | None, int | None]:
    """(index of the blocking rule, its event type, index of the first listing allow rule)."""
    blocking: int | None = None
    blocked_type: str | None = None
    allowed_by: int | None = None
    for index, (_, result, event_type) in enumerate(ordered):
        if result == BLOCK and blocking is None:
            blocking, blocked_type = index, event_type
        if result == LISTED and allowed_by is None:
            allowed_by = index
    for kind in (Kind.SERVER_ALLOW, Kind.CLIENT_ALLOW):
        group = [i for i, (rule, _, _) in enumerate(ordered) if rule.kind is kind]
        results = {ordered[i][1] for i in group}
        if group and results == {NOT_LISTED}:
            gate = group[0]
            if blocking is None or gate < blocking:
                blocking, blocked_type = gate, None
    return blocking, blocked_type, allowed_by


def expr_result(rule: Rule, req: RequestInfo) -> tuple[bool, object, dict[str, Any]]:
    """(matched, returned, what it saw) for an expr rule (an error or a non-bool matches)."""
    data = request_data(req, req.at if req.at is not None else time.time())
    matched, returned = compile_expression(rule.params["expression"]).run(bind(data))
    return matched, returned, visible(data)


def _inactive_detail(rule: Rule, now_ms: int) -> str:
    if rule.not_before is not None and now_ms < rule.not_before:
        return f"not in force before {iso(rule.not_before)}"
    return f"expired at {iso(rule.expires_at)}"


def explain(
    rules: Iterable[Rule], req: RequestInfo, version: int, now_ms: int | None = None
) -> Explanation:
    """The decision for ``req`` and the result of every rule, in pipeline order.

    ``now_ms`` is the instant whose life spans count (default: ``req.at``, else now).
    """
    if now_ms is None:
        now_ms = int((req.at if req.at is not None else time.time()) * 1000)
    ordered_rules = sorted(rules, key=lambda r: r.sort_key)
    trace: list[dict[str, Any]] = []
    if req.malformed is not None:
        reason = safe_text(f"Refused by the gateway: {req.malformed}")
        trace.append(
            {"rule": MALFORMED_RULE, "kind": "builtin", "result": BLOCK, "detail": req.malformed}
        )
        decision = Decision(Outcome.BLOCK, MALFORMED_RULE, Mode.ENFORCE, reason, version, 403)
        return Explanation(decision, trace)

    judged: list[tuple[Rule, str, str | None]] = []
    for rule in ordered_rules:
        entry: dict[str, Any] = {
            "rule": rule.id,
            "kind": rule.kind.value,
            "mode": rule.mode.value,
            "priority": rule.priority,
            "enabled": rule.enabled,
        }
        if not rule.enabled:
            entry.update(result=DISABLED, detail="rule disabled")
        elif not rule.active(now_ms):
            entry.update(result=INACTIVE, detail=_inactive_detail(rule, now_ms))
        else:
            result, detail, event_type = rule_result(rule, req)
            entry.update(result=result, detail=detail)
            if rule.kind is Kind.EXPR:
                _, returned, saw = expr_result(rule, req)
                entry["expression"] = {
                    "text": rule.params["expression"],
                    "saw": saw,
                    "returned": returned,
                }
            judged.append((rule, result, event_type))
        trace.append(entry)

    enforce = [j for j in judged if j[0].mode is Mode.ENFORCE]
    blocking, blocked_type, allowed_by = _judge(enforce)
    order = {rule.id: index for index, (rule, _, _) in enumerate(judged)}
    if blocking is not None:
        rule = enforce[blocking][0]
        decision = _ref(rule, order[rule.id], version, blocked_type).block
    else:
        would, would_type, _ = _judge(judged) if len(enforce) < len(judged) else (None, None, None)
        if would is not None:
            rule = judged[would][0]
            decision = _ref(rule, order[rule.id], version, would_type).would_block
        elif allowed_by is not None:
            rule = enforce[allowed_by][0]
            decision = make_ref(rule, order[rule.id], version).allow
        else:
            decision = Decision(
                Outcome.ALLOW, None, None, "Allowed: no gateway rule objects", version
            )
    for entry in trace:
        entry["decisive"] = entry["rule"] == decision.rule_id
    return Explanation(decision, trace)
