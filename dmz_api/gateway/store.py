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
from . import partitions
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
    "event_id",
    "actions",
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
    str | None,
    str | None,
]

_INSERT_DECISION = (
    "INSERT INTO gateway_decisions (ts, source, class, origin, user_id, method, path,"
    " event_type, room, rule_id, mode, outcome, latency_us, version, origin_raw, event_id,"
    " actions) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
    " $16, $17)"
)
# SQLite: a batch is one multi-row INSERT, so the database thread binds it and runs one
# step, taking the GIL once per statement rather than once per row (``executemany``). Its
# placeholders are plain ``?``: the driver rewrites every ``$n`` with a regex, which for
# thousands of them costs more than the insert itself. Rows per statement stay well below
# SQLite's limit of 32766 parameters.
_ROWS_PER_INSERT = 1000
_DECISION_ROW = "(" + ", ".join("?" * len(DECISION_COLUMNS)) + ")"


def _sqlite_parts(count: int) -> list[int]:
    """Rows per statement for a batch of ``count``: whole statements of
    ``_ROWS_PER_INSERT``, the rest as powers of two. Each distinct size is one prepared
    statement the driver caches per connection (a 1,000-row one is hundreds of KB), so
    only 11 sizes are ever used: batches of every size from 1 to 1,000 grew the process
    by ~130 MB of cached statements (issue 14: 51 -> 220 MB), these stay flat."""
    whole, rest = divmod(count, _ROWS_PER_INSERT)
    parts = [_ROWS_PER_INSERT] * whole
    bit = 512
    while rest:
        if rest >= bit:
            parts.append(bit)
            rest -= bit
        bit //= 2
    return parts


@functools.lru_cache(maxsize=16)
def _insert_decisions_sql(rows: int) -> str:
    # Only constant fragments and placeholders: every value is a bound parameter.
    return (
        _INSERT_DECISION.partition(" VALUES ")[0] + " VALUES " + ", ".join([_DECISION_ROW] * rows)
    )


_SELECT_DECISIONS = (
    "SELECT id, ts, source, class, origin, user_id, method, path, event_type, room, rule_id,"
    " mode, outcome, latency_us, version, origin_raw, event_id, actions FROM gateway_decisions"
)


# One allow aggregate: the minute's first ms, the key, the number of allows.
ALLOW_COLUMNS = (
    "ts",
    "source",
    "class",
    "origin",
    "user_id",
    "method",
    "endpoint",
    "room",
    "version",
    "count",
)
AllowAggregate = tuple[int, str, str, str | None, str | None, str, str, str | None, int, int]
_INSERT_ALLOWS = (
    "INSERT INTO gateway_decision_allows (ts, source, class, origin, user_id, method,"
    " endpoint, room, version, count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
_SELECT_ALLOWS = (
    "SELECT id, ts, source, class, origin, user_id, method, endpoint, room, version, count"
    " FROM gateway_decision_allows"
)
EXPORT_HOLD = "export_hold"
_DELETE_BATCH = {
    table: f"DELETE FROM {table} WHERE id IN"  # noqa: S608 - constant table names
    f" (SELECT id FROM {table} WHERE ts < $1 ORDER BY ts LIMIT $2)"
    for table in ("gateway_decisions", "gateway_decision_allows", partitions.DEFAULT)
}


@dataclass(frozen=True)
class Pruned:
    """What one retention pass removed."""

    decisions: int = 0
    allows: int = 0
    partitions: tuple[str, ...] = ()
    # The cutoff used (ms): older than the retention, never past the export hold.
    cutoff: int = 0


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
    event_id: str | None = None
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
        "event_id": row["event_id"],
        "actions": row["actions"],
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
            parts = _sqlite_parts(len(records))
            async with self.db.acquire() as conn:
                if len(parts) == 1:
                    await conn.execute(
                        _insert_decisions_sql(len(records)), *itertools.chain.from_iterable(records)
                    )
                    return
                async with conn.transaction():
                    start = 0
                    for rows in parts:
                        part = records[start : start + rows]
                        start += rows
                        await conn.execute(
                            _insert_decisions_sql(rows), *itertools.chain.from_iterable(part)
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
        if query.event_id is not None:
            where("event_id = {}", query.event_id)
        if query.before_id is not None:
            where("id < {}", query.before_id)
        sql = _SELECT_DECISIONS
        if conditions:
            # Only constant fragments are joined; every value is a $n parameter.
            sql += " WHERE " + " AND ".join(conditions)
        args.append(query.limit)
        sql += f" ORDER BY id DESC LIMIT ${len(args)}"
        return [decision_to_json(row) for row in await self.db.fetch(sql, *args)]

    async def insert_allows(self, rows: Sequence[AllowAggregate]) -> None:
        if not rows:
            return
        conn: Connection
        async with self.db.acquire() as conn, conn.transaction():
            await conn.executemany(_INSERT_ALLOWS, rows)

    async def query_allows(self, query: DecisionQuery) -> list[dict[str, Any]]:
        """Allow aggregates, newest first, filtered like ``query_decisions`` (no outcome
        or rule: an aggregate is of allows, which no rule decided)."""
        conditions: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("origin", query.origin),
            ("user_id", query.user),
            ("class", query.request_class),
            ("source", query.source),
        ):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        if query.since is not None:
            args.append(query.since)
            conditions.append(f"ts >= ${len(args)}")
        if query.before_id is not None:
            args.append(query.before_id)
            conditions.append(f"id < ${len(args)}")
        sql = _SELECT_ALLOWS
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        args.append(query.limit)
        sql += f" ORDER BY id DESC LIMIT ${len(args)}"
        return [allow_to_json(row) for row in await self.db.fetch(sql, *args)]

    async def export_hold(self) -> int | None:
        value = await self.db.fetchval(
            "SELECT value FROM gateway_decision_log_state WHERE name = $1", EXPORT_HOLD
        )
        return int(value) if value is not None else None

    async def hold_export(self, since: int) -> None:
        """Keep every record from ``since`` on from retention (a stream missed them)."""
        conn: Connection
        async with self.db.acquire() as conn, conn.transaction():
            old = await conn.fetchval(
                "SELECT value FROM gateway_decision_log_state WHERE name = $1", EXPORT_HOLD
            )
            if old is None:
                await conn.execute(
                    "INSERT INTO gateway_decision_log_state (name, value) VALUES ($1, $2)",
                    EXPORT_HOLD,
                    since,
                )
            elif since < int(old):
                await conn.execute(
                    "UPDATE gateway_decision_log_state SET value = $2 WHERE name = $1",
                    EXPORT_HOLD,
                    since,
                )

    @property
    def partitioned(self) -> bool:
        return self.db.scheme in (Scheme.POSTGRES, Scheme.COCKROACH)

    async def ensure_partitions(self, now: int) -> None:
        """PostgreSQL: today's and tomorrow's day partitions exist."""
        if not self.partitioned:
            return
        for day in partitions.days(now, now + partitions.DAY_MS):
            await self.db.execute(partitions.create_sql(day))

    async def _drop_partitions(self, cutoff: int) -> tuple[str, ...]:
        rows = await self.db.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1",
            partitions.PARENT,
        )
        dropped: list[str] = []
        for row in sorted(row["relname"] for row in rows):
            day = partitions.day_from_name(row)
            if day is None or partitions.start_ms(day) + partitions.DAY_MS > cutoff:
                continue
            # The name was matched against gateway_decisions_pYYYYMMDD: safe to format.
            # IF EXISTS: another replica's pass may have dropped it a moment ago.
            await self.db.execute(f"DROP TABLE IF EXISTS {partitions.name(day)}")
            dropped.append(row)
        return tuple(dropped)

    async def _delete_batches(self, table: str, cutoff: int, batch: int, pause: float) -> int:
        """Delete rows older than ``cutoff`` ``batch`` at a time, pausing between
        statements so writers are never locked out for long. ``table`` is a constant."""
        sql = _DELETE_BATCH[table]
        removed = 0
        while True:
            result = await self.db.execute(sql, cutoff, batch)
            count = _rowcount(result)
            removed += count
            if count < batch:
                return removed
            await asyncio.sleep(pause)

    async def prune_decisions(
        self, older_than: int, *, batch: int = 5000, pause: float = 0.05
    ) -> Pruned:
        """Remove records older than ``older_than`` (ms), never those at or after the
        export hold: whole day partitions on PostgreSQL, bounded batches otherwise."""
        hold = await self.export_hold()
        cutoff = older_than if hold is None else min(older_than, hold)
        dropped: tuple[str, ...] = ()
        if self.partitioned:
            dropped = await self._drop_partitions(cutoff)
            # Rows outside the day partitions (a clock far off), in batches.
            decisions = await self._delete_batches(partitions.DEFAULT, cutoff, batch, pause)
        else:
            decisions = await self._delete_batches("gateway_decisions", cutoff, batch, pause)
        allows = await self._delete_batches("gateway_decision_allows", cutoff, batch, pause)
        return Pruned(decisions, allows, dropped, cutoff)


def _rowcount(result: Any) -> int:
    """Rows a DELETE removed: asyncpg answers ``DELETE n``, the SQLite driver a cursor."""
    if isinstance(result, str):
        return int(result.rsplit(" ", 1)[-1])
    return int(getattr(result, "rowcount", 0))


def allow_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": "aggregate",
        "time": iso(row["ts"]),
        "interval_s": 60,
        "source": row["source"],
        "class": row["class"],
        "origin": row["origin"],
        "user": row["user_id"],
        "method": row["method"],
        "endpoint": row["endpoint"],
        "room": row["room"],
        "outcome": "allow",
        "version": row["version"],
        "count": row["count"],
    }


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
