"""Gateway schema. Each step is frozen once shipped; add a new step for every change.

Steps are registered in order with ``@upgrade_table.register(description=...)``, as in
``dmz_api/registrar/migrations.py`` and the plugin.
"""

from __future__ import annotations

import time

from mautrix.util.async_db import Connection, Scheme

from ..db import role_upgrade_table
from . import partitions

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


@upgrade_table.register(description="Decision log: the event id and actions of each decision")
async def upgrade_v4(conn: Connection, scheme: Scheme) -> None:
    # The event a decision judged (events inside federation transactions and membership
    # requests) and the actions it carried (policy/actions.py), comma-separated.
    await conn.execute("ALTER TABLE gateway_decisions ADD COLUMN event_id TEXT")
    await conn.execute("ALTER TABLE gateway_decisions ADD COLUMN actions TEXT")
    await conn.execute("CREATE INDEX gateway_decisions_event ON gateway_decisions (event_id, id)")


@upgrade_table.register(description="Decision log at volume: allow aggregates, day partitions")
async def upgrade_v5(conn: Connection, scheme: Scheme) -> None:
    sqlite = scheme == Scheme.SQLITE
    id_column = "id INTEGER PRIMARY KEY AUTOINCREMENT" if sqlite else "id BIGSERIAL PRIMARY KEY"
    # Allows counted per minute (ts: the minute's first ms) and key (decisions.py).
    await conn.execute(
        f"""CREATE TABLE gateway_decision_allows (
            {id_column},
            ts       BIGINT NOT NULL,
            source   TEXT NOT NULL,
            class    TEXT NOT NULL,
            origin   TEXT,
            user_id  TEXT,
            method   TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            room     TEXT,
            version  BIGINT NOT NULL,
            count    BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX gateway_decision_allows_ts ON gateway_decision_allows (ts)")
    await conn.execute(
        "CREATE INDEX gateway_decision_allows_origin ON gateway_decision_allows (origin, id)"
    )
    await conn.execute(
        "CREATE INDEX gateway_decision_allows_user ON gateway_decision_allows (user_id, id)"
    )
    # Small named values: export_hold, the earliest ts a stream failed to carry (retention
    # keeps everything from there on).
    await conn.execute(
        "CREATE TABLE gateway_decision_log_state (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"
    )
    if sqlite:
        return
    # PostgreSQL: the same table, partitioned by day, the rows copied over. LIKE carries
    # every column (and the id sequence default) whatever steps came before.
    for index in ("ts", "outcome", "origin", "rule", "event"):
        await conn.execute(f"DROP INDEX IF EXISTS gateway_decisions_{index}")
    await conn.execute("ALTER TABLE gateway_decisions RENAME TO gateway_decisions_v3")
    await conn.execute("ALTER INDEX gateway_decisions_pkey RENAME TO gateway_decisions_v3_pkey")
    await conn.execute(
        "CREATE TABLE gateway_decisions (LIKE gateway_decisions_v3 INCLUDING DEFAULTS,"
        " PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)"
    )
    await conn.execute("ALTER SEQUENCE gateway_decisions_id_seq OWNED BY gateway_decisions.id")
    now = int(time.time() * 1000)
    first = await conn.fetchval("SELECT MIN(ts) FROM gateway_decisions_v3")
    last = await conn.fetchval("SELECT MAX(ts) FROM gateway_decisions_v3")
    span = partitions.days(min(int(first), now) if first is not None else now, now + 86_400_000)
    if last is not None and int(last) > now + 86_400_000:
        span += partitions.days(now + 2 * 86_400_000, int(last))
    for day in span:
        await conn.execute(partitions.create_sql(day))
    await conn.execute(f"CREATE TABLE {partitions.DEFAULT} PARTITION OF gateway_decisions DEFAULT")
    await conn.execute("INSERT INTO gateway_decisions SELECT * FROM gateway_decisions_v3")
    await conn.execute("DROP TABLE gateway_decisions_v3")
    await conn.execute("CREATE INDEX gateway_decisions_ts ON gateway_decisions (ts)")
    await conn.execute("CREATE INDEX gateway_decisions_outcome ON gateway_decisions (outcome, id)")
    await conn.execute("CREATE INDEX gateway_decisions_origin ON gateway_decisions (origin, id)")
    await conn.execute("CREATE INDEX gateway_decisions_rule ON gateway_decisions (rule_id, id)")
    await conn.execute("CREATE INDEX gateway_decisions_event ON gateway_decisions (event_id, id)")


@upgrade_table.register(description="Rules with a life span: not_before and expires_at")
async def upgrade_v6(conn: Connection, scheme: Scheme) -> None:
    # Milliseconds since the epoch, NULL for no bound (policy/rules.py, Rule.active).
    await conn.execute("ALTER TABLE gateway_rules ADD COLUMN not_before BIGINT")
    await conn.execute("ALTER TABLE gateway_rules ADD COLUMN expires_at BIGINT")
