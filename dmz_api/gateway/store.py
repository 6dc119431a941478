"""Gateway storage: the current rules, every ruleset version, and the decision log.

A write is one transaction: check the expected version, read the rules, apply the change,
write the rules and a new version row (author, time, reason, diff). The first statement
takes the write lock (SQLite) or locks the version table (PostgreSQL), so two writers never
both build version N+1 and a reader never sees rules without their version.

On PostgreSQL a write also sends ``NOTIFY dmz_api_gateway_rules`` (delivered at commit),
and ``listen`` holds a connection that hears it, so replicas sharing the database reload
at once instead of at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from mautrix.util.async_db import Connection, Database, Scheme

from ..errors import Conflict
from .policy.model import iso
from .policy.rules import Rule
from .protection import Protection

# The PostgreSQL channel a rule write notifies (the payload is the new version).
RULES_CHANNEL = "dmz_api_gateway_rules"

_SELECT_RULES = (
    "SELECT id, kind, params, mode, enabled, priority, note, author, created, updated,"
    " not_before, expires_at FROM gateway_rules"
)
_INSERT_RULE = (
    "INSERT INTO gateway_rules"
    " (id, kind, params, mode, enabled, priority, note, author, created, updated,"
    " not_before, expires_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)
DECISION_COLUMNS = (
    "ts",
    "source",
    "class",
    "origin",
    "user_id",
    "method",
    "path",
    "event_type",
    "room",
    "rule_id",
    "mode",
    "outcome",
    "latency_us",
    "version",
    "origin_raw",
)
# One decision record, in DECISION_COLUMNS order.
DecisionRecord = tuple[
    int,
    str,
    str,
    str | None,
    str | None,
    str,
    str,
    str | None,
    str | None,
    str | None,
    str | None,
    str,
    int,
    int,
    str | None,
]

_INSERT_DECISION = (
    "INSERT INTO gateway_decisions (ts, source, class, origin, user_id, method, path,"
    " event_type, room, rule_id, mode, outcome, latency_us, version, origin_raw)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
)
# SQLite: a batch is one multi-row INSERT, so the database thread binds it and runs one
# step, taking the GIL once per statement rather than once per row (``executemany``). Its
# placeholders are plain ``?``: the driver rewrites every ``$n`` with a regex, which for
# thousands of them costs more than the insert itself. Rows per statement stay well below
# SQLite's limit of 32766 parameters.
_ROWS_PER_INSERT = 1000
_DECISION_ROW = "(" + ", ".join("?" * len(DECISION_COLUMNS)) + ")"


@functools.lru_cache(maxsize=64)
def _insert_decisions_sql(rows: int) -> str:
    # Only constant fragments and placeholders: every value is a bound parameter.
    return (
        _INSERT_DECISION.partition(" VALUES ")[0] + " VALUES " + ", ".join([_DECISION_ROW] * rows)
    )


_SELECT_DECISIONS = (
    "SELECT id, ts, source, class, origin, user_id, method, path, event_type, room, rule_id,"
    " mode, outcome, latency_us, version, origin_raw FROM gateway_decisions"
)


class CorruptRuleset(Exception):
    """A stored rule does not validate: the version cannot be compiled."""


@dataclass
class Change:
    """What a write does to the rules, and what it answers its caller."""

    put: list[Rule] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    diff: dict[str, list[Any]] = field(default_factory=dict)
    result: Any = None

    @property
    def empty(self) -> bool:
        return not self.put and not self.delete


@dataclass(frozen=True, slots=True)
class VersionRow:
    version: int
    author: str | None
    created: int
    reason: str
    diff: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "author": self.author,
            "time": iso(self.created),
            "reason": self.reason,
            "diff": self.diff,
        }


@dataclass(frozen=True)
class DecisionQuery:
    outcome: str | None = None
    origin: str | None = None
    user: str | None = None
    rule: str | None = None
    request_class: str | None = None
    source: str | None = None
    since: int | None = None
    before_id: int | None = None
    limit: int = 50


def _rule_from_row(row: Mapping[str, Any]) -> Rule:
    try:
        return Rule.from_row({**dict(row), "params": json.loads(row["params"])})
    except Exception as e:
        raise CorruptRuleset(f"stored rule {row['id']!r} is invalid: {e}") from e


def decision_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "time": iso(row["ts"]),
        "source": row["source"],
        "class": row["class"],
        "origin": row["origin"],
        "origin_raw": row["origin_raw"],
        "user": row["user_id"],
        "method": row["method"],
        "path": row["path"],
        "event_type": row["event_type"],
        "room": row["room"],
        "rule": row["rule_id"],
        "mode": row["mode"],
        "outcome": row["outcome"],
        "latency_us": row["latency_us"],
        "version": row["version"],
    }


class RuleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def notifies(self) -> bool:
        """Whether writes notify other replicas (PostgreSQL) and ``listen`` works."""
        return self.db.scheme in (Scheme.POSTGRES, Scheme.COCKROACH)

    async def listen(self, on_change: Callable[[], None]) -> None:
        """Hear rule writes from every replica: ``on_change()`` once listening (a write may
        have come before) and on each notification. Returns when the connection is lost;
        runs until cancelled otherwise. PostgreSQL only."""
        conn: Connection
        async with self.db.acquire() as conn:
            raw: asyncpg.Connection = conn.wrapped
            lost = asyncio.Event()

            def notified(*_: object) -> None:
                on_change()

            def terminated(_conn: object) -> None:
                lost.set()

            raw.add_termination_listener(terminated)
            await raw.add_listener(RULES_CHANNEL, notified)
            try:
                on_change()
                await lost.wait()
            finally:
                raw.remove_termination_listener(terminated)
                if not raw.is_closed():
                    # A connection dying under us may refuse the UNLISTEN: it goes anyway.
                    with contextlib.suppress(Exception):
                        await raw.remove_listener(RULES_CHANNEL, notified)

    async def current_version(self) -> int:
        return int(await self.db.fetchval("SELECT MAX(version) FROM gateway_versions"))

    async def load(self) -> tuple[int, list[Rule]]:
        """The current version and its rules, read consistently."""
        conn: Connection
        async with self.db.acquire() as conn, conn.transaction():
            version = int(await conn.fetchval("SELECT MAX(version) FROM gateway_versions"))
            rows = await conn.fetch(_SELECT_RULES)
        return version, [_rule_from_row(row) for row in rows]

    async def _lock(self, conn: Connection) -> None:
        if self.db.scheme == Scheme.SQLITE:
            # A write as the first statement makes SQLite take the write lock now, not at
            # the first INSERT, so no other writer slips in between our read and our write.
            await conn.execute("DELETE FROM gateway_versions WHERE version < 0")
        else:
            await conn.execute("LOCK TABLE gateway_versions IN SHARE ROW EXCLUSIVE MODE")

    async def commit(
        self,
        expected: int | None,
        mutate: Callable[[dict[str, Rule]], Change],
        *,
        author: str | None,
        reason: str,
        now: int,
    ) -> tuple[int, Change]:
        """Apply ``mutate`` to the current rules as one new version.

        Raises Conflict when ``expected`` is not the current version. An empty change makes
        no version and returns the current one.
        """
        conn: Connection
        async with self.db.acquire() as conn, conn.transaction():
            await self._lock(conn)
            current = int(await conn.fetchval("SELECT MAX(version) FROM gateway_versions"))
            if expected is not None and expected != current:
                raise Conflict(
                    f"The ruleset is at version {current}, not {expected}: reload the rules"
                    " and retry"
                )
            rows = await conn.fetch(_SELECT_RULES)
            change = mutate({rule.id: rule for rule in map(_rule_from_row, rows)})
            if change.empty:
                return current, change
            for rule_id in change.delete:
                await conn.execute("DELETE FROM gateway_rules WHERE id=$1", rule_id)
            for rule in change.put:
                await conn.execute("DELETE FROM gateway_rules WHERE id=$1", rule.id)
                await conn.execute(
                    _INSERT_RULE,
                    rule.id,
                    rule.kind.value,
                    json.dumps(dict(rule.params), separators=(",", ":")),
                    rule.mode.value,
                    rule.enabled,
                    rule.priority,
                    rule.note,
                    rule.author,
                    rule.created,
                    rule.updated,
                    rule.not_before,
                    rule.expires_at,
                )
            version = current + 1
            await conn.execute(
                "INSERT INTO gateway_versions (version, author, created, reason, diff)"
                " VALUES ($1, $2, $3, $4, $5)",
                version,
                author,
                now,
                reason,
                json.dumps(change.diff, separators=(",", ":")),
            )
            if self.notifies:
                await conn.execute("SELECT pg_notify($1, $2)", RULES_CHANNEL, str(version))
        return version, change

    async def history(self, *, limit: int, before: int | None = None) -> list[VersionRow]:
        if before is None:
            rows = await self.db.fetch(
                "SELECT version, author, created, reason, diff FROM gateway_versions"
                " ORDER BY version DESC LIMIT $1",
                limit,
            )
        else:
            rows = await self.db.fetch(
                "SELECT version, author, created, reason, diff FROM gateway_versions"
                " WHERE version < $1 ORDER BY version DESC LIMIT $2",
                before,
                limit,
            )
        return [
            VersionRow(
                version=int(row["version"]),
                author=row["author"],
                created=int(row["created"]),
                reason=row["reason"],
                diff=json.loads(row["diff"]),
            )
            for row in rows
        ]

    async def insert_decisions(self, records: Sequence[DecisionRecord]) -> None:
        """Write a batch atomically: multi-row INSERTs on SQLite, a pipelined
        ``executemany`` in one transaction on PostgreSQL."""
        if not records:
            return
        conn: Connection
        if self.db.scheme == Scheme.SQLITE:
            size = _ROWS_PER_INSERT
            async with self.db.acquire() as conn:
                if len(records) <= size:
                    await conn.execute(
                        _insert_decisions_sql(len(records)), *itertools.chain.from_iterable(records)
                    )
                    return
                async with conn.transaction():
                    for start in range(0, len(records), size):
                        part = records[start : start + size]
                        await conn.execute(
                            _insert_decisions_sql(len(part)), *itertools.chain.from_iterable(part)
                        )
            return
        async with self.db.acquire() as conn, conn.transaction():
            await conn.executemany(_INSERT_DECISION, records)

    async def query_decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:
        conditions: list[str] = []
        args: list[Any] = []

        def where(template: str, value: Any) -> None:
            args.append(value)
            conditions.append(template.format(f"${len(args)}"))

        if query.outcome is not None:
            where("outcome = {}", query.outcome)
        if query.origin is not None:
            where("origin = {}", query.origin)
        if query.user is not None:
            where("user_id = {}", query.user)
        if query.rule is not None:
            where("rule_id = {}", query.rule)
        if query.request_class is not None:
            where("class = {}", query.request_class)
        if query.source is not None:
            where("source = {}", query.source)
        if query.since is not None:
            where("ts >= {}", query.since)
        if query.before_id is not None:
            where("id < {}", query.before_id)
        sql = _SELECT_DECISIONS
        if conditions:
            # Only constant fragments are joined; every value is a $n parameter.
            sql += " WHERE " + " AND ".join(conditions)
        args.append(query.limit)
        sql += f" ORDER BY id DESC LIMIT ${len(args)}"
        return [decision_to_json(row) for row in await self.db.fetch(sql, *args)]

    async def prune_decisions(self, older_than: int) -> None:
        await self.db.execute("DELETE FROM gateway_decisions WHERE ts < $1", older_than)


_SELECT_ROOMS = (
    "SELECT room_id, ledger, acl, policy_server, author, created, updated"
    " FROM gateway_protected_rooms"
)


def _protection_from_row(row: Mapping[str, Any]) -> Protection:
    return Protection(
        room_id=row["room_id"],
        ledger=bool(row["ledger"]),
        acl=bool(row["acl"]),
        policy_server=bool(row["policy_server"]),
        author=row["author"],
        created=int(row["created"]),
        updated=int(row["updated"]),
    )


class RoomStore:
    """Protected rooms (``gateway_protected_rooms``): one row per room."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[Protection]:
        rows = await self.db.fetch(_SELECT_ROOMS + " ORDER BY room_id")
        return [_protection_from_row(row) for row in rows]

    async def put(self, protection: Protection) -> tuple[Protection, bool]:
        """Store ``protection``; returns the stored row and whether it is new. ``created``
        and ``author`` of an existing row are kept."""
        conn: Connection
        async with self.db.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(_SELECT_ROOMS + " WHERE room_id=$1", protection.room_id)
            if old is None:
                await conn.execute(
                    "INSERT INTO gateway_protected_rooms"
                    " (room_id, ledger, acl, policy_server, author, created, updated)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    protection.room_id,
                    protection.ledger,
                    protection.acl,
                    protection.policy_server,
                    protection.author,
                    protection.created,
                    protection.updated,
                )
                return protection, True
            await conn.execute(
                "UPDATE gateway_protected_rooms SET ledger=$2, acl=$3, policy_server=$4,"
                " updated=$5 WHERE room_id=$1",
                protection.room_id,
                protection.ledger,
                protection.acl,
                protection.policy_server,
                protection.updated,
            )
            kept = _protection_from_row(old)
        return (
            Protection(
                protection.room_id,
                protection.ledger,
                protection.acl,
                protection.policy_server,
                kept.author,
                kept.created,
                protection.updated,
            ),
            False,
        )

    async def delete(self, room_id: str) -> Protection | None:
        conn: Connection
        async with self.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT_ROOMS + " WHERE room_id=$1", room_id)
            if row is None:
                return None
            await conn.execute("DELETE FROM gateway_protected_rooms WHERE room_id=$1", room_id)
        return _protection_from_row(row)
