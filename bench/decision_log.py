"""Decision log benchmark: bytes per decision in each mode, proxy throughput with the log
in each mode against the log idle, and a bounded soak on SQLite and on PostgreSQL.

    .venv/bin/python bench/decision_log.py [--seconds 10] [--connections 64]
        [--soak-seconds 600] [--engines sqlite,postgres]

On loopback: the trivial upstream of ``bench/gateway.py`` and ``python -m dmz_api`` with the
gateway proxy; ``wrk`` (one thread, 64 connections) sends ``PUT .../send/...``, every fourth
of them of an event type an ``event_type_block`` rule refuses (403), so a quarter are blocks.

* **Row sizes**: 10,000 full records and 10,000 allow aggregates (distinct users) written
  in-process to fresh SQLite files: bytes on disk per row.
* **Modes**: one gateway per mode on a fresh SQLite file: ``idle`` (records queued, never
  written during the run: the reference), ``aggregate`` and ``full``. Throughput as a
  ratio to idle, and bytes the database grew per 1,000 decisions (after the gateway stops
  and flushes).
* **Soak** (``--soak-seconds``, default 600; one run each): the proxy at saturation (the
  same wrk load), default config (``allow: aggregate``), on SQLite and on a PostgreSQL
  started by devstack: RSS at start, mid and end, rows and bytes, dropped count (must be
  0), then one retention pass on the largest table timed (SQLite: batched deletes of the
  first half; PostgreSQL: drop of the day partitions holding the soak).

Prints a table and writes ``bench/results/decision_log.json``. Figures from one run on a
shared 2-core machine: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import WRK, metric, run_wrk, start_upstream  # noqa: E402
from bench.stats import write_results  # noqa: E402
from devstack.dmz import DmzApi  # noqa: E402
from devstack.ports import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "decision_log.json"
ROOM = "!bench:corp.example"
# Three allowed sends, then one the rule refuses: a quarter of requests are blocks.
WRK_SCRIPT = f"""
local n = 0
request = function()
  n = n + 1
  local kind = (n % 4 == 0) and "m.bench.blocked" or "m.room.message"
  return wrk.format("PUT", "/_matrix/client/v3/rooms/{ROOM}/send/" .. kind .. "/t" .. n,
    {{["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer syt_YmVuY2g_benchmarktoken_0000",
      ["User-Agent"] = "Element/1.11.50 (bench)"}},
    '{{"msgtype":"m.text","body":"hello from the decision log benchmark"}}')
end
"""
BLOCK_RULE = {
    "kind": "event_type_block",
    "params": {"event_types": ["m.bench.blocked"]},
    "note": "a quarter of the benchmark's requests",
}
MODES: dict[str, dict[str, Any]] = {
    # The reference: records are queued as usual but the writer never runs in the window.
    "idle": {"flush_interval": 3600, "batch_size": 100_000, "queue_size": 10_000_000},
    "aggregate": {"allow": "aggregate"},
    "full": {"allow": "full"},
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def sqlite_bytes(path: Path) -> int:
    """Bytes the database's pages hold (committed data, WAL included; free pages not)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return int((pages - free) * size)


def start_gateway(
    workdir: Path, upstream_port: int, decision_log: dict[str, Any], database: str | None = None
) -> DmzApi:
    config: dict[str, Any] = {
        "log_level": "WARNING",
        "server": {"event_loop": "uvloop"},
        "gateway": {
            "server_name": "corp.example",
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "listen": {"host": "127.0.0.1", "port": free_port()},
            "decision_log": decision_log,
        },
    }
    if database is not None:
        config["database"] = database
    dmz = DmzApi(workdir, config, name="dmz_api-bench-log").start()
    status, body = dmz.call("POST", "/v1/rules", BLOCK_RULE, acting_user="@bench:corp.example")
    assert status == 201, (status, body)
    return dmz


def proxy_url(dmz: DmzApi) -> str:
    return f"http://127.0.0.1:{dmz.config['gateway']['listen']['port']}"


# ---- row sizes (in-process) --------------------------------------------------------------


async def row_sizes(workdir: Path, rows: int = 10_000) -> dict[str, float]:
    from mautrix.util.async_db import Database

    from dmz_api.gateway.migrations import upgrade_table
    from dmz_api.gateway.store import RuleStore

    now = int(time.time() * 1000)
    sizes: dict[str, float] = {}
    for kind in ("record", "aggregate"):
        path = workdir / f"rows-{kind}.db"
        db = Database.create(f"sqlite:{path}", upgrade_table=upgrade_table)
        await db.start()
        store = RuleStore(db)
        await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        empty = sqlite_bytes(path)
        for start in range(0, rows, 1000):
            if kind == "record":
                await store.insert_decisions(
                    [
                        (now + n, "proxy", "client", None, f"@user{n % 500}:corp.example", "PUT",
                         f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/t{n}",
                         "m.room.message", ROOM, "r7f3a9c21", "enforce", "block", 12, 42,
                         None, None, None)
                        for n in range(start, start + 1000)
                    ]
                )  # fmt: skip
            else:
                await store.insert_allows(
                    [
                        (now - now % 60_000, "proxy", "client", None, f"@user{n}:corp.example",
                         "PUT", "client_send", ROOM, 42, 37)
                        for n in range(start, start + 1000)
                    ]
                )  # fmt: skip
        await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await db.stop()
        sizes[f"bytes_per_{kind}"] = round((sqlite_bytes(path) - empty) / rows, 1)
    return sizes


# ---- modes -----------------------------------------------------------------------------


def run_mode(
    name: str, workdir: Path, upstream_port: int, script: Path, args: argparse.Namespace
) -> dict[str, Any]:
    mode_dir = workdir / f"mode-{name}"
    dmz = start_gateway(mode_dir, upstream_port, MODES[name])
    db_path = mode_dir / "dmz_api.db"
    try:
        run_wrk(proxy_url(dmz), script, args.warmup, args.connections)
        time.sleep(1.0)
        before_decisions = metric(dmz, "dmz_api_gateway_decisions_total")
        before_bytes = sqlite_bytes(db_path)
        result = run_wrk(proxy_url(dmz), script, args.seconds, args.connections)
        decisions = metric(dmz, "dmz_api_gateway_decisions_total") - before_decisions
        blocks = metric(dmz, 'dmz_api_gateway_decisions_total{outcome="block"}')
        dropped = metric(dmz, "dmz_api_gateway_decisions_dropped_total")
    finally:
        dmz.stop()  # the writer flushes what is left, aggregates included
    grown = sqlite_bytes(db_path) - before_bytes
    return {
        "requests_per_s": result["requests_per_s"],
        "p99_ms": result["p99_ms"],
        "decisions": int(decisions),
        "blocks_total": int(blocks),
        "dropped": int(dropped),
        "bytes_per_1000_decisions": round(grown / decisions * 1000) if name != "idle" else None,
    }


# ---- soak ------------------------------------------------------------------------------


async def _pg_sizes(url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        size = await conn.fetchval(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " WHERE c.relname LIKE 'gateway_decision%' AND c.relkind IN ('r', 'p')"
        )
        return {"bytes": int(size)}
    finally:
        await conn.close()


async def _counts(database: str) -> dict[str, int]:
    from mautrix.util.async_db import Database

    from dmz_api.gateway.migrations import upgrade_table

    db = Database.create(database, upgrade_table=upgrade_table)
    await db.start()
    try:
        return {
            "records": int(await db.fetchval("SELECT count(*) FROM gateway_decisions")),
            "blocks": int(
                await db.fetchval("SELECT count(*) FROM gateway_decisions WHERE outcome='block'")
            ),
            "aggregate_rows": int(
                await db.fetchval("SELECT count(*) FROM gateway_decision_allows")
            ),
            "allows_counted": int(
                await db.fetchval("SELECT COALESCE(SUM(count), 0) FROM gateway_decision_allows")
            ),
        }
    finally:
        await db.stop()


async def _retention(database: str, cutoff: int) -> dict[str, Any]:
    from mautrix.util.async_db import Database

    from dmz_api.gateway.migrations import upgrade_table
    from dmz_api.gateway.store import RuleStore

    db = Database.create(database, upgrade_table=upgrade_table)
    await db.start()
    try:
        started = time.monotonic()
        pruned = await RuleStore(db).prune_decisions(cutoff)
        return {
            "seconds": round(time.monotonic() - started, 2),
            "records_removed": pruned.decisions,
            "aggregates_removed": pruned.allows,
            "partitions_dropped": len(pruned.partitions),
        }
    finally:
        await db.stop()


def soak(
    engine: str, workdir: Path, upstream_port: int, script: Path, args: argparse.Namespace
) -> dict[str, Any]:
    soak_dir = workdir / f"soak-{engine}"
    postgres = None
    if engine == "postgres":
        from devstack.postgres import Postgres

        postgres = Postgres().start()
        database = asyncio.run(postgres.new_database())
    else:
        database = f"sqlite:{soak_dir / 'dmz_api.db'}"
    try:
        dmz = start_gateway(soak_dir, upstream_port, {}, database)
        pid = dmz.process.proc.pid
        try:
            memory = {"start": rss_mb(pid)}
            started_ms = int(time.time() * 1000)
            wrk = subprocess.Popen(
                [WRK, "-t1", f"-c{args.connections}", f"-d{args.soak_seconds:g}s",
                 "--timeout", "10s", "-s", str(script), proxy_url(dmz)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(args.soak_seconds / 2)
            memory["mid"] = rss_mb(pid)
            mid_ms = int(time.time() * 1000)
            output, _ = wrk.communicate(timeout=args.soak_seconds + 60)
            memory["end"] = rss_mb(pid)
            decisions = metric(dmz, "dmz_api_gateway_decisions_total")
            dropped = metric(dmz, "dmz_api_gateway_decisions_dropped_total")
        finally:
            dmz.stop()
        requests = int(output.split(" requests in", 1)[0].rsplit(None, 1)[-1])
        counts = asyncio.run(_counts(database))
        if engine == "sqlite":
            size = sqlite_bytes(soak_dir / "dmz_api.db")
            cutoff = mid_ms  # the first half, in batches of 5,000
        else:
            size = asyncio.run(_pg_sizes(database))["bytes"]
            cutoff = (started_ms // 86_400_000 + 2) * 86_400_000  # whole days: the partitions
        retention = asyncio.run(_retention(database, cutoff))
    finally:
        if postgres is not None:
            postgres.stop()
    return {
        "seconds": args.soak_seconds,
        "requests": requests,
        "requests_per_s": round(requests / args.soak_seconds, 1),
        "decisions": int(decisions),
        "dropped": int(dropped),
        "rss_mb": memory,
        **counts,
        "bytes": size,
        "bytes_per_decision": round(size / max(decisions, 1), 1),
        "bytes_per_hour_at_this_rate": int(size / args.soak_seconds * 3600),
        "retention_pass": retention,
    }


def table(result: dict[str, Any]) -> str:
    sizes = result["row_sizes"]
    out = [
        f"row sizes (SQLite): full record {sizes['bytes_per_record']:.0f} B,"
        f" allow aggregate {sizes['bytes_per_aggregate']:.0f} B",
        f"{'mode':10} {'req/s':>8} {'vs idle':>8} {'p99 ms':>7} {'B/1000 dec':>11} {'dropped':>8}",
    ]
    for name, data in result["modes"].items():
        per = data["bytes_per_1000_decisions"]
        out.append(
            f"{name:10} {data['requests_per_s']:>8.0f} {result['ratio_to_idle'][name]:>7.2f}x"
            f" {data['p99_ms']:>7.2f} {per if per is not None else '-':>11} {data['dropped']:>8}"
        )
    for engine, data in result["soak"].items():
        mem, ret = data["rss_mb"], data["retention_pass"]
        out.append(
            f"soak {engine} {data['seconds']:g} s: {data['requests_per_s']:.0f} req/s,"
            f" {data['decisions']} decisions, {data['records']} records"
            f" ({data['blocks']} blocks) + {data['aggregate_rows']} aggregate rows counting"
            f" {data['allows_counted']} allows, {data['bytes'] / 1e6:.1f} MB"
            f" ({data['bytes_per_decision']:.1f} B/decision), dropped {data['dropped']},"
            f" RSS {mem['start']}/{mem['mid']}/{mem['end']} MB;"
            f" retention pass {ret['seconds']} s ({ret['records_removed']} records,"
            f" {ret['partitions_dropped']} partitions)"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured wrk run per mode")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="soak per engine")
    parser.add_argument("--engines", default="sqlite,postgres")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-decision-log-"))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    script = workdir / "mix.lua"
    script.write_text(WRK_SCRIPT)
    upstream, upstream_port = start_upstream(workdir)
    try:
        sizes = asyncio.run(row_sizes(workdir))
        modes = {name: run_mode(name, workdir, upstream_port, script, args) for name in MODES}
        soaks = {
            engine: soak(engine, workdir, upstream_port, script, args)
            for engine in args.engines.split(",")
            if engine
        }
    finally:
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    idle = modes["idle"]["requests_per_s"]
    result = {
        "request": "PUT .../send/{type}/{txn}, a quarter refused by an event_type_block rule",
        "wrk": {"threads": 1, "connections": args.connections, "seconds": args.seconds},
        "row_sizes": sizes,
        "modes": modes,
        "ratio_to_idle": {n: round(m["requests_per_s"] / idle, 2) for n, m in modes.items()},
        "soak": soaks,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            "load_1min_before": round(load_before, 2),
        },
    }
    print(table(result))
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
