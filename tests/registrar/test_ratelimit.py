"""The onboarding page's rate limits: in memory on SQLite, shared by replicas on PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from mautrix.util.async_db import Database

from devstack.postgres import Postgres
from dmz_api.app import init_app
from dmz_api.db import DATABASE
from dmz_api.registrar import REGISTRAR
from dmz_api.registrar.ratelimit import RateLimiter, SharedRateLimiter
from dmz_api.registrar.store import RegistrarStore

from .conftest import app_config, registrar_section
from .fakes import FakeHomeserver

Client = TestClient[Any, Any]


async def test_bucket_in_the_database(any_db: Database) -> None:
    """The same token bucket as the memory one: burst 2, one token a second."""
    store = RegistrarStore(any_db)
    take = store.take_rate_token
    assert await take("a", 100.0, 2, 1.0) == (True, 1.0)
    assert await take("a", 100.0, 2, 1.0) == (True, 0.0)
    assert await take("a", 100.0, 2, 1.0) == (False, 0.0)  # refused: nothing taken
    assert await take("a", 100.5, 2, 1.0) == (False, 0.5)
    assert await take("a", 101.0, 2, 1.0) == (True, 0.0)
    assert await take("b", 101.0, 2, 1.0) == (True, 1.0)  # every address its own bucket
    # A clock behind the last update refills nothing and does not move the bucket back.
    assert await take("b", 90.0, 2, 1.0) == (True, 0.0)
    assert await take("b", 101.5, 2, 1.0) == (False, 0.5)
    # Full buckets are forgotten; a forgotten address starts full again.
    await store.prune_rate_buckets(101.2)
    remaining = await any_db.fetch("SELECT client FROM registrar_rate_buckets ORDER BY client")
    assert [row["client"] for row in remaining] == ["b"]


@pytest.mark.slow
async def test_replicas_share_one_allowance(postgres: Postgres) -> None:
    db = Database.create(await postgres.new_database(), upgrade_table=_upgrade_table())
    await db.start()
    try:
        now = [1000.0]
        store = RegistrarStore(db)
        replicas = [
            SharedRateLimiter(store, 60, 3, fallback=RateLimiter(60, 3), clock=lambda: now[0])
            for _ in range(2)
        ]
        waits = [await replicas[i % 2].take("198.51.100.7") for i in range(4)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert waits[3] == pytest.approx(1.0)  # 60 a minute: the next in one second
        now[0] += 1.0
        assert await replicas[1].take("198.51.100.7") == 0.0
        assert await replicas[0].take("198.51.100.7") == pytest.approx(1.0)
    finally:
        await db.stop()


async def test_falls_back_to_memory_when_the_database_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenStore(RegistrarStore):
        async def take_rate_token(self, *args: Any) -> tuple[bool, float]:
            raise ConnectionResetError("database gone")

    fallback = RateLimiter(60, 1, clock=lambda: 0.0)
    limiter = SharedRateLimiter(BrokenStore(None), 60, 1, fallback=fallback)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="dmz_api.registrar.ratelimit"):
        assert await limiter.take("a") == 0.0
        assert await limiter.take("a") == pytest.approx(1.0)
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "ConnectionResetError" in warnings[0].getMessage()


@pytest.mark.slow
async def test_the_page_limits_across_replicas_on_postgres(
    aiohttp_client: Any, postgres: Postgres
) -> None:
    url = await postgres.new_database()
    section = registrar_section(rate_limit={"per_minute": 1, "burst": 2})
    clients: list[Client] = []
    for _ in range(2):
        app = init_app(app_config(url, section))
        clients.append(await aiohttp_client(app))
        app[REGISTRAR].adapter = FakeHomeserver()
    statuses = [
        (await clients[i % 2].get("/register", params={"token": "x"})).status for i in range(4)
    ]
    # In memory each replica would have allowed two: together they allow two.
    assert statuses == [404, 404, 429, 429]


async def test_sqlite_keeps_the_buckets_in_memory(aiohttp_client: Any, tmp_path: Any) -> None:
    app = init_app(app_config(f"sqlite:{tmp_path / 'rl.db'}", registrar_section()))
    client: Client = await aiohttp_client(app)
    await client.get("/register", params={"token": "x"})
    rows = await app[DATABASE].fetch("SELECT client FROM registrar_rate_buckets")
    assert rows == []


def _upgrade_table() -> Any:
    from dmz_api.registrar import upgrade_table

    return upgrade_table
