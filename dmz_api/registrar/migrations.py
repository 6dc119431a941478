"""Registrar schema. Each step is frozen once shipped; add a new step for every change.

Steps are registered in order with ``@upgrade_table.register(description=...)``, the form
the plugin's ``migrations.py`` uses (mautrix's decorator; its keywords do not depend on
the order of ``register``'s positional arguments).
"""

from __future__ import annotations

from mautrix.util.async_db import Connection

from ..db import role_upgrade_table

upgrade_table = role_upgrade_table("registrar")


@upgrade_table.register(description="Tokens, guests and idempotent mint replies")
async def upgrade_v1(conn: Connection) -> None:
    # token_hash is the hex SHA-256 of the token; the plaintext is never stored.
    # in_flight/claim_expires_at: registrations under way on the page (see store.claim).
    # hs_state: "live"/"deleted" for native homeserver tokens, "none" when only we know it.
    await conn.execute(
        """CREATE TABLE registrar_tokens (
            id               TEXT PRIMARY KEY,
            token_hash       TEXT NOT NULL UNIQUE,
            sponsor          TEXT NOT NULL,
            note             TEXT NOT NULL DEFAULT '',
            api_client       TEXT NOT NULL,
            homeserver_kind  TEXT NOT NULL,
            uses_allowed     INTEGER NOT NULL,
            uses_completed   INTEGER NOT NULL DEFAULT 0,
            pending          INTEGER NOT NULL DEFAULT 0,
            in_flight        INTEGER NOT NULL DEFAULT 0,
            claim_expires_at BIGINT NOT NULL DEFAULT 0,
            created_at       BIGINT NOT NULL,
            expires_at       BIGINT NOT NULL,
            revoked_at       BIGINT,
            revoked_by       TEXT,
            hs_state         TEXT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX registrar_tokens_sponsor ON registrar_tokens (sponsor)")
    await conn.execute("CREATE INDEX registrar_tokens_created ON registrar_tokens (created_at)")
    await conn.execute(
        """CREATE TABLE registrar_guests (
            user_id        TEXT PRIMARY KEY,
            sponsor        TEXT NOT NULL,
            token_id       TEXT NOT NULL REFERENCES registrar_tokens (id),
            created_at     BIGINT NOT NULL,
            status         TEXT NOT NULL,
            deactivated_at BIGINT,
            deactivated_by TEXT
        )"""
    )
    await conn.execute("CREATE INDEX registrar_guests_sponsor ON registrar_guests (sponsor)")
    await conn.execute("CREATE INDEX registrar_guests_token ON registrar_guests (token_id)")
    # sealed: the minted token encrypted (AES-GCM) so a retried mint can return it again.
    await conn.execute(
        """CREATE TABLE registrar_idempotency (
            api_client   TEXT NOT NULL,
            idem_key     TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            token_id     TEXT,
            sealed       TEXT,
            created_at   BIGINT NOT NULL,
            PRIMARY KEY (api_client, idem_key)
        )"""
    )


@upgrade_table.register(description="Shared rate limits of the onboarding page")
async def upgrade_v2(conn: Connection) -> None:
    # The onboarding page's token buckets when replicas share PostgreSQL (ratelimit.py);
    # updated is wall-clock seconds, allowed the outcome of the last request.
    await conn.execute(
        """CREATE TABLE registrar_rate_buckets (
            client  TEXT PRIMARY KEY,
            tokens  DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL,
            allowed BOOLEAN NOT NULL
        )"""
    )
    await conn.execute(
        "CREATE INDEX registrar_rate_buckets_updated ON registrar_rate_buckets (updated)"
    )


@upgrade_table.register(description="Rooms a token's guests are invited to, and a feed order")
async def upgrade_v3(conn: Connection) -> None:
    # invites: JSON list of room IDs the bot invites each guest of this token into.
    # notify: where the bot tells the sponsor of a registration ("dm", a room ID, "" for nowhere).
    await conn.execute("ALTER TABLE registrar_tokens ADD COLUMN invites TEXT NOT NULL DEFAULT '[]'")
    await conn.execute("ALTER TABLE registrar_tokens ADD COLUMN notify TEXT NOT NULL DEFAULT ''")
    # The registrations feed reads guests oldest first from a (created_at, user_id) cursor.
    await conn.execute(
        "CREATE INDEX registrar_guests_feed ON registrar_guests (created_at, user_id)"
    )


@upgrade_table.register(description="Guests that expire")
async def upgrade_v4(conn: Connection) -> None:
    # guest_expires_in: seconds each guest of this token keeps their account (0: for good).
    await conn.execute(
        "ALTER TABLE registrar_tokens ADD COLUMN guest_expires_in BIGINT NOT NULL DEFAULT 0"
    )
    # expires_at: when the expiry task deactivates the guest (NULL: never).
    await conn.execute("ALTER TABLE registrar_guests ADD COLUMN expires_at BIGINT")
    await conn.execute(
        "CREATE INDEX registrar_guests_expiry ON registrar_guests (status, expires_at)"
    )


@upgrade_table.register(description="Projects: guests offboarded together")
async def upgrade_v5(conn: Connection) -> None:
    # project: a name staff give a token (the bot's --project) so that its guests can be
    # listed and offboarded together; "" for none.
    await conn.execute("ALTER TABLE registrar_tokens ADD COLUMN project TEXT NOT NULL DEFAULT ''")
    await conn.execute("CREATE INDEX registrar_tokens_project ON registrar_tokens (project)")
