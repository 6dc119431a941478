"""The decision log on a real PostgreSQL: the upgrade to day partitions keeps every record,
retention drops whole day partitions (never past the export hold), aggregates are shared."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mautrix.util.async_db import Database

from devstack.postgres import Postgres
from dmz_api.db import role_upgrade_table
from dmz_api.gateway import partitions
from dmz_api.gateway.decisions import DecisionLog, GatewayMetrics
from dmz_api.gateway.migrations import upgrade_table
from dmz_api.gateway.store import DecisionQuery, RuleStore
from dmz_api.metrics import Metrics

from .test_decision_volume import DAY_MS, NOW, Clock, log_config, rec

pytestmark = pytest.mark.slow


async def day_partitions(db: Database) -> list[str]:
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'gateway_decisions'"
    )
    return sorted(row["relname"] for row in rows)


@pytest.fixture
async def old_database(postgres: Postgres) -> AsyncIterator[str]:
    """A database at schema v3 holding 30 records over three days long ago and 5 now."""
    url = await postgres.new_database()
    v3 = role_upgrade_table("gateway")
    v3.upgrades = upgrade_table.upgrades[:4]  # up to the step before day partitions
    db = Database.create(url, upgrade_table=v3)
    await db.start()
    old = int(NOW * 1000) - 100 * DAY_MS
    store = RuleStore(db)
    await store.insert_decisions([rec(n, "block", ts=old + (n % 3) * DAY_MS) for n in range(30)])
    await store.insert_decisions([rec(n, "allow") for n in range(5)])
    await db.stop()
    yield url


async def test_upgrade_partitions_and_keeps_every_record(old_database: str) -> None:
    db = Database.create(old_database, upgrade_table=upgrade_table)
    await db.start()
    try:
        assert await db.fetchval("SELECT count(*) FROM gateway_decisions") == 35
        names = await day_partitions(db)
        assert partitions.DEFAULT in names and len(names) > 4
        # The id sequence went along: new records get new ids, no clash.
        store = RuleStore(db)
        before = await db.fetchval("SELECT max(id) FROM gateway_decisions")
        await store.insert_decisions([rec(99, "block")])
        assert await db.fetchval("SELECT max(id) FROM gateway_decisions") == before + 1
        # Every old record sits in its day's partition.
        old_day = partitions.name(partitions.day_of(int(NOW * 1000) - 100 * DAY_MS))
        assert await db.fetchval(f"SELECT count(*) FROM {old_day}") == 10  # noqa: S608
        rows = await store.query_decisions(DecisionQuery(outcome="block", limit=100))
        assert len(rows) == 31
    finally:
        await db.stop()


async def test_retention_drops_whole_day_partitions(old_database: str) -> None:
    db = Database.create(old_database, upgrade_table=upgrade_table)
    await db.start()
    try:
        store = RuleStore(db)
        old = int(NOW * 1000) - 100 * DAY_MS
        # The third old day is held for export: its partition stays.
        await store.hold_export(old + 2 * DAY_MS)
        await store.insert_allows(
            [(old, "proxy", "client", None, None, "GET", "client_sync", None, 1, 5)]
        )
        metrics = Metrics()
        log = DecisionLog(store, log_config(), GatewayMetrics(metrics), clock=Clock())
        result = await log.prune()
        assert result is not None
        dropped = result["partitions"]
        assert dropped == sorted(dropped) and len(dropped) >= 2
        assert partitions.name(partitions.day_of(old)) in dropped
        assert await db.fetchval("SELECT count(*) FROM gateway_decisions") == 15
        assert result["allows"] == 1 and result["decisions"] == 0  # none in the default
        # Today's and tomorrow's partitions exist after a pass.
        today = partitions.name(partitions.day_of(int(NOW * 1000)))
        assert today in await day_partitions(db)
    finally:
        await db.stop()
