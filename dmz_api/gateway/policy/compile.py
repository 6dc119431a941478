"""The compiled evaluator: one ruleset version turned into dict and set lookups.

``compile_ruleset(rules, version)`` sorts the rules once, precompiles every glob, regex and
network, and precomputes every ``Decision`` it can return, so ``decide`` allocates almost
nothing and its cost does not grow with the number of rules: server names are looked up
by exact name, by domain suffix (``*.example.org``) and, for the rare complex glob, by a
scan whose result is cached per server name; event types are dict keys; client networks
are dicts per prefix length; client-allow matches are bitmasks over the rules.

The semantics are those of ``docs/rules.md`` and of the reference evaluator in
``evaluate.py``, which the tests hold this module to.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .expr import Program, bind, compile_any, compile_expression, guard_passes, request_data
from .model import Decision, Mode, Outcome, RequestClass, RequestInfo, safe_text
from .rules import UNSIGNED_ENDPOINTS, Kind, Rule, Scope, split_server

_CACHE_LIMIT = 8192
FEDERATION = RequestClass.FEDERATION
CLIENT = RequestClass.CLIENT

MALFORMED_RULE = "builtin:malformed"
UNAVAILABLE_RULE = "builtin:unavailable"


def glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    )


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


@dataclass(eq=False, slots=True)
class Ref:
    """A rule at its place in the pipeline, with the decisions it produces."""

    rule: Rule
    order: int
    block: Decision
    would_block: Decision
    allow: Decision
    rooms: frozenset[str] | None = None
    types: frozenset[str] | None = None
    program: Program | None = None


def block_reason(rule: Rule, event_type: str | None = None, action: str | None = None) -> str:
    if rule.kind is Kind.SERVER_BLOCK:
        text = f"Federation with this server is blocked by gateway rule {rule.id}"
    elif rule.kind is Kind.SERVER_ALLOW:
        text = f"This server is not on the gateway's federation allow list (rule {rule.id})"
    elif rule.kind is Kind.CLIENT_ALLOW:
        text = f"This client application or network is not approved by the gateway (rule {rule.id})"
    elif rule.kind is Kind.EVENT_TYPE_BLOCK and action is not None:
        text = f"The action {action} is blocked by gateway rule {rule.id}"
    elif rule.kind is Kind.EVENT_TYPE_BLOCK:
        text = f"Event type {event_type} is blocked by gateway rule {rule.id}"
    elif rule.kind is Kind.EXPR:
        text = f"This request is blocked by gateway rule {rule.id}"
    else:
        text = f"This server may not reach this room or event type (gateway rule {rule.id})"
    return safe_text(text)


def make_ref(
    rule: Rule,
    order: int,
    version: int,
    event_type: str | None = None,
    action: str | None = None,
) -> Ref:
    reason = block_reason(rule, event_type, action)
    return Ref(
        rule=rule,
        order=order,
        block=Decision(Outcome.BLOCK, rule.id, Mode.ENFORCE, reason, version, 403),
        would_block=Decision(
            Outcome.WOULD_BLOCK, rule.id, Mode.AUDIT, f"{reason} (audit mode: allowed)", version
        ),
        allow=Decision(
            Outcome.ALLOW, rule.id, rule.mode, f"Allowed by gateway rule {rule.id}", version
        ),
    )


class ServerIndex:
    """Server-name patterns of many rules; ``matches(name)`` lists the matching rules in order.

    A pattern with a port matches that exact ``host:port``; without one it matches the host
    on any port. ``*`` matches any run of characters (dots included), ``?`` one character.
    """

    def __init__(self, entries: Iterable[tuple[str, Ref]]) -> None:
        self._host: dict[str, list[Ref]] = {}
        self._full: dict[str, list[Ref]] = {}
        self._suffix: dict[str, list[Ref]] = {}
        self._any: list[Ref] = []
        self._globs: list[tuple[re.Pattern[str], bool, Ref]] = []
        for pattern, ref in entries:
            host, port = split_server(pattern)
            if port == "*":
                port = None
            if port is not None:
                if _has_wildcard(pattern):
                    self._globs.append((glob_regex(pattern), True, ref))
                else:
                    self._full.setdefault(pattern, []).append(ref)
            elif not _has_wildcard(host):
                self._host.setdefault(host, []).append(ref)
            elif host == "*":
                self._any.append(ref)
            elif host.startswith("*.") and not _has_wildcard(host[2:]):
                self._suffix.setdefault(host[2:], []).append(ref)
            else:
                self._globs.append((glob_regex(host), False, ref))

    def matches(self, name: str) -> list[Ref]:
        name = name.lower()
        host, port = split_server(name)
        found: list[Ref] = []
        found += self._host.get(host, ())
        if port is not None:
            found += self._full.get(name, ())
        if self._suffix:
            dot = host.find(".")
            while dot >= 0:
                found += self._suffix.get(host[dot + 1 :], ())
                dot = host.find(".", dot + 1)
        found += self._any
        for regex, with_port, ref in self._globs:
            if regex.fullmatch(name if with_port else host):
                found.append(ref)
        unique = {id(ref): ref for ref in found}
        return sorted(unique.values(), key=lambda ref: ref.order)


class ClientIndex:
    """client_allow rules as bitmasks: bit i is the i-th rule in pipeline order."""

    def __init__(self, refs: Sequence[Ref]) -> None:
        self.refs = list(refs)
        self._ua_any = 0
        self._ua_patterns: list[tuple[re.Pattern[str], int]] = []
        self._net_any = 0
        self._nets: dict[int, dict[int, dict[int, int]]] = {4: {}, 6: {}}
        for index, ref in enumerate(self.refs):
            bit = 1 << index
            agents = ref.rule.params.get("user_agents") or []
            networks = ref.rule.params.get("networks") or []
            if agents:
                for pattern in agents:
                    self._ua_patterns.append((re.compile(pattern), bit))
            else:
                self._ua_any |= bit
            if networks:
                for text in networks:
                    net = ipaddress.ip_network(text, strict=False)
                    shift = net.max_prefixlen - net.prefixlen
                    by_len = self._nets[net.version].setdefault(shift, {})
                    key = int(net.network_address) >> shift
                    by_len[key] = by_len.get(key, 0) | bit
            else:
                self._net_any |= bit
        self._ua_cache: dict[str, int] = {}
        self._ip_cache: dict[str, int] = {}

    def _ua_mask(self, user_agent: str) -> int:
        mask = self._ua_cache.get(user_agent)
        if mask is None:
            mask = self._ua_any
            for regex, bit in self._ua_patterns:
                if not mask & bit and regex.search(user_agent):
                    mask |= bit
            if len(self._ua_cache) >= _CACHE_LIMIT:
                self._ua_cache.clear()
            self._ua_cache[user_agent] = mask
        return mask

    def _ip_mask(self, ip: str) -> int:
        mask = self._ip_cache.get(ip)
        if mask is None:
            mask = self._net_any
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                address = None
            if address is not None:
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                value = int(address)
                for shift, table in self._nets[address.version].items():
                    mask |= table.get(value >> shift, 0)
            if len(self._ip_cache) >= _CACHE_LIMIT:
                self._ip_cache.clear()
            self._ip_cache[ip] = mask
        return mask

    def first_match(self, user_agent: str | None, ip: str | None) -> Ref | None:
        mask = self._ua_mask(user_agent) if user_agent is not None else self._ua_any
        if mask:
            mask &= self._ip_mask(ip) if ip is not None else self._net_any
        if not mask:
            return None
        return self.refs[(mask & -mask).bit_length() - 1]


@dataclass(slots=True)
class _OriginView:
    block: Ref | None
    allowed_by: Ref | None
    partners: tuple[Ref, ...]


@dataclass
class CompiledSet:
    """One set of rules, all treated as enforcing (the enforce set, or every enabled rule)."""

    refs: Sequence[Ref]
    server_block: ServerIndex | None = None
    server_allow: ServerIndex | None = None
    allow_gate: Ref | None = None
    unsigned: dict[str, Ref] = field(default_factory=dict)
    partners: ServerIndex | None = None
    client_types: dict[str, Ref] = field(default_factory=dict)
    federation_types: dict[str, Ref] = field(default_factory=dict)
    client_actions: dict[str, Ref] = field(default_factory=dict)
    federation_actions: dict[str, Ref] = field(default_factory=dict)
    client: ClientIndex | None = None
    client_gate: Ref | None = None
    exprs: ExprIndex | None = None
    _views: dict[str, _OriginView] = field(default_factory=dict)

    @classmethod
    def build(cls, refs: Sequence[Ref], version: int, memo: ExprMemo | None = None) -> CompiledSet:
        compiled = cls(refs)
        by_kind: dict[Kind, list[Ref]] = {kind: [] for kind in Kind}
        for ref in refs:
            by_kind[ref.rule.kind].append(ref)
        if by_kind[Kind.SERVER_BLOCK]:
            compiled.server_block = ServerIndex(
                (s, ref) for ref in by_kind[Kind.SERVER_BLOCK] for s in ref.rule.params["servers"]
            )
        if by_kind[Kind.SERVER_ALLOW]:
            compiled.server_allow = ServerIndex(
                (s, ref) for ref in by_kind[Kind.SERVER_ALLOW] for s in ref.rule.params["servers"]
            )
            compiled.allow_gate = by_kind[Kind.SERVER_ALLOW][0]
            for ref in by_kind[Kind.SERVER_ALLOW]:
                for name in ref.rule.params.get("allow_unsigned_endpoints", ()):
                    compiled.unsigned.setdefault(UNSIGNED_ENDPOINTS[name], ref)
        if by_kind[Kind.PARTNER_SCOPE]:
            for ref in by_kind[Kind.PARTNER_SCOPE]:
                rooms, types = ref.rule.params.get("rooms"), ref.rule.params.get("event_types")
                ref.rooms = frozenset(rooms) if rooms else None
                ref.types = frozenset(types) if types else None
            compiled.partners = ServerIndex(
                (s, ref) for ref in by_kind[Kind.PARTNER_SCOPE] for s in ref.rule.params["servers"]
            )
        for ref in by_kind[Kind.EVENT_TYPE_BLOCK]:
            scope = ref.rule.params["scope"]
            entries = [
                (t, make_ref(ref.rule, ref.order, version, t), False)
                for t in ref.rule.params["event_types"]
            ] + [
                (a, make_ref(ref.rule, ref.order, version, action=a), True)
                for a in ref.rule.params.get("actions", ())
            ]
            for key, typed, is_action in entries:
                tables = (
                    (
                        (compiled.client_actions, Scope.CLIENT),
                        (compiled.federation_actions, Scope.FEDERATION),
                    )
                    if is_action
                    else (
                        (compiled.client_types, Scope.CLIENT),
                        (compiled.federation_types, Scope.FEDERATION),
                    )
                )
                for table, wanted in tables:
                    if scope in (wanted, Scope.BOTH):
                        current = table.get(key)
                        if current is None or typed.order < current.order:
                            table[key] = typed
        if by_kind[Kind.CLIENT_ALLOW]:
            compiled.client = ClientIndex(by_kind[Kind.CLIENT_ALLOW])
            compiled.client_gate = by_kind[Kind.CLIENT_ALLOW][0]
        if by_kind[Kind.EXPR]:
            compiled.exprs = ExprIndex(by_kind[Kind.EXPR], memo or ExprMemo())
        return compiled

    def _view(self, origin: str) -> _OriginView:
        block = allowed_by = None
        if self.server_block is not None:
            found = self.server_block.matches(origin)
            block = found[0] if found else None
        if self.server_allow is not None:
            found = self.server_allow.matches(origin)
            if found:
                allowed_by = found[0]
            elif block is None or (
                self.allow_gate is not None and self.allow_gate.order < block.order
            ):
                block = self.allow_gate
        partners = tuple(self.partners.matches(origin)) if self.partners is not None else ()
        view = _OriginView(block, allowed_by, partners)
        if len(self._views) >= _CACHE_LIMIT:
            self._views.clear()
        self._views[origin] = view
        return view

    def check(self, req: RequestInfo) -> tuple[Ref | None, Ref | None]:
        """(the first rule that blocks ``req`` or None, the first allow rule that lists it)."""
        best: Ref | None = None
        allowed_by: Ref | None = None
        origin = req.origin
        if origin is not None:
            view = self._views.get(origin) or self._view(origin)
            best, allowed_by = view.block, view.allowed_by
            for partner in view.partners:
                if best is not None and best.order <= partner.order:
                    break
                if (
                    partner.rooms is not None
                    and req.room is not None
                    and req.room not in partner.rooms
                ):
                    best = partner
                    break
                if partner.types is not None and any(
                    t not in partner.types for t in req.event_types
                ):
                    best = partner
                    break
        elif self.allow_gate is not None and req.request_class is FEDERATION and not req.public:
            allowed_by = self.unsigned.get(req.endpoint)
            if allowed_by is None:
                best = self.allow_gate
        if req.event_types:
            table = self.federation_types if req.request_class is FEDERATION else self.client_types
            if table:
                for event_type in req.event_types:
                    ref = table.get(event_type)
                    if ref is not None and (best is None or ref.order < best.order):
                        best = ref
        if req.actions:
            actions = (
                self.federation_actions if req.request_class is FEDERATION else self.client_actions
            )
            for action in req.actions:
                ref = actions.get(action)
                if ref is not None and (best is None or ref.order < best.order):
                    best = ref
        if (
            self.client is not None
            and req.request_class is CLIENT
            and (req.user_agent is not None or req.ip is not None)
        ):
            matched = self.client.first_match(req.user_agent, req.ip)
            if matched is None:
                gate = self.client_gate
                if gate is not None and (best is None or gate.order < best.order):
                    best = gate
            elif allowed_by is None or matched.order < allowed_by.order:
                allowed_by = matched
        if self.exprs is not None:
            matched = self.exprs.first_match(req, best.order if best is not None else None)
            if matched is not None:
                best = matched
        return best, allowed_by


class CompiledRuleset:
    """Every decision one ruleset version can make, ready for ``decide``.

    Only the rules active at ``now_ms`` (their life span, ``Rule.active``) are compiled in;
    ``next_change`` is the first later instant at which that set changes (None: never), and
    whoever holds the ruleset compiles it again from ``rules`` once that instant is reached
    (``GatewayService.decide`` compares one integer per request).
    """

    def __init__(self, rules: Iterable[Rule], version: int, now_ms: int | None = None) -> None:
        self.version = version
        self.rules = tuple(sorted(rules, key=lambda r: r.sort_key))
        self.now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self.next_change = next_change(self.rules, self.now_ms)
        enabled = [rule for rule in self.rules if rule.enabled and rule.active(self.now_ms)]
        refs = [make_ref(rule, order, version) for order, rule in enumerate(enabled)]
        # Shared by both sets, so an expression is evaluated at most once per request.
        self._memo = ExprMemo() if any(r.rule.kind is Kind.EXPR for r in refs) else None
        self.enforce = CompiledSet.build(
            [r for r in refs if r.rule.mode is Mode.ENFORCE], version, self._memo
        )
        # Audit rules are judged by evaluating every enabled rule as if it were enforced.
        self.prospective = (
            CompiledSet.build(
                [make_ref(r.rule, r.order, version) for r in refs], version, self._memo
            )
            if any(r.rule.mode is Mode.AUDIT for r in refs)
            else None
        )
        self.default_allow = Decision(
            Outcome.ALLOW, None, None, "Allowed: no gateway rule objects", version
        )
        self._malformed: dict[str, Decision] = {}

    def malformed(self, problem: str) -> Decision:
        decision = self._malformed.get(problem)
        if decision is None:
            reason = safe_text(f"Refused by the gateway: {problem}")
            decision = Decision(
                Outcome.BLOCK, MALFORMED_RULE, Mode.ENFORCE, reason, self.version, 403
            )
            if len(self._malformed) < 64:
                self._malformed[problem] = decision
        return decision

    def decide(self, req: RequestInfo) -> Decision:
        if req.malformed is not None:
            return self.malformed(req.malformed)
        if self._memo is not None:
            self._memo.reset()
        blocked, allowed_by = self.enforce.check(req)
        if blocked is not None:
            return blocked.block
        if self.prospective is not None:
            would_block = self.prospective.check(req)[0]
            if would_block is not None:
                return would_block.would_block
        return allowed_by.allow if allowed_by is not None else self.default_allow


def unavailable_decision(version: int) -> Decision:
    return Decision(
        Outcome.BLOCK,
        UNAVAILABLE_RULE,
        Mode.ENFORCE,
        "The gateway cannot load its rules and refuses every request",
        version,
        503,
    )


def compile_ruleset(
    rules: Iterable[Rule], version: int, now_ms: int | None = None
) -> CompiledRuleset:
    return CompiledRuleset(rules, version, now_ms)


def next_change(rules: Iterable[Rule], now_ms: int) -> int | None:
    """The first instant after ``now_ms`` at which a rule starts or stops applying."""
    future = [
        t
        for rule in rules
        for t in (rule.not_before, rule.expires_at)
        if t is not None and t > now_ms
    ]
    return min(future) if future else None


class ExprMemo:
    """What one request's expressions have in common, shared by the enforce and audit sets:
    the request object, its conversion for the runtime, and each rule's result.
    ``CompiledRuleset.decide`` resets it per request (decide is synchronous, so one memo
    per ruleset is enough)."""

    __slots__ = ("bound", "data", "enforced_false", "results")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.data: dict[str, Any] | None = None
        self.bound: Any = None
        self.results: dict[str, bool] = {}
        # Every unguarded enforce-mode expression is known to be false for this request.
        self.enforced_false = False

    def request(self, req: RequestInfo) -> dict[str, Any]:
        if self.data is None:
            self.data = request_data(req, req.at if req.at is not None else time.time())
        return self.data

    def matched(self, req: RequestInfo, ref: Ref) -> bool:
        rule_id = ref.rule.id
        result = self.results.get(rule_id)
        if result is None:
            program = ref.program
            assert program is not None
            data = self.request(req)
            if len(program.guards) > 1 and not guard_passes(program, data):
                result = False
            else:
                if self.bound is None:
                    self.bound = bind(data)
                result = program.run(self.bound)[0]
            self.results[rule_id] = result
        return result


class ExprIndex:
    """expr rules, each skipped for requests its guards exclude (see ``expr.Program.guards``).

    ``first_match(req, before)`` evaluates, in pipeline order, only the expressions that
    come before ``before`` (a blocking rule already found wins over later ones) and whose
    guards admit the request, and stops at the first that is true. The unguarded ones are
    first asked all at once, as one ``(e1) || (e2) || ...`` program: a plain ``false``
    means none of them is true (an error in any would make it an error, never false), so
    the common case costs one call into the runtime instead of one per expression.
    """

    def __init__(self, refs: Sequence[Ref], memo: ExprMemo) -> None:
        self.memo = memo
        self.unguarded: list[Ref] = []
        # field → value → the rules whose first guard is on that field and admits the value.
        self.guarded: dict[str, dict[str, list[Ref]]] = {}
        for ref in refs:
            program = compile_expression(ref.rule.params["expression"])
            ref.program = program
            if program.guards:
                name, values = program.guards[0]
                table = self.guarded.setdefault(name, {})
                for value in values:
                    table.setdefault(value, []).append(ref)
            else:
                self.unguarded.append(ref)
        self._fields = tuple(self.guarded.items())
        self._any = self._compile_any(self.unguarded)
        audited = [ref for ref in self.unguarded if ref.rule.mode is Mode.AUDIT]
        # The audit set holds the enforce set's expressions too: once those are known to be
        # false, only the audit-mode ones are left to ask.
        self._all_enforced = not audited
        self._audited = audited
        self._any_audited = self._compile_any(audited)

    @staticmethod
    def _compile_any(refs: Sequence[Ref]) -> Program | None:
        return compile_any([r.rule.params["expression"] for r in refs]) if len(refs) > 1 else None

    def first_match(self, req: RequestInfo, before: int | None) -> Ref | None:
        memo = self.memo
        if memo.enforced_false:
            candidates, program = self._audited, self._any_audited
        else:
            candidates, program = self.unguarded, self._any
        if program is not None and (before is None or candidates[0].order < before):
            if memo.bound is None:
                memo.bound = bind(memo.request(req))
            if program.run(memo.bound) == (False, False):
                candidates = []
                if self._all_enforced:
                    memo.enforced_false = True
        if self._fields:
            fields = memo.request(req)["request"]
            found: list[Ref] = []
            for name, table in self._fields:
                value = fields[name]
                if value is not None:
                    found += table.get(value, ())
            if found:
                candidates = sorted([*candidates, *found], key=lambda ref: ref.order)
        for ref in candidates:
            if before is not None and ref.order >= before:
                break
            if memo.matched(req, ref):
                return ref
        return None
