"""Registrar storage: one method per query, ``$1`` placeholders, frozen rows.

Works on SQLite and PostgreSQL alike: every statement that must be atomic is a single
conditional ``UPDATE ... RETURNING`` (a row lock in PostgreSQL, the write lock in SQLite).
"""

# ruff: noqa: S608  (SQL is built only from constant identifiers; every value is a $n parameter)
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from mautrix.util.async_db import Connection, Database, Scheme

TokenStatus = Literal["active", "used", "expired", "revoked"]
GuestStatus = Literal["active", "deactivated"]
TOKEN_STATUSES: tuple[TokenStatus, ...] = ("active", "used", "expired", "revoked")
GUEST_STATUSES: tuple[GuestStatus, ...] = ("active", "deactivated")

# The status of a token as SQL conditions; {now} is the placeholder for "now" in ms.
_STATUS_SQL: dict[str, str] = {
    "revoked": "revoked_at IS NOT NULL",
    "used": "revoked_at IS NULL AND uses_completed >= uses_allowed",
    "expired": "revoked_at IS NULL AND uses_completed < uses_allowed AND expires_at <= {now}",
    "active": "revoked_at IS NULL AND uses_completed < uses_allowed AND expires_at > {now}",
}

_TK_COLUMNS = (
    "id, token_hash, sponsor, note, api_client, homeserver_kind, uses_allowed, uses_completed,"
    " pending, in_flight, claim_expires_at, created_at, expires_at, revoked_at, revoked_by,"
    " hs_state, invites, notify, guest_expires_in, project"
)
_GUEST_COLUMNS = (
    "user_id, sponsor, token_id, created_at, status, deactivated_at, deactivated_by, expires_at"
)

Row = Any
# A place in a list, newest first: (created_at, id); a page holds the rows after it.
Position = tuple[int, str]


def _after(position: Position, key: str, args: list[Any]) -> str:
    """The condition for rows after ``position`` in ``ORDER BY created_at DESC, <key>``."""
    args.extend(position)
    at, item = f"${len(args) - 1}", f"${len(args)}"
    return f"(created_at < {at} OR (created_at = {at} AND {key} > {item}))"


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: str
    token_hash: str
    sponsor: str
    note: str
    api_client: str
    homeserver_kind: str
    uses_allowed: int
    uses_completed: int
    pending: int
    in_flight: int
    claim_expires_at: int
    created_at: int
    expires_at: int
    revoked_at: int | None
    revoked_by: str | None
    hs_state: str
    # JSON list of room IDs; where to tell the sponsor of a registration (see migrations v3).
    invites: str = "[]"
    notify: str = ""
    # Seconds each guest of this token keeps their account; 0 for good (migrations v4).
    guest_expires_in: int = 0
    # The project its guests belong to ("" for none; migrations v5).
    project: str = ""

    @classmethod
    def from_row(cls, row: Row) -> TokenRow:
        return cls(**{name: row[name] for name in cls.__slots__})

    def status(self, now_ms: int) -> TokenStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.uses_completed >= self.uses_allowed:
            return "used"
        if self.expires_at <= now_ms:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class GuestRow:
    user_id: str
    sponsor: str
    token_id: str
    created_at: int
    status: str
    deactivated_at: int | None
    deactivated_by: str | None
    # When the expiry task deactivates the guest; None: never.
    expires_at: int | None = None

    @classmethod
    def from_row(cls, row: Row) -> GuestRow:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class RegistrationRow:
    """A guest with what its token asked for: the registrations feed's item."""

    user_id: str
    sponsor: str
    token_id: str
    created_at: int
    status: str
    invites: str
    notify: str

    @classmethod
    def from_row(cls, row: Row) -> RegistrationRow:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class IdempotencyRow:
    api_client: str
    idem_key: str
    request_hash: str
    token_id: str | None
    sealed: str | None
    created_at: int

    @classmethod
    def from_row(cls, row: Row) -> IdempotencyRow:
        return cls(**{name: row[name] for name in cls.__slots__})


def _take_token_sql(least: str, greatest: str) -> str:
    # $1 client, $2 burst, $3 now (s), $4 refill rate (tokens/s). Every SET expression sees
    # the row as it was, so the bucket is refilled, judged and taken in one statement.
    refill = f"{least}($2, b.tokens + {greatest}(0, $3 - b.updated) * $4)"
    return (
        "INSERT INTO registrar_rate_buckets AS b (client, tokens, updated, allowed)"
        " VALUES ($1, $2 - 1, $3, TRUE)"
        f" ON CONFLICT (client) DO UPDATE SET allowed = ({refill} >= 1),"
        f" tokens = {refill} - CASE WHEN {refill} >= 1 THEN 1 ELSE 0 END,"
        f" updated = {greatest}(b.updated, $3)"
        " RETURNING allowed, tokens"
    )


_TAKE_TOKEN = {
    "postgres": _take_token_sql("LEAST", "GREATEST"),
    "sqlite": _take_token_sql("MIN", "MAX"),
}


class RegistrarStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def shared(self) -> bool:
        """Whether this database is one that replicas share (PostgreSQL)."""
        return self.db.scheme in (Scheme.POSTGRES, Scheme.COCKROACH)

    async def take_rate_token(
        self, client: str, now: float, burst: float, rate: float
    ) -> tuple[bool, float]:
        """Take one token from ``client``'s bucket: (allowed, tokens left)."""
        sql = _TAKE_TOKEN["postgres" if self.shared else "sqlite"]
        row = await self.db.fetchrow(sql, client, burst, now, rate)
        assert row is not None  # an upsert with RETURNING always returns its row
        return bool(row["allowed"]), float(row["tokens"])

    async def prune_rate_buckets(self, full_since: float) -> None:
        """Forget buckets untouched since ``full_since`` (refilled, as good as absent)."""
        await self.db.execute("DELETE FROM registrar_rate_buckets WHERE updated < $1", full_since)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """Statements on this store inside the block share one connection and transaction."""
        conn: Connection
        async with self.db.acquire() as conn, conn.transaction():
            yield conn

    # ---- tokens ----

    async def insert_token(self, token: TokenRow) -> None:
        await self.db.execute(
            f"INSERT INTO registrar_tokens ({_TK_COLUMNS}) VALUES"
            " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,"
            " $19, $20)",
            token.id,
            token.token_hash,
            token.sponsor,
            token.note,
            token.api_client,
            token.homeserver_kind,
            token.uses_allowed,
            token.uses_completed,
            token.pending,
            token.in_flight,
            token.claim_expires_at,
            token.created_at,
            token.expires_at,
            token.revoked_at,
            token.revoked_by,
            token.hs_state,
            token.invites,
            token.notify,
            token.guest_expires_in,
            token.project,
        )

    async def delete_token(self, token_id: str) -> None:
        await self.db.execute("DELETE FROM registrar_tokens WHERE id=$1", token_id)

    async def get_token(self, token_id: str) -> TokenRow | None:
        row = await self.db.fetchrow(
            f"SELECT {_TK_COLUMNS} FROM registrar_tokens WHERE id=$1", token_id
        )
        return TokenRow.from_row(row) if row else None

    async def get_token_by_hash(self, token_hash: str) -> TokenRow | None:
        row = await self.db.fetchrow(
            f"SELECT {_TK_COLUMNS} FROM registrar_tokens WHERE token_hash=$1", token_hash
        )
        return TokenRow.from_row(row) if row else None

    async def list_tokens(
        self,
        now_ms: int,
        *,
        status: str | None,
        sponsor: str | None,
        limit: int,
        after: Position | None = None,
    ) -> list[TokenRow]:
        conditions: list[str] = ["1=1"]
        args: list[Any] = []
        if status is not None:
            condition = _STATUS_SQL[status]
            if "{now}" in condition:
                args.append(now_ms)
                condition = condition.format(now=f"${len(args)}")
            conditions.append(f"({condition})")
        if sponsor is not None:
            args.append(sponsor)
            conditions.append(f"sponsor=${len(args)}")
        if after is not None:
            conditions.append(_after(after, "id", args))
        args.append(limit)
        query = (
            f"SELECT {_TK_COLUMNS} FROM registrar_tokens WHERE {' AND '.join(conditions)}"
            f" ORDER BY created_at DESC, id LIMIT ${len(args)}"
        )
        return [TokenRow.from_row(row) for row in await self.db.fetch(query, *args)]

    async def tokens_to_sync(self) -> list[TokenRow]:
        """Legacy tokens that may still exist natively on the homeserver (see service.sync)."""
        rows = await self.db.fetch(
            f"SELECT {_TK_COLUMNS} FROM registrar_tokens WHERE hs_state IN ('live', 'adopting')"
        )
        return [TokenRow.from_row(row) for row in rows]

    async def adopt(self, token_id: str, used: int) -> None:
        """Take over a legacy token's count (``used`` on the homeserver) before deleting it."""
        await self.db.execute(
            # The count never goes down: our own registrations are already in it.
            "UPDATE registrar_tokens SET pending=0, hs_state='adopting', uses_completed ="
            " CASE WHEN $2 > uses_completed THEN $2 ELSE uses_completed END"
            " WHERE id=$1 AND hs_state IN ('live', 'adopting')",
            token_id,
            used,
        )

    async def set_hs_state(self, token_id: str, state: str) -> None:
        await self.db.execute(
            "UPDATE registrar_tokens SET hs_state=$2 WHERE id=$1", token_id, state
        )

    async def revoke(self, token_id: str, now_ms: int, by: str) -> TokenRow | None:
        """Mark one token revoked; None when it already was (or does not exist)."""
        row = await self.db.fetchrow(
            "UPDATE registrar_tokens SET revoked_at=$2, revoked_by=$3"
            f" WHERE id=$1 AND revoked_at IS NULL RETURNING {_TK_COLUMNS}",
            token_id,
            now_ms,
            by,
        )
        return TokenRow.from_row(row) if row else None

    async def revoke_active_of_sponsor(self, sponsor: str, now_ms: int, by: str) -> list[TokenRow]:
        rows = await self.db.fetch(
            "UPDATE registrar_tokens SET revoked_at=$1, revoked_by=$3"
            f" WHERE sponsor=$2 AND {_STATUS_SQL['active'].format(now='$1')}"
            f" RETURNING {_TK_COLUMNS}",
            now_ms,
            sponsor,
            by,
        )
        return [TokenRow.from_row(row) for row in rows]

    async def claim(self, token_id: str, now_ms: int, lease_ms: int) -> TokenRow | None:
        """Reserve one use for a registration under way, atomically; None if none is left.

        A claim older than its lease belongs to a process that died mid-registration: it
        no longer counts (every real registration ends long before, by HTTP timeouts).
        """
        row = await self.db.fetchrow(
            "UPDATE registrar_tokens SET"
            " in_flight = CASE WHEN claim_expires_at <= $2 THEN 1 ELSE in_flight + 1 END,"
            " claim_expires_at = $3"
            " WHERE id=$1 AND revoked_at IS NULL AND expires_at > $2"
            " AND uses_completed + pending"
            " + CASE WHEN claim_expires_at <= $2 THEN 0 ELSE in_flight END < uses_allowed"
            f" RETURNING {_TK_COLUMNS}",
            token_id,
            now_ms,
            now_ms + lease_ms,
        )
        return TokenRow.from_row(row) if row else None

    async def release(self, token_id: str) -> None:
        await self.db.execute(
            "UPDATE registrar_tokens SET"
            " in_flight = CASE WHEN in_flight > 0 THEN in_flight - 1 ELSE 0 END WHERE id=$1",
            token_id,
        )

    async def complete_use(self, token_id: str) -> None:
        await self.db.execute(
            "UPDATE registrar_tokens SET uses_completed = uses_completed + 1,"
            " in_flight = CASE WHEN in_flight > 0 THEN in_flight - 1 ELSE 0 END WHERE id=$1",
            token_id,
        )

    # ---- guests ----

    async def insert_guest(self, guest: GuestRow) -> None:
        await self.db.execute(
            f"INSERT INTO registrar_guests ({_GUEST_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            guest.user_id,
            guest.sponsor,
            guest.token_id,
            guest.created_at,
            guest.status,
            guest.deactivated_at,
            guest.deactivated_by,
            guest.expires_at,
        )

    async def expired_guests(self, now_ms: int, limit: int) -> list[GuestRow]:
        """Active guests whose time is up, oldest expiry first."""
        rows = await self.db.fetch(
            f"SELECT {_GUEST_COLUMNS} FROM registrar_guests WHERE status='active'"
            " AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
            now_ms,
            limit,
        )
        return [GuestRow.from_row(row) for row in rows]

    async def set_guest_expiry(self, user_id: str, expires_at: int) -> GuestRow | None:
        """A new expiry for an active guest; None when the guest is not active."""
        row = await self.db.fetchrow(
            "UPDATE registrar_guests SET expires_at=$2 WHERE user_id=$1 AND status='active'"
            f" RETURNING {_GUEST_COLUMNS}",
            user_id,
            expires_at,
        )
        return GuestRow.from_row(row) if row else None

    async def get_guest(self, user_id: str) -> GuestRow | None:
        row = await self.db.fetchrow(
            f"SELECT {_GUEST_COLUMNS} FROM registrar_guests WHERE user_id=$1", user_id
        )
        return GuestRow.from_row(row) if row else None

    async def list_guests(
        self,
        *,
        sponsor: str | None,
        status: str | None,
        limit: int,
        after: Position | None = None,
        project: str | None = None,
    ) -> list[GuestRow]:
        conditions: list[str] = ["1=1"]
        args: list[Any] = []
        if sponsor is not None:
            args.append(sponsor)
            conditions.append(f"sponsor=${len(args)}")
        if project is not None:
            args.append(project)
            conditions.append(
                f"token_id IN (SELECT id FROM registrar_tokens WHERE project=${len(args)})"
            )
        if status is not None:
            args.append(status)
            conditions.append(f"status=${len(args)}")
        if after is not None:
            conditions.append(_after(after, "user_id", args))
        args.append(limit)
        query = (
            f"SELECT {_GUEST_COLUMNS} FROM registrar_guests WHERE {' AND '.join(conditions)}"
            f" ORDER BY created_at DESC, user_id LIMIT ${len(args)}"
        )
        return [GuestRow.from_row(row) for row in await self.db.fetch(query, *args)]

    async def guests_of_tokens(self, token_ids: Sequence[str]) -> dict[str, list[str]]:
        if not token_ids:
            return {}
        placeholders = ", ".join(f"${i}" for i in range(1, len(token_ids) + 1))
        rows = await self.db.fetch(
            "SELECT token_id, user_id FROM registrar_guests"
            f" WHERE token_id IN ({placeholders}) ORDER BY created_at, user_id",
            *token_ids,
        )
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row["token_id"], []).append(row["user_id"])
        return found

    async def registrations(
        self, since_ms: int, after_user: str, limit: int
    ) -> list[RegistrationRow]:
        """Guests oldest first, from just after ``(since_ms, after_user)``, with their token."""
        rows = await self.db.fetch(
            "SELECT g.user_id, g.sponsor, g.token_id, g.created_at, g.status, t.invites, t.notify"
            " FROM registrar_guests g JOIN registrar_tokens t ON t.id = g.token_id"
            " WHERE g.created_at > $1 OR (g.created_at = $1 AND g.user_id > $2)"
            " ORDER BY g.created_at, g.user_id LIMIT $3",
            since_ms,
            after_user,
            limit,
        )
        return [RegistrationRow.from_row(row) for row in rows]

    async def mark_guest_deactivated(self, user_id: str, now_ms: int, by: str) -> bool:
        value = await self.db.fetchval(
            "UPDATE registrar_guests SET status='deactivated', deactivated_at=$2,"
            " deactivated_by=$3 WHERE user_id=$1 AND status='active' RETURNING user_id",
            user_id,
            now_ms,
            by,
        )
        return value is not None

    # ---- idempotent mints ----

    async def claim_idempotency_key(
        self, api_client: str, key: str, request_hash: str, now_ms: int
    ) -> bool:
        """Take the key for a mint about to happen; False when someone already holds it."""
        value = await self.db.fetchval(
            "INSERT INTO registrar_idempotency (api_client, idem_key, request_hash, created_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (api_client, idem_key) DO NOTHING"
            " RETURNING idem_key",
            api_client,
            key,
            request_hash,
            now_ms,
        )
        return value is not None

    async def get_idempotency(self, api_client: str, key: str) -> IdempotencyRow | None:
        row = await self.db.fetchrow(
            "SELECT api_client, idem_key, request_hash, token_id, sealed, created_at"
            " FROM registrar_idempotency WHERE api_client=$1 AND idem_key=$2",
            api_client,
            key,
        )
        return IdempotencyRow.from_row(row) if row else None

    async def complete_idempotency(
        self, api_client: str, key: str, token_id: str, sealed: str
    ) -> None:
        await self.db.execute(
            "UPDATE registrar_idempotency SET token_id=$3, sealed=$4"
            " WHERE api_client=$1 AND idem_key=$2",
            api_client,
            key,
            token_id,
            sealed,
        )

    async def drop_idempotency_key(self, api_client: str, key: str) -> None:
        await self.db.execute(
            "DELETE FROM registrar_idempotency"
            " WHERE api_client=$1 AND idem_key=$2 AND token_id IS NULL",
            api_client,
            key,
        )

    async def drop_abandoned_idempotency_key(
        self, api_client: str, key: str, started_before_ms: int
    ) -> bool:
        """Free a key whose mint never finished (its process died); True if it was freed."""
        value = await self.db.fetchval(
            "DELETE FROM registrar_idempotency WHERE api_client=$1 AND idem_key=$2"
            " AND token_id IS NULL AND created_at < $3 RETURNING idem_key",
            api_client,
            key,
            started_before_ms,
        )
        return value is not None

    async def purge_idempotency(self, before_ms: int) -> None:
        await self.db.execute("DELETE FROM registrar_idempotency WHERE created_at < $1", before_ms)
