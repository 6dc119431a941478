"""The registrar's admin API, typed: tokens, guests, sponsor revocation; lists page by cursor."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from attrs import field, frozen

from ..durations import parse_timestamp
from .transport import Acting, DmzError, RoleClient, as_int, as_str

# The registrar's largest page, and the most pages a full listing follows (a loop guard).
PAGE_SIZE = 1000
MAX_PAGES = 1000


@frozen
class Token:
    id: str
    status: str
    uses_allowed: int | None
    uses_completed: int
    expires_at: datetime | None
    sponsor: str
    note: str
    created_at: datetime | None = None
    # Only in the answer to a mint: the onboarding URL holds the plaintext token.
    url: str = field(default="", repr=False)

    @classmethod
    def from_json(cls, data: Any) -> Token:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str | int):
            raise DmzError(200, "M_BAD_JSON", "the registrar answered without a token id")
        uses_allowed = data.get("uses_allowed")
        return cls(
            id=str(data["id"]),
            status=as_str(data.get("status")) or "unknown",
            uses_allowed=uses_allowed if isinstance(uses_allowed, int) else None,
            uses_completed=as_int(data.get("uses_completed")),
            expires_at=parse_timestamp(data.get("expires_at")),
            sponsor=as_str(data.get("sponsor")),
            note=as_str(data.get("note")),
            created_at=parse_timestamp(data.get("created_at")),
            url=as_str(data.get("url")),
        )


@frozen
class Guest:
    user_id: str
    status: str
    sponsor: str
    created_at: datetime | None
    token_id: str
    # When the registrar deactivates the guest (None: never); who deactivated them.
    expires_at: datetime | None = None
    deactivated_by: str = ""

    @classmethod
    def from_json(cls, data: Any) -> Guest:
        if not isinstance(data, dict) or not isinstance(data.get("user_id"), str):
            raise DmzError(200, "M_BAD_JSON", "the registrar answered without a guest user_id")
        token_id = data.get("token_id")
        return cls(
            user_id=data["user_id"],
            status=as_str(data.get("status")) or "unknown",
            sponsor=as_str(data.get("sponsor")),
            created_at=parse_timestamp(data.get("created_at")),
            token_id=str(token_id) if isinstance(token_id, str | int) else "",
            expires_at=parse_timestamp(data.get("expires_at")),
            deactivated_by=as_str(data.get("deactivated_by")),
        )


@frozen
class Registration:
    """One item of the registrations feed: a guest and what its token asked for."""

    user_id: str
    sponsor: str
    token_id: str
    created_at_ms: int
    invites: tuple[str, ...]
    notify: str

    @classmethod
    def from_json(cls, data: Any) -> Registration:
        if not isinstance(data, dict) or not isinstance(data.get("user_id"), str):
            raise DmzError(200, "M_BAD_JSON", "the registrar answered without a guest user_id")
        invites = data.get("invites")
        return cls(
            user_id=data["user_id"],
            sponsor=as_str(data.get("sponsor")),
            token_id=as_str(data.get("token_id")),
            created_at_ms=as_int(data.get("created_at_ms")),
            invites=tuple(r for r in invites if isinstance(r, str))
            if isinstance(invites, list)
            else (),
            notify=as_str(data.get("notify")),
        )


@frozen
class SponsorRevocation:
    tokens_revoked: int
    guests_deactivated: int


class Registrar(RoleClient):
    """The registrar's admin API: tokens, guests, sponsor revocation."""

    role = "registrar"

    async def mint(
        self,
        acting: Acting,
        *,
        uses: int,
        expires_in: int,
        note: str,
        idempotency_key: str,
        invites: tuple[str, ...] = (),
        notify: str = "",
        guest_expires_in: int = 0,
        project: str = "",
    ) -> Token:
        body: dict[str, Any] = {"uses": uses, "expires_in": expires_in, "note": note}
        if invites or notify:
            body.update(invites=list(invites), notify=notify)
        if guest_expires_in:
            body["guest_expires_in"] = guest_expires_in
        if project:
            body["project"] = project
        data = await self.request(
            "POST", "/v1/tokens", acting=acting, body=body, idempotency_key=idempotency_key
        )
        return Token.from_json(data)

    async def registrations(
        self, acting: Acting, since_ms: int, after_user: str, limit: int = PAGE_SIZE
    ) -> list[Registration]:
        """The guests registered after the position ``(since_ms, after_user)``, oldest first."""
        params = {"since": str(since_ms), "limit": str(limit)}
        if after_user:
            params["after"] = after_user
        data = await self.request("GET", "/v1/registrations", acting=acting, params=params)
        return [Registration.from_json(item) for item in self.items(data, "registrations")]

    async def tokens(
        self,
        acting: Acting,
        *,
        status: str | None = None,
        sponsor: str | None = None,
        limit: int | None = None,
    ) -> list[Token]:
        """The first page, newest first."""
        params = _filters(status=status, sponsor=sponsor)
        items, _ = await self._page(acting, "/v1/tokens", "tokens", params, limit)
        return [Token.from_json(item) for item in items]

    async def all_tokens(
        self,
        acting: Acting,
        *,
        status: str | None = None,
        sponsor: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> list[Token]:
        """Every page, newest first."""
        params = _filters(status=status, sponsor=sponsor)
        items = await self._every(acting, "/v1/tokens", "tokens", params, page_size)
        return [Token.from_json(item) for item in items]

    async def token(self, acting: Acting, token_id: str) -> Token:
        data = await self.request("GET", f"/v1/tokens/{quote(token_id, safe='')}", acting=acting)
        return Token.from_json(data)

    async def revoke(self, acting: Acting, token_id: str) -> Token | None:
        data = await self.request("DELETE", f"/v1/tokens/{quote(token_id, safe='')}", acting=acting)
        return Token.from_json(data) if isinstance(data, dict) and "id" in data else None

    async def revoke_sponsor(self, acting: Acting, user_id: str, guests: str) -> SponsorRevocation:
        data = await self.request(
            "POST",
            f"/v1/sponsors/{quote(user_id, safe='@:')}/revoke",
            acting=acting,
            body={"guests": guests},
        )
        data = data if isinstance(data, dict) else {}
        return SponsorRevocation(
            tokens_revoked=as_int(data.get("tokens_revoked")),
            guests_deactivated=as_int(data.get("guests_deactivated")),
        )

    async def guests(
        self,
        acting: Acting,
        *,
        sponsor: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[Guest]:
        """The first page, newest first."""
        params = _filters(sponsor=sponsor, status=status)
        items, _ = await self._page(acting, "/v1/guests", "guests", params, limit)
        return [Guest.from_json(item) for item in items]

    async def all_guests(
        self,
        acting: Acting,
        *,
        sponsor: str | None = None,
        status: str | None = None,
        page_size: int = PAGE_SIZE,
        project: str | None = None,
    ) -> list[Guest]:
        """Every page, newest first."""
        params = _filters(sponsor=sponsor, status=status, project=project)
        items = await self._every(acting, "/v1/guests", "guests", params, page_size)
        return [Guest.from_json(item) for item in items]

    async def deactivate_guest(self, acting: Acting, user_id: str) -> None:
        await self.request(
            "POST", f"/v1/guests/{quote(user_id, safe='@:')}/deactivate", acting=acting
        )

    async def extend_guest(self, acting: Acting, user_id: str, expires_in: int) -> Guest:
        data = await self.request(
            "POST",
            f"/v1/guests/{quote(user_id, safe='@:')}/extend",
            acting=acting,
            body={"expires_in": expires_in},
        )
        return Guest.from_json(data)

    async def _page(
        self,
        acting: Acting,
        path: str,
        key: str,
        params: Mapping[str, str],
        limit: int | None,
        cursor: str | None = None,
    ) -> tuple[list[Any], str | None]:
        """One page of a list call: its items and the cursor of the next (None at the end)."""
        query = dict(params)
        if limit:
            query["limit"] = str(limit)
        if cursor:
            query["cursor"] = cursor
        data = await self.request("GET", path, acting=acting, params=query)
        items = self.items(data, key)
        next_cursor = data.get("next_cursor")
        return items, next_cursor if isinstance(next_cursor, str) and next_cursor else None

    async def _every(
        self, acting: Acting, path: str, key: str, params: Mapping[str, str], page_size: int
    ) -> list[Any]:
        """Every page of a list call, following ``next_cursor`` for at most MAX_PAGES pages."""
        items: list[Any] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page, cursor = await self._page(acting, path, key, params, page_size, cursor)
            items.extend(page)
            if cursor is None:
                return items
            if cursor in seen:
                raise DmzError(200, "M_BAD_JSON", f"the registrar repeated a {key} page")
            seen.add(cursor)
        raise DmzError(
            200, "M_TOO_LARGE", f"the registrar listed more than {MAX_PAGES} pages of {key}"
        )


def _filters(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}
