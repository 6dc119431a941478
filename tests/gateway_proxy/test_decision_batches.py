"""Decision records written in batches on SQLite: multi-row INSERTs, one statement per
batch up to a limit, several in one transaction beyond it, order and values kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mautrix.util.async_db import Database

from dmz_api.gateway.migrations import upgrade_table
from dmz_api.gateway.store import DecisionQuery, DecisionRecord, RuleStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RuleStore]:
    database = Database.create(f"sqlite:{tmp_path / 'gw.db'}", upgrade_table=upgrade_table)
    await database.start()
    yield RuleStore(database)
    await database.stop()


def record(n: int) -> DecisionRecord:
    return (
        1_700_000_000_000 + n,
        "proxy",
        "client_send",
        None if n % 2 else f"remote{n}.example",
        "@ü:corp.example" if n % 3 else None,
        "PUT",
        f"/_matrix/client/v3/rooms/!r:corp.example/send/m.room.message/{n}",
        "m.room.message",
        "!r:corp.example",
        None,
        None,
        "allow",
        n,
        7,
        None if n % 2 else f"Remote{n}.example",
        f"$event{n}" if n % 5 else None,
        None,
    )


@pytest.mark.parametrize("count", [1, 999, 1000, 2501])
async def test_batches_are_written_whole_and_in_order(store: RuleStore, count: int) -> None:
    records = [record(n) for n in range(count)]
    await store.insert_decisions(records)
    await store.insert_decisions([])
    rows = await store.query_decisions(DecisionQuery(limit=count + 10))
    assert len(rows) == count
    assert [row["id"] for row in rows] == list(range(count, 0, -1))
    for row, n in zip(reversed(rows), range(count), strict=True):
        assert row["latency_us"] == n and row["path"].endswith(f"/{n}")
        assert row["origin"] == (None if n % 2 else f"remote{n}.example")
        assert row["user"] == ("@ü:corp.example" if n % 3 else None)
