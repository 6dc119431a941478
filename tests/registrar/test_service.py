"""Token lifecycle and guest registration in the service, against a fake homeserver."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import Any

import pytest

from dmz_api.errors import Conflict, NotFound, Unavailable
from dmz_api.registrar.crypto import hash_token, new_token
from dmz_api.registrar.homeserver import HomeserverUnavailable
from dmz_api.registrar.service import (
    FormRejected,
    RegistrarService,
    TokenBusy,
    TokenUnusable,
    TryLater,
    Unsupported,
    mint_request_hash,
    validate_localpart,
)
from dmz_api.registrar.store import RegistrarStore, TokenRow

from .conftest import SPONSOR, Clock, make_service
from .fakes import FakeHomeserver

PASSWORD = "correct horse battery"


async def mint(service: RegistrarService, **changes: Any) -> Any:
    args: dict[str, Any] = {
        "sponsor": SPONSOR,
        "api_client": "bot",
        "uses": 1,
        "expires_in": 3600,
        "note": "partner",
    }
    args.update(changes)
    return await service.mint(**args)


async def count_tokens(store: RegistrarStore) -> int:
    return len(await store.list_tokens(0, status=None, sponsor=None, limit=100))


async def test_mint_stores_only_the_hash(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    minted = await mint(service)
    assert minted.url == f"https://dmz.test/register?token={minted.token}"
    assert minted.view.status == "active" and not minted.replayed
    row = await store.get_token(minted.view.row.id)
    assert row is not None and row.token_hash == hash_token(minted.token)
    assert minted.token not in repr(row)
    # The token is the registrar's own: the homeserver is not even asked.
    assert fake_hs.tokens == {} and fake_hs.calls == [] and row.hs_state == "none"
    db_dump = await store.db.fetch("SELECT * FROM registrar_tokens")
    assert minted.token not in repr([dict(r) for r in db_dump])


async def test_matrix_kind_keeps_tokens_to_itself(store: RegistrarStore, clock: Clock) -> None:
    hs = FakeHomeserver(legacy_tokens=False)
    service = make_service(store, hs, clock, kind="matrix")
    minted = await mint(service)
    assert hs.tokens == {} and minted.view.row.hs_state == "none"


async def test_idempotent_mint_replays_the_first_token(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    first = await mint(service, idempotency_key="k-1")
    again = await mint(service, idempotency_key="k-1")
    assert again.replayed and again.token == first.token and again.view.row.id == first.view.row.id
    assert await count_tokens(store) == 1
    other_client = await mint(service, idempotency_key="k-1", api_client="other")
    assert other_client.token != first.token
    with pytest.raises(Conflict, match="different request"):
        await mint(service, idempotency_key="k-1", uses=2)
    sealed = await store.db.fetch("SELECT sealed FROM registrar_idempotency")
    assert all(first.token not in row["sealed"] for row in sealed)


async def test_concurrent_retries_with_one_key_mint_once(
    service: RegistrarService, store: RegistrarStore
) -> None:
    results = await asyncio.gather(
        *(mint(service, idempotency_key="same") for _ in range(10)), return_exceptions=True
    )
    tokens = {r.token for r in results if not isinstance(r, BaseException)}
    assert len(tokens) == 1 and await count_tokens(store) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))


async def test_failed_mint_frees_the_key(
    service: RegistrarService, store: RegistrarStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("database gone")

    with monkeypatch.context() as patch:
        patch.setattr(store, "insert_token", broken)
        with pytest.raises(RuntimeError):
            await mint(service, idempotency_key="k-2")
    assert await store.get_idempotency("bot", "k-2") is None
    assert await count_tokens(store) == 0
    assert not (await mint(service, idempotency_key="k-2")).replayed


async def test_mint_needs_no_homeserver(service: RegistrarService, fake_hs: FakeHomeserver) -> None:
    fake_hs.down = True
    minted = await mint(service)
    assert minted.view.status == "active" and fake_hs.calls == []


async def test_replay_after_the_secret_changed_never_mints_again(
    store: RegistrarStore, fake_hs: FakeHomeserver, clock: Clock
) -> None:
    first = await mint(make_service(store, fake_hs, clock, secret=b"1" * 32), idempotency_key="k")
    restarted = make_service(store, fake_hs, clock, secret=None)
    with pytest.raises(Conflict, match=first.view.row.id):
        await mint(restarted, idempotency_key="k")
    assert await count_tokens(store) == 1


async def test_abandoned_key_is_taken_over(
    service: RegistrarService, store: RegistrarStore, clock: Clock
) -> None:
    # A mint whose process died after taking the key: the record never got its token.
    request_hash = mint_request_hash(SPONSOR, 1, 3600, "partner")
    assert await store.claim_idempotency_key("bot", "k", request_hash, service.now_ms())
    with pytest.raises(Conflict, match="in progress"):
        await mint(service, idempotency_key="k")
    clock.advance(600)
    minted = await mint(service, idempotency_key="k")
    assert not minted.replayed
    assert (await mint(service, idempotency_key="k")).token == minted.token


async def test_register_guest_once(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    minted = await mint(service)
    user_id = await service.register_guest(minted.token, "guest1", PASSWORD, "Guest One")
    assert user_id == "@guest1:dmz.test"
    view = await service.get_token(minted.view.row.id)
    assert view.status == "used" and view.used_by == ("@guest1:dmz.test",)
    guests = await service.list_guests(sponsor=SPONSOR)
    assert [(g.user_id, g.token_id, g.status) for g in guests] == [
        ("@guest1:dmz.test", minted.view.row.id, "active")
    ]
    with pytest.raises(TokenUnusable) as info:
        await service.register_guest(minted.token, "guest2", PASSWORD, None)
    assert info.value.state == "used"
    assert "guest2" not in fake_hs.users


@pytest.mark.parametrize("kind", ["synapse", "matrix"])
async def test_failures_do_not_consume_the_token(
    store: RegistrarStore, clock: Clock, kind: str
) -> None:
    hs = FakeHomeserver(legacy_tokens=kind == "synapse")
    service = make_service(store, hs, clock, kind=kind)
    minted = await mint(service)
    hs.users["taken"] = "x"
    with pytest.raises(FormRejected) as info:
        await service.register_guest(minted.token, "taken", PASSWORD, None)
    assert (info.value.field, info.value.reason) == ("username", "username_taken")
    with pytest.raises(FormRejected) as info:
        await service.register_guest(minted.token, "fine", "weak-password", None)
    assert (info.value.field, info.value.reason) == ("password", "password_weak")
    hs.down = True
    with pytest.raises(TryLater):
        await service.register_guest(minted.token, "fine", PASSWORD, None)
    hs.down = False
    row = await store.get_token(minted.view.row.id)
    assert row is not None and (row.uses_completed, row.in_flight) == (0, 0)
    assert await service.register_guest(minted.token, "fine", PASSWORD, None) == "@fine:dmz.test"


@pytest.mark.parametrize("kind", ["synapse", "matrix"])
async def test_fifty_concurrent_registrations_create_one_account(
    store: RegistrarStore, clock: Clock, kind: str
) -> None:
    hs = FakeHomeserver(legacy_tokens=kind == "synapse", delay=0.05)
    service = make_service(store, hs, clock, kind=kind)
    minted = await mint(service)
    results = await asyncio.gather(
        *(service.register_guest(minted.token, f"racer{i}", PASSWORD, None) for i in range(50)),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, str)]
    assert len(created) == 1 and len(hs.users) == 1
    assert all(isinstance(r, TokenBusy | TokenUnusable) for r in results if not isinstance(r, str))
    view = await service.get_token(minted.view.row.id)
    assert (view.status, view.row.uses_completed, view.row.in_flight) == ("used", 1, 0)


async def test_wrong_static_token_is_not_the_guests_fault(
    store: RegistrarStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    hs = FakeHomeserver(legacy_tokens=False, static_token="wrong")
    service = make_service(store, hs, clock, kind="matrix")
    minted = await mint(service)
    with pytest.raises(TryLater):
        await service.register_guest(minted.token, "guest", PASSWORD, None)
    assert "registrar.homeserver.registration_token" in caplog.text
    assert (await service.get_token(minted.view.row.id)).status == "active"


async def test_lost_answer_counts_when_the_account_appeared(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    minted = await mint(service, uses=2)
    fake_hs.lose_answer = True
    assert await service.register_guest(minted.token, "ghost", PASSWORD, None) == "@ghost:dmz.test"
    row = await store.get_token(minted.view.row.id)
    assert row is not None and (row.uses_completed, row.in_flight) == (1, 0)


async def test_lost_answer_and_homeserver_gone_keeps_the_claim(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver, clock: Clock
) -> None:
    minted = await mint(service)
    fake_hs.lose_answer = True
    original = fake_hs.check_username
    calls = 0

    async def flaky(localpart: str) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            fake_hs.down = True
        await original(localpart)

    fake_hs.check_username = flaky  # type: ignore[method-assign]
    with pytest.raises(TryLater):
        await service.register_guest(minted.token, "maybe", PASSWORD, None)
    row = await store.get_token(minted.view.row.id)
    assert row is not None and row.in_flight == 1  # held until its lease lapses


async def test_unexpected_errors_release_the_claim(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    minted = await mint(service)
    original = fake_hs.complete_registration

    async def crash(*args: Any) -> str:
        raise RuntimeError("bug")

    fake_hs.complete_registration = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await service.register_guest(minted.token, "guest", PASSWORD, None)
    fake_hs.complete_registration = original  # type: ignore[method-assign]
    row = await store.get_token(minted.view.row.id)
    assert row is not None and row.in_flight == 0


async def test_expiry(service: RegistrarService, clock: Clock) -> None:
    minted = await mint(service, expires_in=60)
    clock.advance(61)
    assert (await service.page_token(minted.token))[1] == "expired"
    with pytest.raises(TokenUnusable) as info:
        await service.register_guest(minted.token, "late", PASSWORD, None)
    assert info.value.state == "expired"
    assert [v.row.id for v in await service.list_tokens(status="expired")] == [minted.view.row.id]


async def test_unknown_tokens(service: RegistrarService) -> None:
    assert (await service.page_token("nope"))[1] == "unknown"
    assert (await service.page_token("bad token with spaces"))[1] == "unknown"
    assert (await service.page_token("x" * 65))[1] == "unknown"
    with pytest.raises(NotFound):
        await service.get_token("0" * 12)


async def test_revoke(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    minted = await mint(service)
    view = await service.revoke_token(minted.view.row.id, "@carol:corp")
    assert view.status == "revoked" and view.row.revoked_by == "@carol:corp"
    assert view.row.hs_state == "none" and "delete_token" not in fake_hs.calls
    assert (await service.revoke_token(minted.view.row.id, "@carol:corp")).status == "revoked"
    assert (await service.page_token(minted.token))[1] == "revoked"


async def test_revoke_needs_no_homeserver(
    service: RegistrarService, fake_hs: FakeHomeserver
) -> None:
    minted = await mint(service)
    fake_hs.down = True
    view = await service.revoke_token(minted.view.row.id, "@carol:corp")
    assert view.status == "revoked"
    assert (await service.page_token(minted.token))[1] == "revoked"


async def test_used_token_cannot_be_revoked(service: RegistrarService) -> None:
    minted = await mint(service)
    await service.register_guest(minted.token, "guest", PASSWORD, None)
    with pytest.raises(Conflict, match="already used"):
        await service.revoke_token(minted.view.row.id, "@carol:corp")


async def test_stand_in_refused_is_not_the_guests_fault(
    service: RegistrarService, fake_hs: FakeHomeserver, caplog: pytest.LogCaptureFixture
) -> None:
    minted = await mint(service)
    fake_hs.refuse_stand_in = True
    with pytest.raises(TryLater):
        await service.register_guest(minted.token, "guest", PASSWORD, None)
    assert "registration_requires_token" in caplog.text
    assert (await service.get_token(minted.view.row.id)).row.in_flight == 0
    fake_hs.refuse_stand_in = False
    await service.register_guest(minted.token, "guest", PASSWORD, None)
    assert fake_hs.stage_tokens == [minted.token, minted.token]  # the fake passes it through


# ---- legacy native tokens (minted as Synapse tokens by the old design) ----


async def legacy(
    store: RegistrarStore, hs: FakeHomeserver, uses: int = 1, **changes: Any
) -> tuple[str, str]:
    """A token as the old design left it: a row in hs_state live, a native token on Synapse."""
    token = new_token()
    row = TokenRow(
        id=secrets.token_hex(6),
        token_hash=hash_token(token),
        sponsor=SPONSOR,
        note="legacy",
        api_client="bot",
        homeserver_kind="synapse",
        uses_allowed=uses,
        uses_completed=0,
        pending=0,
        in_flight=0,
        claim_expires_at=0,
        created_at=int(time.time() * 1000),
        expires_at=int(time.time() * 1000) + 3_600_000,
        revoked_at=None,
        revoked_by=None,
        hs_state="live",
    )
    await store.insert_token(dataclasses.replace(row, **changes))
    hs.add_legacy(token, uses)
    return row.id, token


async def test_legacy_tokens_are_adopted_and_then_page_only(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    token_id, token = await legacy(store, fake_hs, uses=3)
    fake_hs.use_elsewhere(token)
    fake_hs.use_elsewhere(token, pending=True)
    view = await service.get_token(token_id)  # every admin read adopts
    # Synapse's completed and pending both count: a pending sign-up may still finish.
    assert (view.status, view.row.uses_completed, view.row.pending) == ("active", 2, 0)
    assert view.row.hs_state == "deleted" and token not in fake_hs.tokens
    assert await service.register_guest(token, "late", PASSWORD, None) == "@late:dmz.test"
    assert (await service.get_token(token_id)).status == "used"


async def test_adoption_stops_the_native_token_before_reading_its_counts(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    token_id, _token = await legacy(store, fake_hs, uses=2)
    original = fake_hs.expire_token

    async def expire_while_a_signup_counts_itself(native: str, at_ms: int) -> bool:
        # A client passed Synapse's check just before; its use is counted only now.
        fake_hs.use_elsewhere(native, pending=True)
        return await original(native, at_ms)

    fake_hs.expire_token = expire_while_a_signup_counts_itself  # type: ignore[method-assign]
    view = await service.get_token(token_id)
    assert view.row.uses_completed == 1  # the late count is in
    calls = [c for c in fake_hs.calls if c.endswith("_token") or c == "list_tokens"]
    assert calls == ["list_tokens", "expire_token", "list_tokens", "delete_token"]


async def test_adoption_never_moves_an_expiry_later(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    soon = service.now_ms() + 10
    token_id, token = await legacy(store, fake_hs)
    fake_hs.tokens[token].expiry_time = soon
    await service.get_token(token_id)
    assert "expire_token" not in fake_hs.calls and token not in fake_hs.tokens


async def test_legacy_token_is_adopted_before_the_page_registers(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    token_id, token = await legacy(store, fake_hs)
    assert await service.register_guest(token, "first", PASSWORD, None) == "@first:dmz.test"
    assert token not in fake_hs.tokens
    row = await store.get_token(token_id)
    assert row is not None and (row.hs_state, row.uses_completed) == ("deleted", 1)


async def test_legacy_token_used_up_elsewhere_is_410(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    _token_id, token = await legacy(store, fake_hs)
    fake_hs.use_elsewhere(token)
    with pytest.raises(TokenUnusable) as info:
        await service.register_guest(token, "second", PASSWORD, None)
    assert info.value.state == "used" and "second" not in fake_hs.users


async def test_no_registration_while_a_legacy_token_is_still_native(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    token_id, token = await legacy(store, fake_hs)
    original = fake_hs.delete_token

    async def fails(token: str) -> None:
        raise HomeserverUnavailable("delete token")

    fake_hs.delete_token = fails  # type: ignore[method-assign]
    with pytest.raises(TryLater):
        await service.register_guest(token, "early", PASSWORD, None)
    assert "early" not in fake_hs.users
    row = await store.get_token(token_id)
    assert row is not None and (row.hs_state, row.in_flight) == ("adopting", 0)
    fake_hs.delete_token = original  # type: ignore[method-assign]
    assert await service.register_guest(token, "early", PASSWORD, None) == "@early:dmz.test"


async def test_adopting_token_already_deleted_is_not_revoked(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    # A crash between deleting the native token and recording it.
    token_id, token = await legacy(store, fake_hs, hs_state="adopting")
    del fake_hs.tokens[token]
    view = await service.get_token(token_id)
    assert (view.status, view.row.hs_state) == ("active", "deleted")


async def test_legacy_token_deleted_by_the_homeserver_admin_is_revoked(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    token_id, token = await legacy(store, fake_hs)
    del fake_hs.tokens[token]
    view = await service.get_token(token_id)
    assert (view.status, view.row.revoked_by) == ("revoked", "homeserver")


async def test_revoking_a_legacy_token_deletes_it_on_the_homeserver(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    token_id, token = await legacy(store, fake_hs, hs_state="adopting")
    fake_hs.down = True
    with pytest.raises(Unavailable, match="revoked here"):
        await service.revoke_token(token_id, "@carol:corp")
    assert (await service.page_token(token))[1] == "revoked"  # refused at once
    fake_hs.down = False
    await service.sync()
    assert token not in fake_hs.tokens
    assert (await store.get_token(token_id)).hs_state == "deleted"  # type: ignore[union-attr]


async def test_sponsor_revoke_deletes_legacy_tokens(
    service: RegistrarService, store: RegistrarStore, fake_hs: FakeHomeserver
) -> None:
    fake_hs.down = True  # not adopted yet when the sponsor is revoked
    _, mine = await legacy(store, fake_hs)
    _, theirs = await legacy(store, fake_hs, sponsor="@bob:corp.example")
    fake_hs.down = False
    result = await service.revoke_sponsor(SPONSOR, deactivate_guests=False, actor="@it:corp")
    assert result.tokens_revoked == 1 and mine not in fake_hs.tokens
    assert theirs in fake_hs.tokens  # still bob's; adopted by the next sync


async def test_sponsor_revoke_with_guests(
    service: RegistrarService, fake_hs: FakeHomeserver
) -> None:
    a = await mint(service, uses=2)
    b = await mint(service)
    other = await mint(service, sponsor="@bob:corp.example")
    await service.register_guest(a.token, "guest-a", PASSWORD, None)
    result = await service.revoke_sponsor(SPONSOR, deactivate_guests=True, actor="@it:corp")
    assert (result.tokens_revoked, result.guests_deactivated) == (2, 1)
    assert fake_hs.deactivated == {"@guest-a:dmz.test"}
    assert (await service.get_token(b.view.row.id)).status == "revoked"
    assert (await service.get_token(other.view.row.id)).status == "active"
    again = await service.revoke_sponsor(SPONSOR, deactivate_guests=True, actor="@it:corp")
    assert (again.tokens_revoked, again.guests_deactivated) == (0, 0)
    guests = await service.list_guests(status="deactivated")
    assert [(g.user_id, g.deactivated_by) for g in guests] == [("@guest-a:dmz.test", "@it:corp")]


async def test_sponsor_revoke_keeping_guests(
    service: RegistrarService, fake_hs: FakeHomeserver
) -> None:
    a = await mint(service, uses=2)
    await service.register_guest(a.token, "kept", PASSWORD, None)
    result = await service.revoke_sponsor(SPONSOR, deactivate_guests=False, actor="@it:corp")
    assert (result.tokens_revoked, result.guests_deactivated) == (1, 0)
    assert fake_hs.deactivated == set()


async def test_deactivate_guest(service: RegistrarService, fake_hs: FakeHomeserver) -> None:
    minted = await mint(service)
    await service.register_guest(minted.token, "guest", PASSWORD, None)
    guest = await service.deactivate_guest("@guest:dmz.test", "@carol:corp")
    assert guest.status == "deactivated" and fake_hs.deactivated == {"@guest:dmz.test"}
    fake_hs.deactivated.clear()
    assert (await service.deactivate_guest("@guest:dmz.test", "@carol:corp")).status == (
        "deactivated"
    )
    assert fake_hs.deactivated == set()  # idempotent: no second call
    with pytest.raises(NotFound):
        await service.deactivate_guest("@staff:dmz.test", "@carol:corp")


async def test_deactivation_unsupported_for_matrix_without_admin_token(
    store: RegistrarStore, clock: Clock
) -> None:
    hs = FakeHomeserver(legacy_tokens=False)
    service = make_service(store, hs, clock, kind="matrix")
    minted = await mint(service)
    await service.register_guest(minted.token, "guest", PASSWORD, None)
    with pytest.raises(Unsupported, match="admin_token"):
        await service.deactivate_guest("@guest:dmz.test", "@carol:corp")
    with pytest.raises(Unsupported):
        await service.revoke_sponsor(SPONSOR, deactivate_guests=True, actor="x")
    assert (await service.get_token(minted.view.row.id)).status == "used"
    # Nothing was revoked before refusing.
    other = await mint(service)
    assert (await service.get_token(other.view.row.id)).status == "active"


async def test_deactivation_unsupported_by_the_homeserver(
    store: RegistrarStore, clock: Clock
) -> None:
    hs = FakeHomeserver(legacy_tokens=False, can_deactivate=False)
    service = make_service(
        store, hs, clock, kind="matrix", homeserver={"admin_token": "admin-token"}
    )
    minted = await mint(service)
    await service.register_guest(minted.token, "guest", PASSWORD, None)
    with pytest.raises(Unsupported, match="Synapse deactivation admin API"):
        await service.deactivate_guest("@guest:dmz.test", "@carol:corp")


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("Guest.One", "guest.one"),
        ("@bob:dmz.test", "bob"),
        ("  x_y ", "x_y"),
        ("a=b/c+d", "a=b/c+d"),
    ],
)
def test_localpart_normalised(typed: str, expected: str) -> None:
    assert validate_localpart(typed, "dmz.test") == expected


@pytest.mark.parametrize("typed", ["", "has space", "_hidden", "émile", "a:b", "x" * 250])
def test_localpart_rejected(typed: str) -> None:
    with pytest.raises(FormRejected):
        validate_localpart(typed, "dmz.test")
