"""The registrar store on SQLite and PostgreSQL: queries, status, atomic claims."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from mautrix.util.async_db import Database

from dmz_api.registrar.store import GuestRow, RegistrarStore, TokenRow

Row = TypeVar("Row", TokenRow, GuestRow)

NOW = 1_700_000_000_000
HOUR = 3_600_000


def token(
    token_id: str = "a" * 12, *, sponsor: str = "@alice:corp.example", **changes: object
) -> TokenRow:
    row = TokenRow(
        id=token_id,
        token_hash=token_id * 5,
        sponsor=sponsor,
        note="",
        api_client="bot",
        homeserver_kind="matrix",
        uses_allowed=1,
        uses_completed=0,
        pending=0,
        in_flight=0,
        claim_expires_at=0,
        created_at=NOW,
        expires_at=NOW + HOUR,
        revoked_at=None,
        revoked_by=None,
        hs_state="none",
    )
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]


def guest(user_id: str, token_id: str, sponsor: str = "@alice:corp.example") -> GuestRow:
    return GuestRow(user_id, sponsor, token_id, NOW, "active", None, None)


@pytest.fixture
def pg_store(any_db: Database) -> RegistrarStore:
    return RegistrarStore(any_db)


async def test_insert_and_read_back(pg_store: RegistrarStore) -> None:
    row = token(note="for the auditors")
    await pg_store.insert_token(row)
    assert await pg_store.get_token(row.id) == row
    assert await pg_store.get_token_by_hash(row.token_hash) == row
    assert await pg_store.get_token("b" * 12) is None


async def test_status_and_list_filters(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token("a" * 12, created_at=NOW + 1))
    await pg_store.insert_token(token("b" * 12, uses_completed=1, created_at=NOW + 2))
    await pg_store.insert_token(token("c" * 12, expires_at=NOW - 1, created_at=NOW + 3))
    await pg_store.insert_token(
        token("d" * 12, revoked_at=NOW, revoked_by="x", sponsor="@bob:corp", created_at=NOW + 4)
    )
    everything = await pg_store.list_tokens(NOW, status=None, sponsor=None, limit=10)
    assert [row.id[0] for row in everything] == ["d", "c", "b", "a"]
    assert [row.status(NOW) for row in everything] == ["revoked", "expired", "used", "active"]
    for status, expected in [("active", "a"), ("used", "b"), ("expired", "c"), ("revoked", "d")]:
        found = await pg_store.list_tokens(NOW, status=status, sponsor=None, limit=10)
        assert [row.id[0] for row in found] == [expected]
    mine = await pg_store.list_tokens(NOW, status=None, sponsor="@bob:corp", limit=10)
    assert [row.id[0] for row in mine] == ["d"]
    assert len(await pg_store.list_tokens(NOW, status=None, sponsor=None, limit=2)) == 2


async def test_revoke_once_and_sponsor_revoke(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token("a" * 12))
    await pg_store.insert_token(token("b" * 12))
    await pg_store.insert_token(token("c" * 12, uses_completed=1))
    await pg_store.insert_token(token("e" * 12, sponsor="@bob:corp"))
    revoked = await pg_store.revoke("a" * 12, NOW, "@carol:corp")
    assert revoked is not None and revoked.revoked_by == "@carol:corp"
    assert await pg_store.revoke("a" * 12, NOW, "@carol:corp") is None
    rows = await pg_store.revoke_active_of_sponsor("@alice:corp.example", NOW, "@it:corp")
    assert [row.id for row in rows] == ["b" * 12]  # a already revoked, c used
    assert await pg_store.revoke_active_of_sponsor("@alice:corp.example", NOW, "@it:corp") == []
    unchanged = await pg_store.get_token("e" * 12)
    assert unchanged is not None and unchanged.revoked_at is None


async def test_claim_release_complete(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token(uses_allowed=2))
    tid = "a" * 12
    first = await pg_store.claim(tid, NOW, 60_000)
    second = await pg_store.claim(tid, NOW, 60_000)
    assert first is not None and second is not None and second.in_flight == 2
    assert await pg_store.claim(tid, NOW, 60_000) is None
    await pg_store.release(tid)
    assert await pg_store.claim(tid, NOW, 60_000) is not None
    await pg_store.complete_use(tid)
    await pg_store.complete_use(tid)
    row = await pg_store.get_token(tid)
    assert row is not None and (row.uses_completed, row.in_flight) == (2, 0)
    assert row.status(NOW) == "used"
    assert await pg_store.claim(tid, NOW, 60_000) is None
    await pg_store.release(tid)  # never below zero
    row = await pg_store.get_token(tid)
    assert row is not None and row.in_flight == 0


async def test_claim_refused_when_expired_revoked_or_pending(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token("a" * 12, expires_at=NOW))
    await pg_store.insert_token(token("b" * 12, revoked_at=NOW))
    await pg_store.insert_token(token("c" * 12, pending=1))
    for tid in ("a", "b", "c"):
        assert await pg_store.claim(tid * 12, NOW, 60_000) is None


async def test_stale_claim_lapses_with_its_lease(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token())
    tid = "a" * 12
    assert await pg_store.claim(tid, NOW, 60_000) is not None
    assert await pg_store.claim(tid, NOW + 59_999, 60_000) is None
    revived = await pg_store.claim(tid, NOW + 60_000, 60_000)
    assert revived is not None and revived.in_flight == 1


async def test_concurrent_claims_grant_exactly_the_uses(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token(uses_allowed=3))
    results = await asyncio.gather(*(pg_store.claim("a" * 12, NOW, 60_000) for _ in range(60)))
    assert sum(result is not None for result in results) == 3


async def test_adopt_never_lowers_completed(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token(uses_allowed=3, uses_completed=2, pending=1, hs_state="live"))
    await pg_store.adopt("a" * 12, 1)
    row = await pg_store.get_token("a" * 12)
    assert row is not None and (row.uses_completed, row.pending, row.hs_state) == (2, 0, "adopting")
    await pg_store.adopt("a" * 12, 3)
    row = await pg_store.get_token("a" * 12)
    assert row is not None and row.uses_completed == 3
    await pg_store.insert_token(token("b" * 12))
    await pg_store.adopt("b" * 12, 1)  # not a legacy token: untouched
    row = await pg_store.get_token("b" * 12)
    assert row is not None and (row.uses_completed, row.hs_state) == (0, "none")


async def test_tokens_to_sync(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token("a" * 12, hs_state="live"))
    await pg_store.insert_token(token("b" * 12, hs_state="live", uses_completed=1))
    await pg_store.insert_token(token("c" * 12, hs_state="live", revoked_at=NOW))
    await pg_store.insert_token(token("d" * 12, hs_state="deleted", revoked_at=NOW))
    await pg_store.insert_token(token("e" * 12))
    await pg_store.insert_token(token("f" * 12, hs_state="adopting"))
    # Every legacy token still (possibly) native, used up or not.
    found = sorted(row.id[0] for row in await pg_store.tokens_to_sync())
    assert found == ["a", "b", "c", "f"]


async def test_guests(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token("a" * 12, uses_allowed=5))
    await pg_store.insert_token(token("b" * 12, sponsor="@bob:corp"))
    await pg_store.insert_guest(guest("@g1:dmz.test", "a" * 12))
    await pg_store.insert_guest(guest("@g2:dmz.test", "a" * 12))
    await pg_store.insert_guest(guest("@g3:dmz.test", "b" * 12, sponsor="@bob:corp"))
    assert await pg_store.guests_of_tokens(["a" * 12, "b" * 12, "c" * 12]) == {
        "a" * 12: ["@g1:dmz.test", "@g2:dmz.test"],
        "b" * 12: ["@g3:dmz.test"],
    }
    assert await pg_store.guests_of_tokens([]) == {}
    assert await pg_store.mark_guest_deactivated("@g1:dmz.test", NOW, "@it:corp")
    assert not await pg_store.mark_guest_deactivated("@g1:dmz.test", NOW, "@it:corp")
    got = await pg_store.get_guest("@g1:dmz.test")
    assert got is not None and (got.status, got.deactivated_by) == ("deactivated", "@it:corp")
    active = await pg_store.list_guests(sponsor="@alice:corp.example", status="active", limit=10)
    assert [g.user_id for g in active] == ["@g2:dmz.test"]
    assert len(await pg_store.list_guests(sponsor=None, status=None, limit=10)) == 3


async def test_idempotency_records(pg_store: RegistrarStore) -> None:
    assert await pg_store.claim_idempotency_key("bot", "k1", "h", NOW)
    assert not await pg_store.claim_idempotency_key("bot", "k1", "h", NOW)
    assert await pg_store.claim_idempotency_key("other-client", "k1", "h", NOW)
    record = await pg_store.get_idempotency("bot", "k1")
    assert record is not None and record.token_id is None
    assert not await pg_store.drop_abandoned_idempotency_key("bot", "k1", NOW)
    assert await pg_store.drop_abandoned_idempotency_key("bot", "k1", NOW + 1)
    assert await pg_store.claim_idempotency_key("bot", "k1", "h", NOW)
    await pg_store.insert_token(token())
    await pg_store.complete_idempotency("bot", "k1", "a" * 12, "sealed")
    await pg_store.drop_idempotency_key("bot", "k1")  # a finished record is kept
    record = await pg_store.get_idempotency("bot", "k1")
    assert record is not None and (record.token_id, record.sealed) == ("a" * 12, "sealed")
    await pg_store.purge_idempotency(NOW + 1)
    assert await pg_store.get_idempotency("bot", "k1") is None


async def test_transaction_rolls_back(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token())
    with pytest.raises(RuntimeError):
        async with pg_store.transaction():
            await pg_store.complete_use("a" * 12)
            raise RuntimeError("boom")
    row = await pg_store.get_token("a" * 12)
    assert row is not None and row.uses_completed == 0


async def all_pages(
    fetch: Callable[..., Awaitable[list[Row]]],
    position: Callable[[Row], tuple[int, str]],
    limit: int,
) -> list[list[Row]]:
    """Follow positions page by page, as the API does with its cursor."""
    pages: list[list[Row]] = []
    after = None
    for _ in range(100):
        page = await fetch(limit=limit, after=after)
        pages.append(page)
        if len(page) < limit:
            return pages
        after = position(page[-1])
    raise AssertionError("the pages never end")


def token_position(row: TokenRow) -> tuple[int, str]:
    return row.created_at, row.id


async def test_token_pages_follow_one_another(pg_store: RegistrarStore) -> None:
    # 25 tokens minted at three instants (12, 8 and 5 of them), in no particular order:
    # pages of 10 break inside runs of equal created_at.
    rng = random.Random(25)
    times = [NOW] * 12 + [NOW + 1] * 8 + [NOW + 2] * 5
    rng.shuffle(times)
    for created_at in times:
        await pg_store.insert_token(token(rng.randbytes(6).hex(), created_at=created_at))
    everything = await pg_store.list_tokens(NOW, status=None, sponsor=None, limit=100)
    keys = [(row.created_at, row.id) for row in everything]
    assert keys == sorted(keys, key=lambda key: (-key[0], key[1])) and len(set(keys)) == 25

    async def fetch(limit: int, after: tuple[int, str] | None) -> list[TokenRow]:
        return await pg_store.list_tokens(NOW, status=None, sponsor=None, limit=limit, after=after)

    pages = await all_pages(fetch, token_position, 10)
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [row for page in pages for row in page] == everything
    assert pages[0][-1].created_at == pages[1][0].created_at == NOW + 1
    assert pages[1][-1].created_at == pages[2][0].created_at == NOW


async def test_token_pages_keep_their_filters(pg_store: RegistrarStore) -> None:
    for n in range(12):
        await pg_store.insert_token(
            token(
                f"{n:012x}",
                sponsor="@bob:corp" if n % 4 == 0 else "@alice:corp.example",
                revoked_at=NOW if n % 3 == 0 else None,
                created_at=NOW + n // 5,
            )
        )

    async def fetch(limit: int, after: tuple[int, str] | None) -> list[TokenRow]:
        return await pg_store.list_tokens(
            NOW, status="active", sponsor="@alice:corp.example", limit=limit, after=after
        )

    wanted = await fetch(100, None)
    assert [row.id[-1] for row in wanted] == ["a", "b", "5", "7", "1", "2"]
    pages = await all_pages(fetch, token_position, 4)
    assert [len(page) for page in pages] == [4, 2]
    assert [row for page in pages for row in page] == wanted


async def test_guest_pages_follow_one_another(pg_store: RegistrarStore) -> None:
    await pg_store.insert_token(token(uses_allowed=30))
    # Case and punctuation that collations order differently: pages must follow the
    # database's own order, whatever it is.
    names = [f"@{prefix}{n}:dmz.test" for n in range(5) for prefix in ("g", "G", "g_", "g-", "g.")]
    for n, user_id in enumerate(names):
        await pg_store.insert_guest(
            dataclasses.replace(guest(user_id, "a" * 12), created_at=NOW + n // 10)
        )
    everything = await pg_store.list_guests(sponsor=None, status=None, limit=100)
    assert sorted(g.user_id for g in everything) == sorted(names)
    assert [g.created_at for g in everything] == [NOW + 2] * 5 + [NOW + 1] * 10 + [NOW] * 10

    async def fetch(limit: int, after: tuple[int, str] | None) -> list[GuestRow]:
        return await pg_store.list_guests(sponsor=None, status=None, limit=limit, after=after)

    for limit in (1, 3, 10):
        pages = await all_pages(fetch, lambda g: (g.created_at, g.user_id), limit)
        assert [g for page in pages for g in page] == everything, f"pages of {limit}"
