"""The hash-chained audit trail: append, query, verify; tampering found by sequence number."""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from mautrix.util.async_db import Database

from plugin.audit import GENESIS, AuditLog, AuditRecord, Outcome, scrub
from plugin.commands import AuditCommands
from plugin.migrations import upgrade_table

from .conftest import AUDITOR, EXPORT_KEY, NOBODY, STAFF, WEBAPP_URL, Chat


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.create(f"sqlite:{tmp_path / 'audit.db'}", upgrade_table=upgrade_table)
    await database.start()
    yield database
    await database.stop()


@pytest.fixture
async def trail(db: Database) -> AuditLog:
    log = AuditLog(db, logging.getLogger("test.audit"))
    for n in range(1, 6):
        await log.append(
            AuditRecord(
                room_id="!control:corp.example",
                event_id=f"$e{n}",
                sender=STAFF,
                command="token generate",
                args={"uses": n, "note": f"n{n}"},
                outcome=Outcome.OK,
                detail=f"token t{n}",
                request_id=f"r{n}",
            )
        )
    return log


async def unlock(db: Database) -> None:
    """What someone rewriting history has to do first."""
    await db.execute("DROP TRIGGER audit_log_no_update")
    await db.execute("DROP TRIGGER audit_log_no_delete")


async def test_chain_links_every_entry(trail: AuditLog) -> None:
    entries = [entry async for entry in trail.after()]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    assert all(e.expected_hash() == e.hash for e in entries)
    result = await trail.verify()
    assert result.ok and result.entries == 5
    assert (result.head_seq, result.head_hash) == (5, entries[-1].hash)


async def test_empty_trail_verifies(db: Database) -> None:
    result = await AuditLog(db, logging.getLogger("t")).verify()
    assert result.ok and result.entries == 0 and result.head_seq == 0


async def test_rows_cannot_be_changed_through_sql(trail: AuditLog, db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await db.execute("UPDATE audit_log SET outcome='refused' WHERE seq=2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await db.execute("DELETE FROM audit_log WHERE seq=2")


@pytest.mark.parametrize(
    ("column", "value"),
    [("outcome", "'refused'"), ("detail", "'token other'"), ("sender", "'@x:corp.example'"),
     ("args", "'{}'"), ("ts", "ts + 1")],
)  # fmt: skip
async def test_edited_row_is_found(trail: AuditLog, db: Database, column: str, value: str) -> None:
    await unlock(db)
    await db.execute(f"UPDATE audit_log SET {column}={value} WHERE seq=3")  # noqa: S608
    result = await trail.verify()
    assert result.first_broken == 3
    assert result.reason == "entry 3 was altered"


async def test_edited_row_with_recomputed_hash_breaks_the_next_link(
    trail: AuditLog, db: Database
) -> None:
    await unlock(db)
    [entry] = [e async for e in trail.after(seq=2) if e.seq == 3]
    forged = entry.__class__(**{**entry.to_json(), "detail": "forged"})
    await db.execute(
        "UPDATE audit_log SET detail='forged', hash=$1 WHERE seq=3", forged.expected_hash()
    )
    result = await trail.verify()
    assert result.first_broken == 4
    assert result.reason == "entry 4 does not follow the one before it"


async def test_deleted_row_is_found(trail: AuditLog, db: Database) -> None:
    await unlock(db)
    await db.execute("DELETE FROM audit_log WHERE seq=2")
    result = await trail.verify()
    assert (result.first_broken, result.reason) == (2, "entry 2 is missing")


async def test_deleted_first_row_is_found(trail: AuditLog, db: Database) -> None:
    await unlock(db)
    await db.execute("DELETE FROM audit_log WHERE seq=1")
    assert (await trail.verify()).first_broken == 1


async def test_deleted_and_renumbered_rows_are_found(trail: AuditLog, db: Database) -> None:
    await unlock(db)
    await db.execute("DELETE FROM audit_log WHERE seq=2")
    for seq in (3, 4, 5):
        await db.execute("UPDATE audit_log SET seq=$1 WHERE seq=$2", seq - 1, seq)
    await db.execute("UPDATE audit_head SET seq=4")
    result = await trail.verify()
    assert result.first_broken == 2


async def test_deleted_last_rows_are_found(trail: AuditLog, db: Database) -> None:
    await unlock(db)
    await db.execute("DELETE FROM audit_log WHERE seq >= 4")
    result = await trail.verify()
    assert (result.first_broken, result.reason) == (4, "entries 4 to 5 are missing")


async def test_secrets_are_removed_from_args() -> None:
    args = {
        "token": "abc",
        "api_key": "k",
        "note": "n",
        "token_id": "t1",
        "inner": {"password": "p"},
    }
    assert scrub(args) == {
        "token": "[removed]",
        "api_key": "[removed]",
        "note": "n",
        "token_id": "t1",
        "inner": {"password": "[removed]"},
    }


async def test_recent_filters(trail: AuditLog) -> None:
    await trail.append(
        AuditRecord(
            room_id="!r:x",
            event_id="$x",
            sender=NOBODY,
            command="bastion help",
            args={},
            outcome=Outcome.REFUSED,
            detail="",
            request_id="r",
        )
    )
    assert [e.seq for e in await trail.recent(limit=3)] == [6, 5, 4]
    assert [e.seq for e in await trail.recent(sender=NOBODY)] == [6]
    assert await trail.recent(since_ms=10**15) == []


async def test_audit_command_lists_recent_entries(chat: Chat) -> None:
    await chat.send("!token list")
    await chat.send("!bastion whoami", sender=NOBODY)
    reply = await chat.ask("!audit", sender=AUDITOR)
    lines = reply.splitlines()
    assert "#2" in lines[0] and "whoami" in lines[0] and NOBODY in lines[0]
    assert "#1" in lines[1] and "token list" in lines[1] and "ok" in lines[1]

    reply = await chat.ask(f"!audit --user {STAFF} --since 1h --limit 5", sender=AUDITOR)
    assert "token list" in reply and "whoami" not in reply


async def test_audit_command_needs_the_auditor_role(chat: Chat) -> None:
    reply = await chat.ask("!audit verify")
    assert reply == "You need the auditor role to use `!audit verify`."


async def test_audit_bad_syntax(chat: Chat) -> None:
    reply = await chat.ask("!audit --limit 0", sender=AUDITOR)
    assert reply.startswith("--limit must be a whole number from 1 to 100.")
    reply = await chat.ask("!audit frob", sender=AUDITOR)
    assert reply.startswith("Unknown subcommand 'frob'; there are verify and export.")


async def test_audit_verify_command(chat: Chat) -> None:
    await chat.send("!token list")
    reply = await chat.ask("!audit verify", sender=AUDITOR)
    assert reply.startswith("The audit trail is intact: 1 entry, head #1 `")
    db = chat.plugin.database
    await unlock(db)
    await db.execute("UPDATE audit_log SET detail='nothing' WHERE seq=1")
    reply = await chat.ask("!audit verify", sender=AUDITOR)
    assert reply == "The audit trail is broken at entry #1: entry 1 was altered."
    [entry, *_] = await chat.audit()
    assert (entry.command, entry.detail) == ("audit verify", "broken at #1")


async def test_audit_export_command(chat: Chat, maubot_plugin_config: Any) -> None:
    reply = await chat.ask("!audit export", sender=AUDITOR)
    assert reply.startswith(f"Export: {WEBAPP_URL}/audit.jsonl?since=0")
    assert "Bearer <audit.export_key>" in reply
    assert EXPORT_KEY not in reply

    maubot_plugin_config["audit.export_key"] = ""
    reply = await chat.ask("!audit export", sender=AUDITOR)
    assert reply.startswith("The export is turned off")

    [family] = [f for f in chat.plugin.families if isinstance(f, AuditCommands)]
    family.services = attrs.evolve(family.services, webapp_url=None)
    reply = await chat.ask("!audit export", sender=AUDITOR)
    assert reply == "The plugin's web app is not enabled, so there is no export."
