"""Schema of the plugin database. Shipped steps are never edited; add a new one instead."""

from __future__ import annotations

from mautrix.util.async_db import Connection, Scheme, UpgradeTable

upgrade_table = UpgradeTable(version_table_name="bastion_version")


@upgrade_table.register(description="Audit trail and direct-message rooms")
async def upgrade_v1(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        """CREATE TABLE audit_log (
            seq        BIGINT PRIMARY KEY,
            ts         BIGINT NOT NULL,
            room_id    TEXT   NOT NULL,
            event_id   TEXT   NOT NULL,
            sender     TEXT   NOT NULL,
            command    TEXT   NOT NULL,
            args       TEXT   NOT NULL,
            outcome    TEXT   NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
            detail     TEXT   NOT NULL,
            request_id TEXT   NOT NULL,
            prev_hash  TEXT   NOT NULL,
            hash       TEXT   NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX audit_log_sender_idx ON audit_log (sender, seq)")
    await conn.execute("CREATE INDEX audit_log_ts_idx ON audit_log (ts)")
    # The newest entry, so that removing entries from the end of the chain is noticed too.
    await conn.execute(
        """CREATE TABLE audit_head (
            id   INTEGER PRIMARY KEY CHECK (id = 1),
            seq  BIGINT NOT NULL,
            hash TEXT   NOT NULL
        )"""
    )
    # Append-only in the database as well: changing history takes dropping these first.
    if scheme == Scheme.SQLITE:
        for action in ("UPDATE", "DELETE"):
            await conn.execute(
                f"""CREATE TRIGGER audit_log_no_{action.lower()} BEFORE {action} ON audit_log
                BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"""
            )
    else:
        await conn.execute(
            """CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION 'audit_log is append-only'; END;
            $$ LANGUAGE plpgsql"""
        )
        await conn.execute(
            """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"""
        )
    await conn.execute(
        """CREATE TABLE dm_room (
            user_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL
        )"""
    )


@upgrade_table.register(description="Pending confirmations, kept across restarts")
async def upgrade_v2(conn: Connection) -> None:
    # One row per request awaiting ✅; confirmed_at is set once, by one conditional UPDATE.
    await conn.execute(
        """CREATE TABLE confirmation (
            request_event TEXT   PRIMARY KEY,
            prompt_event  TEXT,
            thread_root   TEXT,
            room_id       TEXT   NOT NULL,
            sender        TEXT   NOT NULL,
            command       TEXT   NOT NULL,
            args          TEXT   NOT NULL,
            payload       TEXT   NOT NULL,
            expires_at    BIGINT NOT NULL,
            confirmed_at  BIGINT
        )"""
    )
    await conn.execute("CREATE INDEX confirmation_prompt_idx ON confirmation (prompt_event)")


@upgrade_table.register(description="Rule expiry notices already posted (plugin/expiry.py)")
async def upgrade_v3(conn: Connection) -> None:
    # One row per notice posted: a restart does not repeat it; a new expires_at is new.
    await conn.execute(
        """CREATE TABLE rule_expiry_notice (
            rule_id      TEXT   NOT NULL,
            expires_at   TEXT   NOT NULL,
            stage        TEXT   NOT NULL CHECK (stage IN ('soon', 'expired')),
            announced_at BIGINT NOT NULL,
            PRIMARY KEY (rule_id, expires_at, stage)
        )"""
    )


@upgrade_table.register(description="Following up registrations: feed position, invites, notices")
async def upgrade_v4(conn: Connection) -> None:
    # Where the bot is in the registrar's registrations feed (one row).
    await conn.execute(
        """CREATE TABLE registration_cursor (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            since_ms   BIGINT NOT NULL,
            after_user TEXT   NOT NULL
        )"""
    )
    # One row per guest and thing to do for them: a room ID to invite them to, or 'notice'
    # (telling the sponsor). Claimed once by one conditional upsert; a claim older than its
    # lease belongs to a bot that stopped mid-way and may be taken again.
    await conn.execute(
        """CREATE TABLE guest_followup (
            user_id    TEXT    NOT NULL,
            item       TEXT    NOT NULL,
            state      TEXT    NOT NULL CHECK (state IN ('claimed', 'done', 'failed')),
            claimed_at BIGINT  NOT NULL,
            attempts   INTEGER NOT NULL DEFAULT 1,
            detail     TEXT    NOT NULL DEFAULT '',
            PRIMARY KEY (user_id, item)
        )"""
    )
