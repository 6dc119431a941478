"""Gateway schema. Each step is frozen once shipped; add a new step for every change.

Steps are registered in order with ``@upgrade_table.register(description=...)``, as in
``dmz_api/registrar/migrations.py`` and the plugin.
"""

from __future__ import annotations

import time

from mautrix.util.async_db import Connection, Scheme

from ..db import role_upgrade_table

upgrade_table = role_upgrade_table("gateway")


@upgrade_table.register(description="Versioned rules, ruleset history and the decision log")
async def upgrade_v1(conn: Connection, scheme: Scheme) -> None:
    # params is the rule's normalised parameters as JSON text (portable across engines).
    await conn.execute(
        """CREATE TABLE gateway_rules (
            id       TEXT PRIMARY KEY,
            kind     TEXT NOT NULL,
            params   TEXT NOT NULL,
            mode     TEXT NOT NULL,
            enabled  BOOLEAN NOT NULL,
            priority INTEGER NOT NULL,
            note     TEXT NOT NULL DEFAULT '',
            author   TEXT,
            created  BIGINT NOT NULL,
            updated  BIGINT NOT NULL
        )"""
    )
    # One row per ruleset version; diff is JSON {added, removed, changed}.
    await conn.execute(
        """CREATE TABLE gateway_versions (
            version BIGINT PRIMARY KEY,
            author  TEXT,
            created BIGINT NOT NULL,
            reason  TEXT NOT NULL,
            diff    TEXT NOT NULL
        )"""
    )
    await conn.execute(
        "INSERT INTO gateway_versions (version, author, created, reason, diff)"
        " VALUES (0, NULL, $1, 'initial empty ruleset', '{}')",
        int(time.time() * 1000),
    )
    id_column = (
        "id INTEGER PRIMARY KEY AUTOINCREMENT"
        if scheme == Scheme.SQLITE
        else "id BIGSERIAL PRIMARY KEY"
    )
    await conn.execute(
        f"""CREATE TABLE gateway_decisions (
            {id_column},
            ts         BIGINT NOT NULL,
            source     TEXT NOT NULL,
            class      TEXT NOT NULL,
            origin     TEXT,
            user_id    TEXT,
            method     TEXT NOT NULL,
            path       TEXT NOT NULL,
            event_type TEXT,
            room       TEXT,
            rule_id    TEXT,
            mode       TEXT,
            outcome    TEXT NOT NULL,
            latency_us INTEGER NOT NULL,
            version    BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX gateway_decisions_ts ON gateway_decisions (ts)")
    await conn.execute("CREATE INDEX gateway_decisions_outcome ON gateway_decisions (outcome, id)")
    await conn.execute("CREATE INDEX gateway_decisions_origin ON gateway_decisions (origin, id)")
    await conn.execute("CREATE INDEX gateway_decisions_rule ON gateway_decisions (rule_id, id)")


@upgrade_table.register(description="Decision log: the origin as the request spelled it")
async def upgrade_v2(conn: Connection, scheme: Scheme) -> None:
    # The origin as the request spelled it, when that differs from its canonical form.
    await conn.execute("ALTER TABLE gateway_decisions ADD COLUMN origin_raw TEXT")


@upgrade_table.register(description="Protected rooms: the room state the rules are carried into")
async def upgrade_v3(conn: Connection, scheme: Scheme) -> None:
    # One row per protected room and the protections asked for (gateway/protection.py).
    await conn.execute(
        """CREATE TABLE gateway_protected_rooms (
            room_id       TEXT PRIMARY KEY,
            ledger        BOOLEAN NOT NULL,
            acl           BOOLEAN NOT NULL,
            policy_server BOOLEAN NOT NULL,
            author        TEXT,
            created       BIGINT NOT NULL,
            updated       BIGINT NOT NULL
        )"""
    )


@upgrade_table.register(description="Rules with a life span: not_before and expires_at")
async def upgrade_v4(conn: Connection, scheme: Scheme) -> None:
    # Milliseconds since the epoch, NULL for no bound (policy/rules.py, Rule.active).
    await conn.execute("ALTER TABLE gateway_rules ADD COLUMN not_before BIGINT")
    await conn.execute("ALTER TABLE gateway_rules ADD COLUMN expires_at BIGINT")
