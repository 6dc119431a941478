"""Micro-benchmark of the decision hot path (``GatewayService.decide``), no I/O.

``decide_benchmark(n_rules)`` builds a synthetic ruleset of every kind (exact and glob
server names, event types, partner scopes, client user-agent regexes and networks), then
times ``decide`` (decision plus queuing the log record) over a mix of federation and client
requests, and separately ``request_info`` (path classification) plus ``decide``. Used by
``bench/gateway.py``; run alone with ``python -m bench.decisions``.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from typing import Any

from dmz_api.config_reader import Section
from dmz_api.gateway.config import parse_gateway_config
from dmz_api.gateway.decisions import GatewayMetrics
from dmz_api.gateway.policy.compile import CompiledRuleset
from dmz_api.gateway.policy.matrix_paths import request_info
from dmz_api.gateway.policy.model import Mode, RequestInfo, Source
from dmz_api.gateway.policy.rules import Kind, Rule, validate_params
from dmz_api.gateway.service import GatewayService
from dmz_api.metrics import Metrics

_TYPES = ["m.room.message", "m.reaction", "m.room.member", "m.room.name", "m.room.topic"]
_AGENTS = [
    "Element/1.11.50 (iPhone; iOS 17.1)",
    "Mozilla/5.0 (X11; Linux x86_64) Element Desktop/1.11.50",
    "curl/8.4.0",
    "mautrix-python/0.21",
]


def synthetic_rules(n: int, seed: int = 7) -> list[Rule]:
    """``n`` valid rules of every kind, most in enforce mode, a few in audit or disabled."""
    rng = random.Random(seed)
    rules: list[Rule] = []
    for i in range(n):
        pick = i % 10
        kind: Kind
        params: dict[str, Any]
        if pick in (0, 1, 2, 3):
            kind, params = Kind.SERVER_BLOCK, {"servers": [f"blocked{i}.example", f"*.bad{i}.net"]}
        elif pick in (4, 5):
            kind = Kind.SERVER_ALLOW
            params = {
                "servers": [f"partner{i}.example", f"*.partner{i}.org", f"hs{i}-??.corp.test"]
            }
        elif pick == 6:
            kind = Kind.EVENT_TYPE_BLOCK
            params = {
                "event_types": [f"org.example.custom{i}", "m.room.encryption"],
                "scope": "both",
            }
        elif pick == 7:
            kind = Kind.PARTNER_SCOPE
            params = {
                "servers": [f"partner{i - 3}.example"],
                "rooms": [f"!room{i}:corp.example"],
                "event_types": ["m.room.member", "m.room.message"],
            }
        elif pick == 8:
            kind = Kind.CLIENT_ALLOW
            params = {"networks": [f"10.{i % 250}.{rng.randrange(250)}.0/24"]}
        else:
            kind = Kind.CLIENT_ALLOW
            params = {"user_agents": [f"^Element/1\\.{i}\\.", f"Bastion{i}"]}
        rules.append(
            Rule(
                id=f"r{i:05d}",
                kind=kind,
                params=validate_params(kind, params),
                mode=Mode.AUDIT if i % 17 == 0 else Mode.ENFORCE,
                enabled=i % 23 != 0,
                priority=rng.randrange(1000),
                note="",
                author="@bench:corp.example",
                created=0,
                updated=0,
            )
        )
    # The traffic's own partners and clients, so that most requests are allowed.
    rules.append(_rule("allow-partners", Kind.SERVER_ALLOW, {"servers": ["*.partner.example"]}))
    rules.append(_rule("allow-element", Kind.CLIENT_ALLOW, {"user_agents": ["Element"]}))
    return rules


def _rule(rule_id: str, kind: Kind, params: dict[str, Any]) -> Rule:
    return Rule(
        rule_id, kind, validate_params(kind, params), Mode.ENFORCE, True, 50, "", None, 0, 0
    )


def sample_requests(count: int, seed: int = 11) -> list[tuple[str, str, list[str], str, str]]:
    """(method, raw path, Authorization values, User-Agent, ip) of a realistic request mix."""
    rng = random.Random(seed)
    requests: list[tuple[str, str, list[str], str, str]] = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.45:
            origin = rng.choice(
                ["hs1.partner.example", "hs2.partner.example", "blocked4.example", "evil.test"]
            )
            auth = [f'X-Matrix origin="{origin}",key="ed25519:a",sig="c2lnbmF0dXJl"']
            path = rng.choice(
                [
                    f"/_matrix/federation/v1/send/{i}",
                    f"/_matrix/federation/v2/send_join/!room{i % 50}:corp.example/$ev{i}",
                    f"/_matrix/federation/v1/make_join/!room7:corp.example/@u{i}:{origin}",
                    "/_matrix/federation/v1/query/profile?user_id=%40a%3Acorp.example",
                ]
            )
            requests.append(("PUT", path, auth, "Synapse/1.163", "192.0.2.10"))
        else:
            event_type = rng.choice([*_TYPES, "m.room.encryption"])
            path = rng.choice(
                [
                    f"/_matrix/client/v3/rooms/!room{i % 50}:corp.example/send/{event_type}/t{i}",
                    f"/_matrix/client/v3/rooms/!room{i % 50}:corp.example/state/{event_type}/",
                    "/_matrix/client/v3/sync?since=s1_2_3&timeout=30000",
                ]
            )
            requests.append(("PUT", path, [], rng.choice(_AGENTS), f"10.0.{i % 250}.{i % 200}"))
    return requests


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    samples = sorted(samples_ns)
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_us": q[49] / 1000,
        "p99_us": q[98] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
        "max_us": samples[-1] / 1000,
    }


def make_service(n_rules: int) -> GatewayService:
    config = parse_gateway_config(
        Section({"server_name": "corp.example", "decision_log": {"queue_size": 1_000_000}})
    )
    service = GatewayService(config, store=None, metrics=GatewayMetrics(Metrics()))  # type: ignore[arg-type]
    service.install(CompiledRuleset(synthetic_rules(n_rules), version=1))
    return service


def decide_benchmark(n_rules: int, iterations: int = 50_000) -> dict[str, float]:
    """p50/p99/mean/max in µs of ``decide`` alone and of ``request_info`` + ``decide``."""
    service = make_service(n_rules)
    raw = sample_requests(2000)
    infos: list[RequestInfo] = [
        request_info(m, p, a, user_agent=ua, ip=ip, source=Source.PROXY) for m, p, a, ua, ip in raw
    ]
    for info in infos:  # warm the per-origin and per-client caches, as traffic would
        service.decide(info)
    service.decision_log.drain()
    decide_ns: list[int] = []
    full_ns: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(iterations):
        info = infos[i % len(infos)]
        start = clock()
        service.decide(info)
        decide_ns.append(clock() - start)
        method, path, auth, ua, ip = raw[i % len(raw)]
        start = clock()
        service.decide(request_info(method, path, auth, user_agent=ua, ip=ip))
        full_ns.append(clock() - start)
        if i % 10_000 == 0:
            service.decision_log.drain()
    service.decision_log.drain()
    result = {f"decide_{k}": v for k, v in _percentiles(decide_ns).items()}
    result.update({f"classify_decide_{k}": v for k, v in _percentiles(full_ns).items()})
    result["rules"] = float(n_rules)
    result["dropped"] = float(service.decision_log.dropped)
    return result


def main() -> int:
    for n in (10, 1000):
        r = decide_benchmark(n)
        print(
            f"{n:>5} rules: decide p50 {r['decide_p50_us']:.1f} µs,"
            f" p99 {r['decide_p99_us']:.1f} µs;"
            f" classify+decide p50 {r['classify_decide_p50_us']:.1f} µs,"
            f" p99 {r['classify_decide_p99_us']:.1f} µs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
