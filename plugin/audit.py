"""The audit trail: an append-only, SHA-256 hash-chained record of every command.

Each entry's hash covers its sequence number, its fields and the previous entry's hash,
so an edited entry breaks its own hash, a removed one leaves a gap in the sequence, a
renumbered one breaks the chain, and entries cut from the end no longer match the head
kept in ``audit_head``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from enum import StrEnum
from typing import Any

from attrs import frozen
from mautrix.util.async_db import Database

GENESIS = "0" * 64
_SECRET_WORDS = ("token", "password", "secret", "key", "mac")


class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"


def scrub(args: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments fit for the trail: anything named like a secret (ids aside) is replaced."""
    clean: dict[str, Any] = {}
    for name, value in args.items():
        lowered = name.lower()
        if not lowered.endswith("_id") and any(word in lowered for word in _SECRET_WORDS):
            clean[name] = "[removed]"
        elif isinstance(value, Mapping):
            clean[name] = scrub(value)
        else:
            clean[name] = value
    return clean


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    *,
    seq: int,
    ts: int,
    room_id: str,
    event_id: str,
    sender: str,
    command: str,
    args: str,
    outcome: str,
    detail: str,
    request_id: str,
    prev_hash: str,
) -> str:
    body = canonical(
        [seq, ts, room_id, event_id, sender, command, args, outcome, detail, request_id, prev_hash]
    )
    return hashlib.sha256(body.encode()).hexdigest()


@frozen
class AuditEntry:
    seq: int
    ts: int
    room_id: str
    event_id: str
    sender: str
    command: str
    args: str
    outcome: str
    detail: str
    request_id: str
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditEntry:
        return cls(
            seq=int(row["seq"]),
            ts=int(row["ts"]),
            room_id=row["room_id"],
            event_id=row["event_id"],
            sender=row["sender"],
            command=row["command"],
            args=row["args"],
            outcome=row["outcome"],
            detail=row["detail"],
            request_id=row["request_id"],
            prev_hash=row["prev_hash"],
            hash=row["hash"],
        )

    def expected_hash(self) -> str:
        return entry_hash(
            seq=self.seq,
            ts=self.ts,
            room_id=self.room_id,
            event_id=self.event_id,
            sender=self.sender,
            command=self.command,
            args=self.args,
            outcome=self.outcome,
            detail=self.detail,
            request_id=self.request_id,
            prev_hash=self.prev_hash,
        )

    @property
    def parsed_args(self) -> Any:
        try:
            return json.loads(self.args)
        except ValueError:
            return self.args

    def to_json(self) -> dict[str, Any]:
        """The export form: every stored field, so a SIEM can re-check the chain itself."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "room_id": self.room_id,
            "event_id": self.event_id,
            "sender": self.sender,
            "command": self.command,
            "args": self.args,
            "outcome": self.outcome,
            "detail": self.detail,
            "request_id": self.request_id,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@frozen
class AuditRecord:
    """What one command leaves in the trail: where, by whom, what, and how it ended."""

    room_id: str
    event_id: str
    sender: str
    command: str
    args: Mapping[str, Any]
    outcome: Outcome
    detail: str
    request_id: str


@frozen
class Verification:
    entries: int
    first_broken: int | None
    reason: str
    head_seq: int
    head_hash: str

    @property
    def ok(self) -> bool:
        return self.first_broken is None


class AuditLog:
    """Appends entries and reads them back; never updates or deletes one."""

    def __init__(self, db: Database, log: logging.Logger) -> None:
        self.db = db
        self.log = log
        self._lock = asyncio.Lock()

    async def append(self, record: AuditRecord) -> AuditEntry:
        args_text = canonical(scrub(record.args))
        async with self._lock, self.db.acquire() as conn, conn.transaction():
            head = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id=1")
            seq = int(head["seq"]) + 1 if head else 1
            prev_hash = str(head["hash"]) if head else GENESIS
            ts = int(time.time() * 1000)
            digest = entry_hash(
                seq=seq,
                ts=ts,
                room_id=record.room_id,
                event_id=record.event_id,
                sender=record.sender,
                command=record.command,
                args=args_text,
                outcome=record.outcome.value,
                detail=record.detail,
                request_id=record.request_id,
                prev_hash=prev_hash,
            )
            await conn.execute(
                "INSERT INTO audit_log (seq, ts, room_id, event_id, sender, command, args, "
                "outcome, detail, request_id, prev_hash, hash) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                seq,
                ts,
                record.room_id,
                record.event_id,
                record.sender,
                record.command,
                args_text,
                record.outcome.value,
                record.detail,
                record.request_id,
                prev_hash,
                digest,
            )
            if head:
                await conn.execute("UPDATE audit_head SET seq=$1, hash=$2 WHERE id=1", seq, digest)
            else:
                await conn.execute(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2)", seq, digest
                )
        self.log.debug(
            "audit #%d %s %s by %s", seq, record.command, record.outcome.value, record.sender
        )
        return AuditEntry(
            seq=seq,
            ts=ts,
            room_id=record.room_id,
            event_id=record.event_id,
            sender=record.sender,
            command=record.command,
            args=args_text,
            outcome=record.outcome.value,
            detail=record.detail,
            request_id=record.request_id,
            prev_hash=prev_hash,
            hash=digest,
        )

    async def recent(
        self, *, sender: str | None = None, since_ms: int | None = None, limit: int = 20
    ) -> list[AuditEntry]:
        """The newest entries first, optionally only one sender's or only after a time."""
        rows = await self.db.fetch(
            "SELECT seq, ts, room_id, event_id, sender, command, args, outcome, detail, "
            "request_id, prev_hash, hash FROM audit_log "
            "WHERE ($1 = '' OR sender = $1) AND ts >= $2 ORDER BY seq DESC LIMIT $3",
            sender or "",
            since_ms or 0,
            limit,
        )
        return [AuditEntry.from_row(row) for row in rows]

    async def after(
        self, *, seq: int = 0, since_ms: int = 0, page: int = 500
    ) -> AsyncIterator[AuditEntry]:
        """Every entry with a higher sequence number (and not older than ``since_ms``)."""
        last = seq
        while True:
            rows = await self.db.fetch(
                "SELECT seq, ts, room_id, event_id, sender, command, args, outcome, detail, "
                "request_id, prev_hash, hash FROM audit_log "
                "WHERE seq > $1 AND ts >= $2 ORDER BY seq LIMIT $3",
                last,
                since_ms,
                page,
            )
            for row in rows:
                entry = AuditEntry.from_row(row)
                last = entry.seq
                yield entry
            if len(rows) < page:
                return

    async def head(self) -> tuple[int, str]:
        row = await self.db.fetchrow("SELECT seq, hash FROM audit_head WHERE id=1")
        return (int(row["seq"]), str(row["hash"])) if row else (0, GENESIS)

    async def verify(self) -> Verification:
        """Recompute the chain from the first entry; report the first sequence that breaks."""
        head_seq, head_hash = await self.head()
        expected_seq, prev_hash, count = 1, GENESIS, 0

        def broken(seq: int, reason: str) -> Verification:
            return Verification(count, seq, reason, head_seq, head_hash)

        async for entry in self.after():
            count += 1
            if entry.seq != expected_seq:
                return broken(expected_seq, f"entry {expected_seq} is missing")
            if entry.prev_hash != prev_hash:
                return broken(entry.seq, f"entry {entry.seq} does not follow the one before it")
            if entry.expected_hash() != entry.hash:
                return broken(entry.seq, f"entry {entry.seq} was altered")
            expected_seq, prev_hash = entry.seq + 1, entry.hash
        last_seq = expected_seq - 1
        if last_seq < head_seq:
            return broken(last_seq + 1, f"entries {last_seq + 1} to {head_seq} are missing")
        if last_seq > head_seq or prev_hash != head_hash:
            return broken(head_seq or 1, "the recorded head does not match the last entry")
        return Verification(count, None, "", head_seq, head_hash)
