"""HTTP client for dmz_api (registrar and gateway roles), over its published contract only.

Every call carries the bot's API key, the staff member it acts for (``X-Acting-User``)
and the command's correlation id (``X-Request-Id``, also kept in the audit trail);
writes that must not happen twice carry an ``Idempotency-Key``; gateway rule writes carry
``If-Match: <ruleset version>`` so a change based on a stale view is refused (409).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from attrs import field, frozen

from .config import Config
from .durations import parse_timestamp

# The registrar's largest page, and the most pages a full listing follows (a loop guard).
PAGE_SIZE = 1000
MAX_PAGES = 1000


@frozen
class Acting:
    """On whose behalf, and under which correlation id, a call is made."""

    user_id: str
    request_id: str


class DmzFailure(Exception):
    """A call on dmz_api did not succeed."""


class DmzUnavailable(DmzFailure):
    """dmz_api did not answer (timeout, refused connection): nothing is known to have happened."""

    def __init__(self, role: str, timeout: float, reason: str) -> None:
        super().__init__(f"the {role} did not answer ({reason})")
        self.role = role
        self.timeout = timeout
        self.reason = reason

    def sentence(self, effect: str | None) -> str:
        tail = f"; nothing was {effect}" if effect else ""
        return f"The DMZ service did not answer in {self.timeout:g} s{tail}."


class DmzError(DmzFailure):
    """dmz_api answered with an error document ``{errcode, error}``."""

    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error


class DmzClient:
    """One role of dmz_api: ``registrar`` or ``gateway`` (base URL ``dmz.<role>_url``)."""

    def __init__(
        self, http: aiohttp.ClientSession, config: Config, role: str, log: logging.Logger
    ) -> None:
        self.http = http
        self.config = config
        self.role = role
        self.log = log

    async def request(
        self,
        method: str,
        path: str,
        *,
        acting: Acting,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        if_match: int | None = None,
    ) -> Any:
        timeout = self.config.dmz_timeout
        headers = {
            "Authorization": f"Bearer {self.config.dmz_api_key}",
            "X-Acting-User": acting.user_id,
            "X-Request-Id": acting.request_id,
            "Accept": "application/json",
        }
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        url = f"{self.config.dmz_url(self.role)}{path}"
        try:
            async with self.http.request(
                method,
                url,
                json=body,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            self.log.warning(
                "%s %s [%s]: no answer in %g s", method, path, acting.request_id, timeout
            )
            raise DmzUnavailable(self.role, timeout, "timeout") from None
        except aiohttp.ClientError as e:
            self.log.warning("%s %s [%s]: %s", method, path, acting.request_id, type(e).__name__)
            raise DmzUnavailable(self.role, timeout, type(e).__name__) from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                raise DmzError(status, str(data.get("errcode", "M_UNKNOWN")), data["error"])
            raise DmzError(status, "M_UNKNOWN", f"the {self.role} answered HTTP {status}")
        if raw and data is None:
            raise DmzError(status, "M_BAD_JSON", f"the {self.role} answered with invalid JSON")
        self.log.debug("%s %s [%s] -> %d", method, path, acting.request_id, status)
        return data


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


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
            status=_str(data.get("status")) or "unknown",
            uses_allowed=uses_allowed if isinstance(uses_allowed, int) else None,
            uses_completed=_int(data.get("uses_completed")),
            expires_at=parse_timestamp(data.get("expires_at")),
            sponsor=_str(data.get("sponsor")),
            note=_str(data.get("note")),
            created_at=parse_timestamp(data.get("created_at")),
            url=_str(data.get("url")),
        )


@frozen
class Guest:
    user_id: str
    status: str
    sponsor: str
    created_at: datetime | None
    token_id: str

    @classmethod
    def from_json(cls, data: Any) -> Guest:
        if not isinstance(data, dict) or not isinstance(data.get("user_id"), str):
            raise DmzError(200, "M_BAD_JSON", "the registrar answered without a guest user_id")
        token_id = data.get("token_id")
        return cls(
            user_id=data["user_id"],
            status=_str(data.get("status")) or "unknown",
            sponsor=_str(data.get("sponsor")),
            created_at=parse_timestamp(data.get("created_at")),
            token_id=str(token_id) if isinstance(token_id, str | int) else "",
        )


@frozen
class SponsorRevocation:
    tokens_revoked: int
    guests_deactivated: int


class Registrar:
    """The registrar's admin API: tokens, guests, sponsor revocation."""

    def __init__(self, api: DmzClient) -> None:
        self.api = api

    async def mint(
        self, acting: Acting, *, uses: int, expires_in: int, note: str, idempotency_key: str
    ) -> Token:
        data = await self.api.request(
            "POST",
            "/v1/tokens",
            acting=acting,
            body={"uses": uses, "expires_in": expires_in, "note": note},
            idempotency_key=idempotency_key,
        )
        return Token.from_json(data)

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
        data = await self.api.request(
            "GET", f"/v1/tokens/{quote(token_id, safe='')}", acting=acting
        )
        return Token.from_json(data)

    async def revoke(self, acting: Acting, token_id: str) -> Token | None:
        data = await self.api.request(
            "DELETE", f"/v1/tokens/{quote(token_id, safe='')}", acting=acting
        )
        return Token.from_json(data) if isinstance(data, dict) and "id" in data else None

    async def revoke_sponsor(self, acting: Acting, user_id: str, guests: str) -> SponsorRevocation:
        data = await self.api.request(
            "POST",
            f"/v1/sponsors/{quote(user_id, safe='@:')}/revoke",
            acting=acting,
            body={"guests": guests},
        )
        data = data if isinstance(data, dict) else {}
        return SponsorRevocation(
            tokens_revoked=_int(data.get("tokens_revoked")),
            guests_deactivated=_int(data.get("guests_deactivated")),
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
    ) -> list[Guest]:
        """Every page, newest first."""
        params = _filters(sponsor=sponsor, status=status)
        items = await self._every(acting, "/v1/guests", "guests", params, page_size)
        return [Guest.from_json(item) for item in items]

    async def deactivate_guest(self, acting: Acting, user_id: str) -> None:
        await self.api.request(
            "POST", f"/v1/guests/{quote(user_id, safe='@:')}/deactivate", acting=acting
        )

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
        data = await self.api.request("GET", path, acting=acting, params=query)
        items = _items(data, key)
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


def _items(data: Any, key: str) -> list[Any]:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DmzError(200, "M_BAD_JSON", f"the registrar answered without a {key} list")
    return items


@frozen
class GatewayRule:
    """One rule of the gateway's pipeline (docs/rules.md)."""

    id: str
    kind: str
    params: dict[str, Any]
    mode: str
    enabled: bool
    priority: int
    note: str
    author: str

    @classmethod
    def from_json(cls, data: Any) -> GatewayRule:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a rule id")
        params = data.get("params")
        return cls(
            id=data["id"],
            kind=_str(data.get("kind")) or "unknown",
            params=params if isinstance(params, dict) else {},
            mode=_str(data.get("mode")) or "enforce",
            enabled=data.get("enabled") is not False,
            priority=_int(data.get("priority"), 100),
            note=_str(data.get("note")),
            author=_str(data.get("author")),
        )


@frozen
class Ruleset:
    version: int
    rules: tuple[GatewayRule, ...]

    def get(self, rule_id: str) -> GatewayRule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


@frozen
class RuleWrite:
    """The answer to a rule write: the version after it, and whether it changed anything."""

    version: int
    changed: bool
    rule: GatewayRule | None


class Gateway:
    """The gateway's admin API: rules (versioned, If-Match), dry runs, decisions."""

    def __init__(self, api: DmzClient) -> None:
        self.api = api

    async def rules(self, acting: Acting) -> Ruleset:
        data = await self.api.request("GET", "/v1/rules", acting=acting)
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a ruleset version")
        rules = tuple(GatewayRule.from_json(item) for item in _gateway_items(data, "rules"))
        return Ruleset(version, rules)

    async def _write(
        self,
        method: str,
        path: str,
        acting: Acting,
        version: int,
        body: Mapping[str, Any] | None = None,
    ) -> RuleWrite:
        data = await self.api.request(method, path, acting=acting, body=body, if_match=version)
        data = data if isinstance(data, dict) else {}
        new_version = data.get("version")
        if not isinstance(new_version, int) or isinstance(new_version, bool):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a ruleset version")
        rule = data.get("rule")
        return RuleWrite(
            version=new_version,
            changed=data.get("changed") is not False,
            rule=GatewayRule.from_json(rule) if isinstance(rule, dict) else None,
        )

    async def add_rule(self, acting: Acting, spec: Mapping[str, Any], *, version: int) -> RuleWrite:
        return await self._write("POST", "/v1/rules", acting, version, spec)

    async def update_rule(
        self, acting: Acting, rule_id: str, patch: Mapping[str, Any], *, version: int
    ) -> RuleWrite:
        return await self._write("PATCH", _rule_path(rule_id), acting, version, patch)

    async def remove_rule(self, acting: Acting, rule_id: str, *, version: int) -> RuleWrite:
        return await self._write("DELETE", _rule_path(rule_id), acting, version)

    async def promote(self, acting: Acting, rule_id: str, *, version: int) -> RuleWrite:
        return await self._write("POST", f"{_rule_path(rule_id)}/promote", acting, version)

    async def apply_preset(self, acting: Acting, name: str, *, version: int) -> RuleWrite:
        path = f"/v1/rules/preset/{quote(name, safe='')}"
        return await self._write("POST", path, acting, version)

    async def history(self, acting: Acting, *, limit: int) -> list[dict[str, Any]]:
        data = await self.api.request(
            "GET", "/v1/rules/history", acting=acting, params={"limit": str(limit)}
        )
        return [item for item in _gateway_items(data, "versions") if isinstance(item, dict)]

    async def evaluate(self, acting: Acting, described: Mapping[str, Any]) -> dict[str, Any]:
        data = await self.api.request("POST", "/v1/evaluate", acting=acting, body=described)
        if not isinstance(data, dict) or not isinstance(data.get("decision"), dict):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a decision")
        return data

    async def decisions(
        self,
        acting: Acting,
        *,
        outcome: str | None = None,
        origin: str | None = None,
        since: str | None = None,
        rule: str | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        query = (("decision", outcome), ("origin", origin), ("since", since), ("rule", rule))
        params = {key: value for key, value in query if value}
        params["limit"] = str(limit)
        data = await self.api.request("GET", "/v1/decisions", acting=acting, params=params)
        return [item for item in _gateway_items(data, "decisions") if isinstance(item, dict)]


def _rule_path(rule_id: str) -> str:
    return f"/v1/rules/{quote(rule_id, safe='')}"


def _gateway_items(data: Any, key: str) -> list[Any]:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DmzError(200, "M_BAD_JSON", f"the gateway answered without a {key} list")
    return items
