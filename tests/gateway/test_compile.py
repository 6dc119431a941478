"""The compiled evaluator against the reference one, on random rulesets and requests."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from bench.decisions import decide_benchmark, synthetic_rules
from dmz_api.gateway.policy.compile import CompiledRuleset, ServerIndex, make_ref
from dmz_api.gateway.policy.evaluate import explain, server_matches
from dmz_api.gateway.policy.model import RequestClass, RequestInfo, Source
from dmz_api.gateway.policy.rules import Kind

from .conftest import make_rule

SERVERS = [
    "a.example",
    "b.example",
    "x.a.example",
    "localhost:8448",
    "localhost:8449",
    "hs-01.corp.test",
    "[::1]:8448",
    "evil.test",
]
PATTERNS = [
    "a.example",
    "*.a.example",
    "*.example",
    "localhost:8448",
    "localhost",
    "hs-??.corp.test",
    "*",
    "evil.*",
    "[::1]:8448",
    "localhost:*",
    "b.example:8448",
]
TYPES = ["m.room.message", "m.room.encryption", "m.room.member", "m.reaction"]
ROOMS = ["!one:corp", "!two:corp"]
AGENTS = ["Element/1.2", "curl/8", "", "Element Desktop", None]
USERS = ["@alice:corp", "@svc:corp", "@bob:a.example", None]
NOW = 1_800_000_000_000
# Guarded (indexed) and unguarded expressions, and ones that fail at run time (they match).
EXPRESSIONS = [
    'request.origin == "a.example" && "m.room.encryption" in request.event_types',
    'request.origin in ["b.example", "evil.test"] && request.room != "!one:corp"',
    'request.class == "client" && request.user_server == "corp" && request.user != "@svc:corp"',
    '"m.reaction" in request.event_types || request.ip == "10.0.0.1"',
    'request.user_agent.startsWith("curl")',
    'request.weekday >= 6 && request.origin == "a.example"',
    '(request.room == "!two:corp") && request.origin in ["a.example", "x.a.example"]',
    'request.origin == "a.example" && request.origin == "b.example"',
    "request.hour < 0",
]
IPS = ["10.0.0.1", "10.1.0.1", "192.168.1.9", "::ffff:10.0.0.7", "2001:db8::1", None, "bogus"]


def random_rule(rng: random.Random, index: int) -> Any:
    kind = rng.choice(list(Kind))
    params: dict[str, Any]
    if kind in (Kind.SERVER_ALLOW, Kind.SERVER_BLOCK):
        params = {"servers": rng.sample(PATTERNS, rng.randint(1, 3))}
    elif kind is Kind.CLIENT_ALLOW:
        params = {}
        if rng.random() < 0.7:
            params["user_agents"] = rng.sample(
                ["^Element", "Desktop", "curl", "^$"], rng.randint(1, 2)
            )
        if not params or rng.random() < 0.5:
            params["networks"] = rng.sample(
                ["10.0.0.0/16", "192.168.0.0/16", "2001:db8::/32"], rng.randint(1, 2)
            )
    elif kind is Kind.EVENT_TYPE_BLOCK:
        params = {
            "event_types": rng.sample(TYPES, rng.randint(1, 2)),
            "scope": rng.choice(["client", "federation", "both"]),
        }
    elif kind is Kind.EXPR:
        params = {"expression": rng.choice(EXPRESSIONS)}
    else:
        params = {"servers": rng.sample(PATTERNS, rng.randint(1, 2))}
        if rng.random() < 0.6:
            params["rooms"] = rng.sample(ROOMS, 1)
        if "rooms" not in params or rng.random() < 0.5:
            params["event_types"] = rng.sample(TYPES, rng.randint(1, 3))
    rule = make_rule(
        f"r{index}",
        kind,
        params,
        mode=rng.choice(["audit", "enforce", "enforce"]),
        enabled=rng.random() < 0.9,
        priority=rng.randint(0, 5),
    )
    # Life spans around NOW: some not yet in force, some expired, most unbounded.
    if rng.random() < 0.3:
        start, end = sorted(rng.sample([NOW - 2000, NOW - 1000, NOW + 1000, NOW + 2000], 2))
        rule = replace(
            rule,
            not_before=rng.choice([start, None]),
            expires_at=rng.choice([end, None]),
        )
    return rule


def random_request(rng: random.Random) -> RequestInfo:
    request_class = rng.choice(list(RequestClass))
    origin = rng.choice([*SERVERS, None]) if request_class is RequestClass.FEDERATION else None
    if request_class is RequestClass.CLIENT and rng.random() < 0.1:
        origin = rng.choice(SERVERS)  # an invite of a remote user
    return RequestInfo(
        request_class,
        "PUT",
        "/x",
        origin=origin,
        event_types=tuple(rng.sample(TYPES, rng.randint(0, 2))),
        room=rng.choice([*ROOMS, None]),
        user_agent=rng.choice(AGENTS),
        ip=rng.choice(IPS),
        public=rng.random() < 0.1,
        source=rng.choice(list(Source)),
        user=rng.choice(USERS),
        at=rng.choice([NOW / 1000, NOW / 1000 + 3 * 86400]),
    )


@pytest.mark.parametrize("seed", range(40))
def test_compiled_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    rules = [random_rule(rng, i) for i in range(rng.randint(0, 14))]
    compiled = CompiledRuleset(rules, seed, NOW)
    for _ in range(150):
        req = random_request(rng)
        expected = explain(rules, req, seed, NOW).decision
        assert compiled.decide(req) == expected, (rules, req)
        # Cached per origin and per client: a second look gives the same answer.
        assert compiled.decide(req) == expected


def test_server_index_matches_reference() -> None:
    refs = [
        (pattern, make_ref(make_rule(f"r{i}", "server_block", {"servers": [pattern]}), i, 1))
        for i, pattern in enumerate(PATTERNS)
    ]
    index = ServerIndex(refs)
    for name in [*SERVERS, "A.EXAMPLE", "q.x.a.example:1", "localhost", "example"]:
        expected = [ref.rule.id for pattern, ref in refs if server_matches(pattern, name)]
        assert [ref.rule.id for ref in index.matches(name)] == expected, name


def test_caches_are_bounded() -> None:
    rules = [
        make_rule("a", "server_allow", {"servers": ["*.example"]}),
        make_rule("c", "client_allow", {"user_agents": ["^Element"]}),
    ]
    compiled = CompiledRuleset(rules, 1)
    for i in range(20_000):
        compiled.decide(RequestInfo(RequestClass.FEDERATION, "GET", "/x", origin=f"h{i}.test"))
        compiled.decide(
            RequestInfo(
                RequestClass.CLIENT, "GET", "/x", user_agent=f"ua{i}", ip=f"10.0.{i % 256}.1"
            )
        )
    assert len(compiled.enforce._views) <= 8192
    assert compiled.enforce.client is not None and len(compiled.enforce.client._ua_cache) <= 8192


def test_rules_sorted_once_by_priority_then_id() -> None:
    rules = [
        make_rule("b", "server_block", {"servers": ["x"]}, priority=2),
        make_rule("c", "server_block", {"servers": ["x"]}, priority=1),
        make_rule("a", "server_block", {"servers": ["x"]}, priority=2),
    ]
    assert [r.id for r in CompiledRuleset(rules, 1).rules] == ["c", "a", "b"]


def test_synthetic_ruleset_compiles() -> None:
    compiled = CompiledRuleset(synthetic_rules(1000), 1)
    assert len(compiled.rules) == 1002 and compiled.prospective is not None


def test_decide_benchmark_runs_at_1000_rules() -> None:
    # Speed itself is reported by `make bench` (bench/gateway.py), not asserted here: a
    # shared CI machine once put p99 at 57 µs against a usual 6 µs. This checks that the
    # benchmark measures what it says: every decision logged, percentiles in order.
    result = decide_benchmark(1000, iterations=2000)
    assert result["dropped"] == 0 and result["rules"] == 1000
    for measured in ("decide", "classify_decide"):
        p50, p99, top = (result[f"{measured}_{k}_us"] for k in ("p50", "p99", "max"))
        assert 0 < p50 <= p99 <= top, result
