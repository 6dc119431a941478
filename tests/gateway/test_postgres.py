"""The gateway store and service on a real PostgreSQL (replicas sharing one database)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from mautrix.util.async_db import Database

from devstack.postgres import Postgres
from dmz_api.config_reader import Section
from dmz_api.errors import Conflict
from dmz_api.gateway.config import parse_gateway_config
from dmz_api.gateway.decisions import GatewayMetrics
from dmz_api.gateway.migrations import upgrade_table
from dmz_api.gateway.policy.matrix_paths import request_info
from dmz_api.gateway.service import GatewayService
from dmz_api.gateway.store import DecisionQuery, RuleStore
from dmz_api.metrics import Metrics

pytestmark = pytest.mark.slow


@pytest.fixture
async def pg(postgres: Postgres) -> AsyncIterator[Database]:
    db = Database.create(await postgres.new_database(), upgrade_table=upgrade_table)
    await db.start()
    yield db
    await db.stop()


def service(db: Database, reload_interval: float = 0.05) -> GatewayService:
    config = parse_gateway_config(
        Section({"server_name": "corp.example", "reload_interval": reload_interval,
                 "decision_log": {"flush_interval": 0.02, "allow": "full"}})
    )  # fmt: skip
    return GatewayService(config, RuleStore(db), GatewayMetrics(Metrics()))


async def wait_for_version(gateway: GatewayService, version: int, within: float) -> float:
    """Seconds until ``gateway`` enforces ``version``; fails after ``within``."""
    start = time.monotonic()
    while gateway.version != version:
        assert time.monotonic() - start < within, (gateway.version, version)
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def listening_backends(db: Database) -> list[int]:
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
        'LISTEN "dmz_api_gateway_rules"',
    )
    return [row["pid"] for row in rows]


async def test_replicas_hear_rule_changes_at_once(pg: Database) -> None:
    # Polling every 60 s: only the notification can bring a change within the test.
    a, b = service(pg, reload_interval=60), service(pg, reload_interval=60)
    await a.start()
    await b.start()
    try:
        deadline = time.monotonic() + 5
        while len(await listening_backends(pg)) < 2:
            assert time.monotonic() < deadline, "the replicas never started listening"
            await asyncio.sleep(0.02)
        for i in range(1, 6):
            writer, reader = (a, b) if i % 2 else (b, a)
            result = await writer.add_rule(
                {"kind": "server_block", "params": {"servers": [f"n{i}.example"]}}, author=None
            )
            assert writer.version == result.version == i
            await wait_for_version(reader, i, within=2.0)

        # The listening connection dies (a PostgreSQL restart, a network cut): the replica
        # reconnects and hears the next change without waiting for its poll.
        before = await listening_backends(pg)
        for pid in before:
            await pg.execute("SELECT pg_terminate_backend($1)", pid)
        deadline = time.monotonic() + 10
        while True:
            now = await listening_backends(pg)
            if len(now) == 2 and not set(now) & set(before):
                break
            assert time.monotonic() < deadline, "the replicas did not listen again"
            await asyncio.sleep(0.05)
        await a.add_rule({"kind": "server_block", "params": {"servers": ["x"]}}, author=None)
        await wait_for_version(b, 6, within=2.0)
    finally:
        await a.stop()
        await b.stop()
    assert await listening_backends(pg) == []


async def test_replicas_share_rules_versions_and_decisions(pg: Database) -> None:
    a, b = service(pg), service(pg)
    await a.start()
    await b.start()
    try:
        writes = [
            s.add_rule(
                {"kind": "server_block", "params": {"servers": [f"x{i}.example"]}}, author=None
            )
            for i, s in enumerate([a, b] * 5)
        ]
        results = await asyncio.gather(*writes)
        assert sorted(r.version for r in results) == list(range(1, 11))
        with pytest.raises(Conflict):
            await b.add_rule(
                {"kind": "server_block", "params": {"servers": ["y"]}}, author=None, expected=3
            )
        await a.add_rule(
            {"id": "evil", "kind": "server_block", "params": {"servers": ["evil.example"]}},
            author="@sec:corp.example",
        )
        deadline = time.monotonic() + 5
        while b.version != 11 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        federation = request_info(
            "PUT",
            "/_matrix/federation/v1/send/1",
            ['X-Matrix origin="evil.example",key="k",sig="s"'],
        )
        assert b.decide(federation).rule_id == "evil"
        await b.decision_log.flush()
        rows = await a.decisions(DecisionQuery(rule="evil"))
        assert len(rows) == 1 and rows[0]["version"] == 11 and rows[0]["outcome"] == "block"
        history = await a.history(limit=20)
        assert [v.version for v in history] == list(range(11, -1, -1))
    finally:
        await a.stop()
        await b.stop()


async def test_protected_rooms_on_postgres_are_shared_by_replicas(pg: Database) -> None:
    first, second = service(pg), service(pg)
    await first.start()
    await second.start()
    try:
        room, created = await first.rooms.protect("!r:corp.example", {}, author="@sec:corp.example")
        assert created and (room.ledger, room.acl, room.policy_server) == (True, True, False)
        again, created = await first.rooms.protect(
            "!r:corp.example", {"ledger": False}, author="@bob:corp.example"
        )
        assert not created and again.author == "@sec:corp.example" and not again.ledger
        deadline = time.monotonic() + 5
        while [r.room_id for r in second.rooms.rooms()] != ["!r:corp.example"]:
            assert time.monotonic() < deadline, "the other replica sees the protected room"
            await asyncio.sleep(0.02)
        assert second.rooms.rooms()[0] == again
        await second.rooms.unprotect("!r:corp.example", author=None)
        await first.rooms.refresh()
        assert first.rooms.rooms() == []
    finally:
        await first.stop()
        await second.stop()
