"""The service database: SQLite by default, PostgreSQL by URL, one migration table per role.

Each role keeps its own ``UpgradeTable`` (and version table) so the roles evolve their
schemas independently while sharing one database and one connection pool, which
``init_app`` opens in a cleanup context and puts under ``DATABASE``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from aiohttp import web
from mautrix.util.async_db import Database, UpgradeTable
from mautrix.util.async_db.upgrade import Upgrade, UpgradeWithoutScheme
from mautrix.util.logging import TraceLogger

log = logging.getLogger("dmz_api.db")

DATABASE: web.AppKey[Database] = web.AppKey("database", Database)


def create_database(url: str, db_args: Mapping[str, Any] | None = None) -> Database:
    args = dict(db_args or {})
    if url.startswith(("sqlite:", "sqlite3:")):
        # Several connections let concurrent reads proceed; writes serialise in SQLite itself
        # (mautrix adds WAL and busy_timeout pragmas).
        # An in-memory database exists once per connection, so it gets exactly one.
        args.setdefault("min_size", 1 if ":memory:" in url else 4)
    return Database.create(
        url,
        db_args=args,
        upgrade_table=UpgradeTable(),
        log=logging.getLogger("dmz_api.db"),
    )


async def upgrade(db: Database, tables: Sequence[UpgradeTable]) -> None:
    for table in tables:
        await table.upgrade(db)


@asynccontextmanager
async def open_database(
    url: str, tables: Sequence[UpgradeTable], db_args: Mapping[str, Any] | None = None
) -> AsyncIterator[Database]:
    db = create_database(url, db_args)
    await db.start()
    try:
        await upgrade(db, tables)
        yield db
    finally:
        await db.stop()


class RoleUpgradeTable(UpgradeTable):
    """mautrix's ``UpgradeTable``, its ``register`` only in the decorator form.

    ``@upgrade_table.register(description=...)`` registers the next step, as the plugin's
    migrations do; mautrix annotates ``register`` as returning the step or the decorator,
    which ``mypy --strict`` cannot use as a decorator, so this says which one it is.
    """

    def register(  # type: ignore[override]
        self, *, description: str, transaction: bool = True
    ) -> Callable[[Upgrade | UpgradeWithoutScheme], Upgrade]:
        decorator = super().register(description=description, transaction=transaction)
        return cast(Callable[[Upgrade | UpgradeWithoutScheme], Upgrade], decorator)


def role_upgrade_table(role: str) -> RoleUpgradeTable:
    return RoleUpgradeTable(
        version_table_name=f"{role}_version",
        database_name=f"dmz_api {role}",
        log=logging.getLogger(f"dmz_api.db.{role}"),
    )


__all__ = [
    "DATABASE",
    "Database",
    "RoleUpgradeTable",
    "TraceLogger",
    "create_database",
    "open_database",
    "role_upgrade_table",
]
