"""The registrar's behaviour, independent of HTTP: tokens, guests, registering a guest once.

Exactly once: a token is the registrar's own, unknown to the homeserver (which only
ever sees a static or a one-use token that never leaves dmz_api, see homeserver.py). A
registration first claims one use of it in our database with a single conditional
UPDATE, then calls the homeserver, then commits the use (success) or releases the claim
(failure: the token is not consumed).
``register_guest(token, ...)`` looks the token up first; ``register_found(row, token, ...)``
takes the row a caller (the onboarding page) has just looked up.

Legacy tokens: registrars before this design minted every token as a native Synapse
token (``hs_state`` ``live``), usable from any Matrix client, where Synapse's non-atomic
check let concurrent sign-ups exceed ``uses_allowed``. ``sync`` adopts each such token: it
lets the native token expire at once, waits until sign-ups that passed Synapse's check
have counted themselves, takes Synapse's ``completed + pending`` as our ``uses_completed``
(a pending sign-up may still finish), then deletes the native token, so its URL keeps
working, on the page only. The page never registers with a token still native.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from prometheus_client import Counter

from ..errors import ApiError, Conflict, InvalidParam, NotFound, Unavailable
from ..metrics import Metrics
from .config import RegistrarConfig
from .crypto import TOKEN_PATTERN, RegistrarKeys, hash_token, new_token
from .homeserver import (
    DeactivationUnsupported,
    HomeserverAdapter,
    HomeserverUnavailable,
    NativeToken,
    OutcomeUnknown,
    Registration,
    RegistrationRefused,
)
from .i18n import N_
from .store import (
    GuestRow,
    Position,
    RegistrarStore,
    RegistrationRow,
    TokenRow,
    TokenStatus,
)

log = logging.getLogger("dmz_api.registrar")

# A claim outlives any real registration (bounded by HTTP timeouts); older ones are dead.
CLAIM_LEASE_MS = 5 * 60 * 1000
# An idempotency key whose mint never finished within this time is free again.
ABANDONED_MINT_MS = 2 * 60 * 1000
# Page views may use homeserver counts this old; admin reads always sync.
PAGE_SYNC_MAX_AGE = 2.0
# Adopting legacy tokens: they expire this far ahead (clock skew), and their counts are
# read this long after (Synapse checks a token, then counts its use, in two transactions).
LEGACY_EXPIRE_AHEAD_MS = 1000
LEGACY_SETTLE_S = 2.0
LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")

# deactivated_by of a guest whose time ran out.
EXPIRY_ACTOR = "expiry"

# hs_state of a legacy token still (or possibly still) native on the homeserver.
LEGACY_STATES = ("live", "adopting")

PageState = Literal["active", "used", "expired", "revoked", "unknown"]


class Unsupported(ApiError):
    """The configured homeserver cannot do this (e.g. deactivation without an admin token)."""

    status, errcode = 501, "M_UNRECOGNIZED"


class PageError(Exception):
    """Why the onboarding page cannot register the guest (never holds homeserver text)."""


class TokenUnusable(PageError):
    def __init__(self, state: PageState) -> None:
        super().__init__(state)
        self.state = state


class TokenBusy(PageError):
    """Every remaining use is held by a registration under way."""


class FormRejected(PageError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class TryLater(PageError):
    pass


@dataclass(frozen=True, slots=True)
class TokenView:
    row: TokenRow
    status: TokenStatus
    used_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Minted:
    view: TokenView
    token: str
    url: str
    replayed: bool


@dataclass(frozen=True, slots=True)
class _Followup:
    """What the bot does once a guest registers with the token (see store.registrations)."""

    invites: tuple[str, ...]
    notify: str
    guest_expires_in: int = 0
    project: str = ""


@dataclass(frozen=True, slots=True)
class SponsorRevocation:
    tokens_revoked: int
    guests_deactivated: int


class RegistrarMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.tokens_minted: Counter = metrics.counter(
            "dmz_api_registrar_tokens_minted_total", "Registration tokens minted"
        )
        self.tokens_revoked: Counter = metrics.counter(
            "dmz_api_registrar_tokens_revoked_total", "Registration tokens revoked"
        )
        self.registrations: Counter = metrics.counter(
            "dmz_api_registrar_registrations_total",
            "Guest registrations through the onboarding page, by outcome",
            ["outcome"],
        )
        self.guests_deactivated: Counter = metrics.counter(
            "dmz_api_registrar_guests_deactivated_total", "Guest accounts deactivated"
        )
        self.rate_limited: Counter = metrics.counter(
            "dmz_api_registrar_rate_limited_total", "Onboarding page requests refused (rate limit)"
        )


def mint_request_hash(
    sponsor: str,
    uses: int,
    expires_in: int,
    note: str,
    invites: Sequence[str] = (),
    notify: str = "",
    guest_expires_in: int = 0,
    project: str = "",
) -> str:
    """What an Idempotency-Key is bound to: a retry must ask for the same thing."""
    asked: list[object] = [sponsor, uses, expires_in, note]
    if invites or notify:
        asked += [list(invites), notify]
    if guest_expires_in:
        asked += [guest_expires_in]
    if project:
        asked += [project]
    return hashlib.sha256(json.dumps(asked).encode()).hexdigest()


def validate_localpart(username: str, server_name: str) -> str:
    """The Matrix localpart a guest typed (``@name:server`` and upper case tolerated)."""
    name = username.strip()
    if name.startswith("@"):
        name = name[1:]
    if name.endswith(f":{server_name}"):
        name = name[: -len(server_name) - 1]
    name = name.lower()
    if not name:
        raise FormRejected("username", N_("Choose a username."))
    if not LOCALPART.match(name):
        raise FormRejected(
            "username",
            N_("Use only lower-case letters, digits and the characters . _ = - / +"),
        )
    if name.startswith("_"):
        raise FormRejected("username", N_("The username may not start with _."))
    if len(f"@{name}:{server_name}") > 255:
        raise FormRejected("username", N_("This username is too long."))
    return name


class RegistrarService:
    def __init__(
        self,
        config: RegistrarConfig,
        public_url: str,
        store: RegistrarStore,
        adapter: HomeserverAdapter,
        keys: RegistrarKeys,
        metrics: RegistrarMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.public_url = public_url.rstrip("/")
        self.store = store
        self.adapter = adapter
        self.keys = keys
        self.metrics = metrics
        self.clock = clock
        self._sync_lock = asyncio.Lock()
        self._synced_at = -1e18
        self.legacy_settle_s = LEGACY_EXPIRE_AHEAD_MS / 1000 + LEGACY_SETTLE_S

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def onboarding_url(self, token: str) -> str:
        return f"{self.public_url}/register?token={token}"

    # ---- tokens ----

    async def mint(
        self,
        *,
        sponsor: str,
        api_client: str,
        uses: int,
        expires_in: int,
        note: str,
        idempotency_key: str | None = None,
        invites: Sequence[str] = (),
        notify: str = "",
        guest_expires_in: int = 0,
        project: str = "",
    ) -> Minted:
        extra = _Followup(tuple(invites), notify, guest_expires_in, project)
        if idempotency_key is None:
            return await self._mint(sponsor, api_client, uses, expires_in, note, None, extra)
        request_hash = mint_request_hash(
            sponsor, uses, expires_in, note, invites, notify, guest_expires_in, project
        )
        now = self.now_ms()
        await self.store.purge_idempotency(now - self.config.idempotency_ttl * 1000)
        for _ in range(3):
            if await self.store.claim_idempotency_key(
                api_client, idempotency_key, request_hash, now
            ):
                return await self._mint(
                    sponsor, api_client, uses, expires_in, note, idempotency_key, extra
                )
            replay = await self._replay(api_client, idempotency_key, request_hash)
            if replay is not None:
                return replay
        raise Conflict("A mint with this Idempotency-Key is in progress; retry in a moment")

    async def _replay(self, api_client: str, key: str, request_hash: str) -> Minted | None:
        """The first result for ``key``, or None when the key turned out to be free."""
        record = await self.store.get_idempotency(api_client, key)
        if record is None:
            return None
        if not secrets.compare_digest(record.request_hash, request_hash):
            raise Conflict("This Idempotency-Key was already used for a different request")
        if record.token_id is None or record.sealed is None:
            abandoned_before = self.now_ms() - ABANDONED_MINT_MS
            if await self.store.drop_abandoned_idempotency_key(api_client, key, abandoned_before):
                return None
            raise Conflict("A mint with this Idempotency-Key is in progress; retry in a moment")
        row = await self.store.get_token(record.token_id)
        token = self.keys.unseal(record.sealed, f"{api_client}|{key}|{record.token_id}")
        if row is None or token is None:
            # Never mint a second token for a key: say what happened instead.
            raise Conflict(
                f"Token {record.token_id} was minted for this Idempotency-Key but can no longer"
                " be shown (the registrar secret changed); revoke it and mint a new one"
            )
        return Minted(await self._view(row), token, self.onboarding_url(token), replayed=True)

    async def _mint(
        self,
        sponsor: str,
        api_client: str,
        uses: int,
        expires_in: int,
        note: str,
        idempotency_key: str | None,
        extra: _Followup,
    ) -> Minted:
        try:
            now = self.now_ms()
            expires_at = now + expires_in * 1000
            # The homeserver is not involved: the token exists only here.
            token = new_token()
            row = TokenRow(
                id=secrets.token_hex(6),
                token_hash=hash_token(token),
                sponsor=sponsor,
                note=note,
                api_client=api_client,
                homeserver_kind=self.adapter.kind,
                uses_allowed=uses,
                uses_completed=0,
                pending=0,
                in_flight=0,
                claim_expires_at=0,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
                revoked_by=None,
                hs_state="none",
                invites=json.dumps(list(extra.invites)),
                notify=extra.notify,
                guest_expires_in=extra.guest_expires_in,
                project=extra.project,
            )
            async with self.store.transaction():
                await self.store.insert_token(row)
                if idempotency_key is not None:
                    sealed = self.keys.seal(token, f"{api_client}|{idempotency_key}|{row.id}")
                    await self.store.complete_idempotency(
                        api_client, idempotency_key, row.id, sealed
                    )
        except BaseException:
            await self._free_key(api_client, idempotency_key)
            raise
        self.metrics.tokens_minted.inc()
        log.info("Minted token %s for %s (%d uses)", row.id, sponsor, uses)
        view = TokenView(row, row.status(now), ())
        return Minted(view, token, self.onboarding_url(token), replayed=False)

    async def _free_key(self, api_client: str, key: str | None) -> None:
        if key is not None:
            await asyncio.shield(self.store.drop_idempotency_key(api_client, key))

    async def _view(self, row: TokenRow) -> TokenView:
        used_by = (await self.store.guests_of_tokens([row.id])).get(row.id, [])
        return TokenView(row, row.status(self.now_ms()), tuple(used_by))

    async def list_tokens(
        self,
        *,
        status: str | None = None,
        sponsor: str | None = None,
        limit: int = 100,
        after: Position | None = None,
    ) -> list[TokenView]:
        await self.sync()
        now = self.now_ms()
        rows = await self.store.list_tokens(
            now, status=status, sponsor=sponsor, limit=limit, after=after
        )
        used_by = await self.store.guests_of_tokens([row.id for row in rows])
        return [TokenView(row, row.status(now), tuple(used_by.get(row.id, ()))) for row in rows]

    async def get_token(self, token_id: str) -> TokenView:
        await self.sync()
        row = await self.store.get_token(token_id)
        if row is None:
            raise NotFound(f"Token {token_id} does not exist")
        return await self._view(row)

    async def revoke_token(self, token_id: str, actor: str) -> TokenView:
        view = await self.get_token(token_id)
        if view.status == "used":
            raise Conflict(f"Token {token_id} is already used; there is nothing to revoke")
        revoked = await self.store.revoke(token_id, self.now_ms(), actor)
        if revoked is not None:
            self.metrics.tokens_revoked.inc()
            log.info("Revoked token %s (by %s)", token_id, actor)
        row = revoked or view.row
        if row.hs_state in LEGACY_STATES:
            if await self._delete_native([row]):
                raise Unavailable(
                    f"Token {token_id} is revoked here, but the homeserver did not confirm;"
                    " repeat the request"
                )
        return await self._view(await self._reload(row))

    async def _reload(self, row: TokenRow) -> TokenRow:
        return await self.store.get_token(row.id) or row

    async def _delete_native(self, rows: Sequence[TokenRow]) -> int:
        """Delete revoked legacy tokens on the homeserver; returns how many could not be."""
        if not rows or not self.adapter.legacy_tokens:
            return 0
        try:
            native = {hash_token(t.token): t.token for t in await self.adapter.list_tokens()}
        except HomeserverUnavailable:
            return len(rows)
        failed = 0
        for row in rows:
            token = native.get(row.token_hash)
            try:
                if token is not None:
                    await self.adapter.delete_token(token)
                await self.store.set_hs_state(row.id, "deleted")
            except HomeserverUnavailable:
                failed += 1
        return failed

    async def revoke_sponsor(
        self, sponsor: str, *, deactivate_guests: bool, actor: str
    ) -> SponsorRevocation:
        if deactivate_guests and not self.config.has_deactivation:
            raise self._deactivation_unsupported()
        revoked = await self.store.revoke_active_of_sponsor(sponsor, self.now_ms(), actor)
        if revoked:
            self.metrics.tokens_revoked.inc(len(revoked))
            log.info("Revoked %d tokens of %s (by %s)", len(revoked), sponsor, actor)
        owed = [
            row
            for row in await self.store.tokens_to_sync()
            if row.sponsor == sponsor and row.revoked_at is not None
        ]
        failed = await self._delete_native(owed)
        deactivated = 0
        if deactivate_guests:
            for guest in await self.store.list_guests(
                sponsor=sponsor, status="active", limit=1_000_000
            ):
                try:
                    if await self._deactivate(guest.user_id, actor):
                        deactivated += 1
                except Unavailable:
                    failed += 1
        if failed:
            raise Unavailable(
                f"Revoked {len(revoked)} tokens and deactivated {deactivated} guests of {sponsor},"
                f" but the homeserver did not confirm {failed} changes; repeat the request"
            )
        return SponsorRevocation(len(revoked), deactivated)

    async def sync(self, max_age: float = 0.0) -> bool:
        """Adopt legacy native tokens (see the module docstring); delete revoked ones.

        Returns whether rows may have changed. With ``max_age`` (page views), a sync younger
        than that, or one already under way, is good enough. Without legacy rows this is one
        query and no homeserver call.
        """
        if not self.adapter.legacy_tokens:
            return False
        if max_age and self._sync_lock.locked():
            return False
        async with self._sync_lock:
            if time.monotonic() - self._synced_at < max_age:
                return False
            rows = await self.store.tokens_to_sync()
            if not rows:
                self._synced_at = time.monotonic()
                return False
            try:
                native = await self._stop_legacy(rows)
            except HomeserverUnavailable:
                log.warning("Legacy tokens not adopted: the homeserver did not answer")
                return False
            now = self.now_ms()
            owed: list[TokenRow] = []
            changed = False
            for row in rows:
                found = native.get(row.token_hash)
                if row.revoked_at is not None:
                    owed.append(row)
                elif found is None and row.hs_state == "adopting":
                    # Our own deletion happened; only its record was missing.
                    await self.store.set_hs_state(row.id, "deleted")
                    changed = True
                elif found is None:
                    # Deleted on the homeserver by its admin: it can no longer be used.
                    await self.store.revoke(row.id, now, "homeserver")
                    await self.store.set_hs_state(row.id, "deleted")
                    changed = True
                else:
                    changed |= await self._adopt(row, found)
            if owed:
                await self._delete_native(owed)
            self._synced_at = time.monotonic()
            return changed

    async def _stop_legacy(self, rows: Sequence[TokenRow]) -> dict[str, NativeToken]:
        """Make every legacy native token expire now; their counts once they are final."""
        native = {hash_token(t.token): t for t in await self.adapter.list_tokens()}
        expire_at = self.now_ms() + LEGACY_EXPIRE_AHEAD_MS
        stopped = False
        for row in rows:
            found = native.get(row.token_hash)
            if found is None or (found.expiry_time is not None and found.expiry_time <= expire_at):
                continue  # gone, or expiring anyway (never move an expiry later)
            if not await self.adapter.expire_token(found.token, expire_at):
                log.warning("Token %s: the homeserver refused to expire it now", row.id)
            stopped = True
        if not stopped:
            return native
        await asyncio.sleep(self.legacy_settle_s)
        return {hash_token(t.token): t for t in await self.adapter.list_tokens()}

    async def _adopt(self, row: TokenRow, native: NativeToken) -> bool:
        """Make a legacy native token the registrar's own: counts first, then delete it."""
        # A pending sign-up may still complete after the deletion: count it as used.
        await self.store.adopt(row.id, native.completed + native.pending)
        try:
            await self.adapter.delete_token(native.token)
        except HomeserverUnavailable:
            log.warning("Legacy token %s not adopted yet: the homeserver did not answer", row.id)
            return True
        await self.store.set_hs_state(row.id, "deleted")
        log.info("Adopted legacy native token %s (now usable on the page only)", row.id)
        return True

    # ---- guests ----

    async def list_guests(
        self,
        *,
        sponsor: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: Position | None = None,
        project: str | None = None,
    ) -> list[GuestRow]:
        return await self.store.list_guests(
            sponsor=sponsor, status=status, limit=limit, after=after, project=project
        )

    async def registrations(
        self, since_ms: int, after_user: str, limit: int
    ) -> list[RegistrationRow]:
        return await self.store.registrations(since_ms, after_user, limit)

    async def deactivate_guest(self, user_id: str, actor: str) -> GuestRow:
        guest = await self.store.get_guest(user_id)
        if guest is None:
            raise NotFound(f"{user_id} is not a guest registered through this registrar")
        if guest.status == "active":
            if not self.config.has_deactivation:
                raise self._deactivation_unsupported()
            await self._deactivate(user_id, actor)
        return await self.store.get_guest(user_id) or guest

    async def extend_guest(self, user_id: str, seconds: int, actor: str) -> GuestRow:
        """Move an active guest's expiry ``seconds`` later (from now, if it already passed)."""
        guest = await self.store.get_guest(user_id)
        if guest is None:
            raise NotFound(f"{user_id} is not a guest registered through this registrar")
        if guest.status != "active":
            raise Conflict(f"{user_id} is already deactivated")
        if guest.expires_at is None:
            raise Conflict(f"{user_id} does not expire")
        now = self.now_ms()
        new = max(now, guest.expires_at) + seconds * 1000
        if new - now > self.config.max_guest_expires_in * 1000:
            raise InvalidParam(
                f"expires_in would put the expiry more than {self.config.max_guest_expires_in}"
                " seconds ahead"
            )
        extended = await self.store.set_guest_expiry(user_id, new)
        if extended is None:
            raise Conflict(f"{user_id} is already deactivated")
        log.info("Guest %s now expires at %d (by %s)", user_id, new, actor)
        return extended

    async def expire_guests(self, batch: int = 100) -> int:
        """Deactivate every active guest whose time is up; how many were."""
        if not self.config.has_deactivation:
            return 0
        done = 0
        for guest in await self.store.expired_guests(self.now_ms(), batch):
            try:
                if await self._deactivate(guest.user_id, EXPIRY_ACTOR):
                    done += 1
            except Unavailable:
                log.warning("Guest %s expired but is not deactivated yet", guest.user_id)
        return done

    async def _deactivate(self, user_id: str, actor: str) -> bool:
        try:
            await self.adapter.deactivate(user_id)
        except DeactivationUnsupported:
            raise self._deactivation_unsupported() from None
        except HomeserverUnavailable:
            raise Unavailable(f"The homeserver did not answer; {user_id} is still active") from None
        changed = await self.store.mark_guest_deactivated(user_id, self.now_ms(), actor)
        if changed:
            self.metrics.guests_deactivated.inc()
            log.info("Deactivated guest %s (by %s)", user_id, actor)
        return changed

    def _deactivation_unsupported(self) -> Unsupported:
        if self.adapter.kind == "matrix" and self.config.homeserver.admin_token is None:
            return Unsupported(
                "Guest deactivation needs registrar.homeserver.admin_token with kind matrix"
            )
        return Unsupported("The homeserver does not offer the Synapse deactivation admin API")

    # ---- the onboarding page ----

    async def page_token(self, token: str) -> tuple[TokenRow | None, PageState]:
        """The token behind an onboarding link and what the page may do with it."""
        if not TOKEN_PATTERN.match(token):
            return None, "unknown"
        token_hash = hash_token(token)
        row = await self.store.get_token_by_hash(token_hash)
        if row is None:
            return None, "unknown"
        if (
            row.status(self.now_ms()) == "active"
            and row.hs_state in LEGACY_STATES
            and await self.sync(max_age=PAGE_SYNC_MAX_AGE)
        ):
            row = await self.store.get_token_by_hash(token_hash) or row
        return row, row.status(self.now_ms())

    async def register_guest(
        self, token: str, localpart: str, password: str, display_name: str | None
    ) -> str:
        """Create the guest's account with one use of ``token``; returns the Matrix ID."""
        row, state = await self.page_token(token)
        if row is None or state != "active":
            raise TokenUnusable(state)
        return await self.register_found(row, token, localpart, password, display_name)

    async def register_found(
        self, row: TokenRow, token: str, localpart: str, password: str, display_name: str | None
    ) -> str:
        """As ``register_guest``, with ``row`` the active token ``page_token(token)`` just found.

        The page looks the token up before it reads the form, so it hands over the row
        instead of a second lookup; the one conditional UPDATE of the claim still decides.
        """
        if row.hs_state in LEGACY_STATES:
            row, _state = await self._adopted(row)
        try:
            await self.adapter.check_username(localpart)
        except RegistrationRefused as e:
            self.metrics.registrations.labels(e.reason).inc()
            raise FormRejected("username", e.reason) from None
        except HomeserverUnavailable:
            pass  # Advisory only: the next step checks the name with authority.
        try:
            # Validates the username and password on the homeserver; no token is used yet.
            registration = await self.adapter.begin_registration(localpart, password, display_name)
        except RegistrationRefused as e:
            self.metrics.registrations.labels(e.reason).inc()
            field = "password" if e.reason == "password_weak" else "username"
            raise FormRejected(field, e.reason) from None
        except HomeserverUnavailable:
            self.metrics.registrations.labels("unavailable").inc()
            raise TryLater() from None
        claimed = await self.store.claim(row.id, self.now_ms(), CLAIM_LEASE_MS)
        if claimed is None:
            current = await self.store.get_token(row.id) or row
            if current.status(self.now_ms()) == "active":
                raise TokenBusy()
            raise TokenUnusable(current.status(self.now_ms()))
        # Shielded: a client going away must not strand the claim (neither committed nor released).
        return await asyncio.shield(self._register_claimed(claimed, registration, token, localpart))

    async def _adopted(self, row: TokenRow) -> tuple[TokenRow, PageState]:
        """A legacy token, adopted now: no registration while Synapse still holds it."""
        self._synced_at = -1e18
        await self.sync()
        current = await self.store.get_token(row.id) or row
        if current.hs_state in LEGACY_STATES:
            self.metrics.registrations.labels("unavailable").inc()
            raise TryLater()
        state = current.status(self.now_ms())
        if state != "active":
            raise TokenUnusable(state)
        return current, state

    async def _register_claimed(
        self, row: TokenRow, registration: Registration, token: str, localpart: str
    ) -> str:
        try:
            user_id = await self.adapter.complete_registration(registration, token)
        except RegistrationRefused as e:
            await self.store.release(row.id)
            self.metrics.registrations.labels(e.reason).inc()
            if e.reason == "token_rejected":
                # Our token was claimed here; the homeserver refused its own stand-in.
                log.error(
                    "The homeserver refused the registrar's registration token: %s",
                    "check registrar.homeserver.registration_token"
                    if self.adapter.kind == "matrix"
                    else "check registration_requires_token and the admin token",
                )
                raise TryLater() from None
            field = "password" if e.reason == "password_weak" else "username"
            raise FormRejected(field, e.reason) from None
        except OutcomeUnknown:
            user_id = await self._settle_unknown(row, localpart)
        except HomeserverUnavailable:
            await self.store.release(row.id)
            self.metrics.registrations.labels("unavailable").inc()
            raise TryLater() from None
        except BaseException:
            await self.store.release(row.id)
            self.metrics.registrations.labels("error").inc()
            raise
        await self._record_guest(row, user_id)
        return user_id

    async def _settle_unknown(self, row: TokenRow, localpart: str) -> str:
        """The account-creating call got no answer: find out whether the account exists."""
        try:
            await self.adapter.check_username(localpart)
        except RegistrationRefused as e:
            if e.reason == "username_taken":
                log.warning("Registration outcome unknown, but the name is now taken: counted")
                return f"@{localpart}:{self.config.homeserver.server_name}"
            await self.store.release(row.id)
        except HomeserverUnavailable:
            # Cannot tell: keep the claim so no second account can appear; it lapses with
            # its lease and the guest can then retry.
            pass
        else:
            await self.store.release(row.id)
        self.metrics.registrations.labels("unavailable").inc()
        raise TryLater()

    async def _record_guest(self, row: TokenRow, user_id: str) -> None:
        now = self.now_ms()
        guest = GuestRow(
            user_id=user_id,
            sponsor=row.sponsor,
            token_id=row.id,
            created_at=now,
            status="active",
            deactivated_at=None,
            deactivated_by=None,
            expires_at=now + row.guest_expires_in * 1000 if row.guest_expires_in else None,
        )
        async with self.store.transaction():
            await self.store.complete_use(row.id)
            await self.store.insert_guest(guest)
        self.metrics.registrations.labels("ok").inc()
        log.info("Guest %s registered with token %s (sponsor %s)", user_id, row.id, row.sponsor)


# Built by the registrar's setup() once the shared database is open.
REGISTRAR: web.AppKey[RegistrarService] = web.AppKey("registrar", RegistrarService)
