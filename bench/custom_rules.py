"""Custom rules benchmark: expression rules in the hot path, and the user lookup's cost.

    .venv/bin/python bench/custom_rules.py [--iterations 50000] [--tokens 60] [--no-synapse]

1. ``decide`` (``GatewayService.decide``, as in ``bench/decisions.py``) at 1,000 rules of the
   fixed kinds, against 1,000 rules of which 100 are ``expr`` rules (90 indexed by a guard
   such as ``request.origin == "..."`` or ``request.user_server == "..."``, 10 unguarded,
   evaluated for every request), and against 100 unguarded expressions (the worst case),
   in one run: p50/p99 and ratios.
2. Against a real Synapse on loopback: the first request of a new access token through the
   gateway proxy with ``user_lookup`` on (one whoami to Synapse, then the request), the
   same token again (from the cache), and each directly against Synapse: p50/p99 and
   ratios to direct. The request is ``GET /_matrix/client/v3/account/whoami``.

The machine is shared with other work: compare the ratios, not the absolute figures.
Writes ``bench/results/custom_rules.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.decisions import _percentiles, sample_requests, synthetic_rules  # noqa: E402
from bench.stats import write_results  # noqa: E402
from dmz_api.config_reader import Section  # noqa: E402
from dmz_api.gateway.config import parse_gateway_config  # noqa: E402
from dmz_api.gateway.decisions import GatewayMetrics  # noqa: E402
from dmz_api.gateway.policy.compile import CompiledRuleset  # noqa: E402
from dmz_api.gateway.policy.matrix_paths import request_info  # noqa: E402
from dmz_api.gateway.policy.model import Mode, RequestInfo, Source  # noqa: E402
from dmz_api.gateway.policy.rules import Kind, Rule, validate_params  # noqa: E402
from dmz_api.gateway.service import GatewayService  # noqa: E402
from dmz_api.metrics import Metrics  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "custom_rules.json"
WHOAMI = "/_matrix/client/v3/account/whoami"


def expression(i: int, guarded: bool) -> str:
    if not guarded:
        return (
            f'request.class == "client" || "org.example.t{i}" in request.event_types'
            " ? request.hour == 25 : false"
        )
    if i % 3 == 0:
        return f'request.origin == "partner{i}.example" && request.weekday >= 6'
    if i % 3 == 1:
        return (
            f'request.user_server == "corp{i}.example"'
            ' && "m.room.encryption" in request.event_types'
            f' && request.user != "@svc:corp{i}.example"'
        )
    return f'request.origin in ["eu{i}.example", "eu{i}.example.org"] && request.hour < 6'


def expression_rules(n_fixed: int, n_guarded: int, n_unguarded: int) -> list[Rule]:
    rules = synthetic_rules(n_fixed)
    for i in range(n_guarded + n_unguarded):
        text = expression(i, i < n_guarded)
        rules.append(
            Rule(
                id=f"e{i:04d}",
                kind=Kind.EXPR,
                params=validate_params(Kind.EXPR, {"expression": text}),
                mode=Mode.AUDIT if i % 10 == 0 else Mode.ENFORCE,
                enabled=True,
                priority=500 + i,
                note="",
                author=None,
                created=0,
                updated=0,
            )
        )
    return rules


def decide_times(rules: list[Rule], iterations: int) -> dict[str, float]:
    config = parse_gateway_config(
        Section({"server_name": "corp.example", "decision_log": {"queue_size": 1_000_000}})
    )
    service = GatewayService(config, store=None, metrics=GatewayMetrics(Metrics()))  # type: ignore[arg-type]
    service.install(CompiledRuleset(rules, version=1))
    raw = sample_requests(2000)
    infos: list[RequestInfo] = []
    for n, (m, p, a, ua, ip) in enumerate(raw):
        info = request_info(m, p, a, user_agent=ua, ip=ip, source=Source.PROXY)
        if info.origin is None:
            info.user = f"@u{n}:corp{n % 300}.example"  # as the user lookup would set it
        infos.append(info)
    for info in infos:
        service.decide(info)
    service.decision_log.drain()
    samples: list[int] = []
    clock = time.perf_counter_ns
    for i in range(iterations):
        info = infos[i % len(infos)]
        start = clock()
        service.decide(info)
        samples.append(clock() - start)
        if i % 10_000 == 0:
            service.decision_log.drain()
    service.decision_log.drain()
    return {k: round(v, 2) for k, v in _percentiles(samples).items()}


def decisions(iterations: int) -> dict[str, Any]:
    fixed = decide_times(expression_rules(1000, 0, 0), iterations)
    mixed = decide_times(expression_rules(900, 90, 10), iterations)
    worst = decide_times(expression_rules(900, 0, 100), iterations)
    return {
        "fixed_1000": fixed,
        "expr_100_of_1000": mixed,
        "expr_100_unguarded_of_1000": worst,
        "ratio_expr_to_fixed": {
            "p50": round(mixed["p50_us"] / fixed["p50_us"], 2),
            "p99": round(mixed["p99_us"] / fixed["p99_us"], 2),
        },
        "ratio_unguarded_to_fixed": {
            "p50": round(worst["p50_us"] / fixed["p50_us"], 2),
            "p99": round(worst["p99_us"] / fixed["p99_us"], 2),
        },
        "target_p99_us": 50,
    }


async def _lookup_latency(synapse_url: str, proxy_url: str, tokens: list[str]) -> dict[str, Any]:
    import aiohttp

    async def timed(session: aiohttp.ClientSession, base: str, token: str) -> int:
        start = time.perf_counter_ns()
        async with session.get(base + WHOAMI, headers={"Authorization": f"Bearer {token}"}) as r:
            await r.read()
            assert r.status == 200, r.status
        return time.perf_counter_ns() - start

    # Two pools of tokens nobody has used yet: one for Synapse directly, one through the
    # proxy, so that each "new token" figure includes Synapse's own first look-up of it.
    half = len(tokens) // 2
    direct_pool, proxy_pool = tokens[1:half], tokens[half:]
    samples: dict[str, list[int]] = {k: [] for k in ("direct_new", "direct_again", "new", "again")}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for _ in range(3):  # warm both connection pools
            await timed(session, synapse_url, tokens[0])
            await timed(session, proxy_url, tokens[0])
        for direct_token, proxy_token in zip(direct_pool, proxy_pool, strict=False):
            samples["direct_new"].append(await timed(session, synapse_url, direct_token))
            samples["direct_again"].append(await timed(session, synapse_url, direct_token))
            samples["new"].append(await timed(session, proxy_url, proxy_token))
            samples["again"].append(await timed(session, proxy_url, proxy_token))
    p = {k: _percentiles(v) for k, v in samples.items()}

    def ms(name: str) -> dict[str, float]:
        return {k.replace("_us", "_ms"): round(v / 1000, 3) for k, v in p[name].items()}

    return {
        "requests_each": len(samples["new"]),
        "direct_new_token_ms": ms("direct_new"),
        "direct_known_token_ms": ms("direct_again"),
        "proxy_new_token_ms": ms("new"),
        "proxy_cached_token_ms": ms("again"),
        "ratio_proxy_to_direct": {
            "new_p50": round(p["new"]["p50_us"] / p["direct_new"]["p50_us"], 2),
            "new_p99": round(p["new"]["p99_us"] / p["direct_new"]["p99_us"], 2),
            "cached_p50": round(p["again"]["p50_us"] / p["direct_again"]["p50_us"], 2),
            "cached_p99": round(p["again"]["p99_us"] / p["direct_again"]["p99_us"], 2),
        },
    }


def user_lookup(workdir: Path, n_tokens: int) -> dict[str, Any]:
    from urllib.parse import quote

    from devstack.dmz import DmzApi
    from devstack.ports import free_port
    from devstack.synapse import Synapse

    with Synapse(workdir / "synapse", name="bench") as hs:
        local = f"bench{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        hs.register_user(local, password)
        status, body = hs.admin(
            "POST",
            f"/_synapse/admin/v1/users/{quote(hs.user_id(local))}/override_ratelimit",
            {"messages_per_second": 0, "burst_count": 0},
        )
        assert status == 200, body
        # Each admin login is a new access token for the user: the gateway has never seen it.
        tokens = []
        for _ in range(n_tokens + 1):
            status, body = hs.admin(
                "POST", f"/_synapse/admin/v1/users/{quote(hs.user_id(local))}/login", {}
            )
            assert status == 200, body
            tokens.append(body["access_token"])
        proxy_port = free_port()
        dmz = DmzApi(
            workdir / "dmz_api",
            {
                "log_level": "WARNING",
                "gateway": {
                    "server_name": hs.server_name,
                    "upstream": hs.base_url,
                    "listen": {"host": "127.0.0.1", "port": proxy_port},
                    "user_lookup": {"enabled": True},
                },
            },
            name="dmz_api-bench-lookup",
        ).start()
        try:
            return asyncio.run(
                _lookup_latency(hs.base_url, f"http://127.0.0.1:{proxy_port}", tokens)
            )
        finally:
            dmz.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50_000)
    parser.add_argument("--tokens", type=int, default=120, help="new access tokens (admin logins)")
    parser.add_argument("--no-synapse", action="store_true", help="decisions only")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    result: dict[str, Any] = {"decide_us": decisions(args.iterations)}
    if not args.no_synapse:
        with tempfile.TemporaryDirectory(prefix="bench-custom-rules-") as tmp:
            result["user_lookup"] = user_lookup(Path(tmp), args.tokens)
    result["duration_s"] = round(time.monotonic() - started, 1)
    result["machine"] = {
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_1min_before": round(load_before, 2),
        "note": "shared machine: other helpers' work runs at the same time",
    }
    write_results(RESULTS, result)
    d = result["decide_us"]
    for name in ("fixed_1000", "expr_100_of_1000", "expr_100_unguarded_of_1000"):
        print(f"decide {name:28} p50 {d[name]['p50_us']:6.2f} µs  p99 {d[name]['p99_us']:6.2f} µs")
    print(f"ratio expr/fixed: {d['ratio_expr_to_fixed']}")
    print(f"ratio unguarded/fixed: {d['ratio_unguarded_to_fixed']}")
    if "user_lookup" in result:
        u = result["user_lookup"]
        for name in (
            "direct_new_token_ms",
            "proxy_new_token_ms",
            "direct_known_token_ms",
            "proxy_cached_token_ms",
        ):
            print(f"{name:22} p50 {u[name]['p50_ms']:.2f} ms  p99 {u[name]['p99_ms']:.2f} ms")
        print(f"ratio proxy/direct: {u['ratio_proxy_to_direct']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
