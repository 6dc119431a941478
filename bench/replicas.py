"""Rule-change propagation between gateway replicas sharing one PostgreSQL database.

    .venv/bin/python bench/replicas.py [--changes 60]

Starts a throwaway PostgreSQL cluster and three ``GatewayService`` replicas on one
database: a writer, a reader that hears changes through LISTEN/NOTIFY (as deployed), and
a reference reader that only polls the stored version every ``reload_interval`` (1 s, the
default: what every replica did before, and what SQLite replicas still do). For each rule
change the writer commits, at a random moment of the polling cycle, it times how long
after the commit returned each reader enforces the new version. Also times a bare
``SELECT 1`` round trip on the same database (the floor). Prints p50/p99 and the ratios,
and writes ``bench/results/replicas.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mautrix.util.async_db import Database  # noqa: E402

from bench.stats import summary, write_results  # noqa: E402
from devstack.postgres import Postgres  # noqa: E402
from dmz_api.config_reader import Section  # noqa: E402
from dmz_api.gateway.config import parse_gateway_config  # noqa: E402
from dmz_api.gateway.decisions import GatewayMetrics  # noqa: E402
from dmz_api.gateway.migrations import upgrade_table  # noqa: E402
from dmz_api.gateway.service import GatewayService  # noqa: E402
from dmz_api.gateway.store import RuleStore  # noqa: E402
from dmz_api.metrics import Metrics  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "replicas.json"


class PollingOnlyStore(RuleStore):
    """The reference: a replica that never listens, only polls."""

    @property
    def notifies(self) -> bool:
        return False


def replica(db: Database, store_type: type[RuleStore] = RuleStore) -> GatewayService:
    config = parse_gateway_config(Section({"server_name": "corp.example"}))
    return GatewayService(config, store_type(db), GatewayMetrics(Metrics()))


async def until_version(gateway: GatewayService, version: int, started: float) -> float:
    while gateway.version != version:
        if time.perf_counter() - started > 10:
            raise RuntimeError(f"a replica did not reach version {version} in 10 s")
        await asyncio.sleep(0.0005)
    return time.perf_counter() - started


async def measure(url: str, changes: int) -> dict[str, Any]:
    db = Database.create(url, upgrade_table=upgrade_table)
    await db.start()
    writer, listening, polling = replica(db), replica(db), replica(db, PollingOnlyStore)
    for gateway in (writer, listening, polling):
        await gateway.start()
    try:
        await asyncio.sleep(0.5)  # the listener's connection is up
        round_trips = []
        for _ in range(changes):
            started = time.perf_counter()
            await db.fetchval("SELECT 1")
            round_trips.append(time.perf_counter() - started)
        notified: list[float] = []
        polled: list[float] = []
        rng = random.Random(1)
        for i in range(changes):
            # A random phase against the polling replica's 1 s cycle (right after a poll,
            # every change would wait the whole interval).
            await asyncio.sleep(rng.uniform(0, 1))
            result = await writer.add_rule(
                {"kind": "server_block", "params": {"servers": [f"s{i}.example"]}}, author=None
            )
            started = time.perf_counter()
            heard, seen = await asyncio.gather(
                until_version(listening, result.version, started),
                until_version(polling, result.version, started),
            )
            notified.append(heard)
            polled.append(seen)
    finally:
        for gateway in (writer, listening, polling):
            await gateway.stop()
        await db.stop()
    listen, poll, floor = summary(notified), summary(polled), summary(round_trips)
    return {
        "changes": changes,
        "listen_notify": listen,
        "polling_1s": poll,
        "select_1_round_trip": floor,
        "ratio_listen_to_polling": {
            "p50": round(listen["p50_ms"] / poll["p50_ms"], 4),
            "p99": round(listen["p99_ms"] / poll["p99_ms"], 4),
        },
        "ratio_listen_to_round_trip": {
            "p50": round(listen["p50_ms"] / floor["p50_ms"], 2),
            "p99": round(listen["p99_ms"] / floor["p99_ms"], 2),
        },
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--changes",
        type=int,
        default=60,
        help="rule changes to time (each waits for the polling replica: ≈ 0.5 s)",
    )
    args = parser.parse_args(argv)
    with Postgres() as cluster:
        url = asyncio.run(cluster.new_database())
        result = asyncio.run(measure(url, args.changes))
    rows = [
        ("LISTEN/NOTIFY replica", result["listen_notify"]),
        ("polling-only replica (1 s)", result["polling_1s"]),
        ("SELECT 1 round trip", result["select_1_round_trip"]),
    ]
    print(f"rule change → another replica enforces it ({args.changes} changes, PostgreSQL)")
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, data in rows:
        print(f"{name:28} {data['p50_ms']:>8.2f} {data['p99_ms']:>8.2f} {data['max_ms']:>8.2f}")
    ratio = result["ratio_listen_to_polling"]
    floor = result["ratio_listen_to_round_trip"]
    print(f"LISTEN/NOTIFY vs polling: p50 {ratio['p50']:.3f}x, p99 {ratio['p99']:.3f}x")
    print(f"LISTEN/NOTIFY vs one round trip: p50 {floor['p50']:.1f}x, p99 {floor['p99']:.1f}x")
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
