"""The one HTTP transport to dmz_api that both role clients share.

Every call carries the bot's API key, the staff member it acts for (``X-Acting-User``)
and the command's correlation id (``X-Request-Id``, also kept in the audit trail);
writes that must not happen twice carry an ``Idempotency-Key``, gateway rule writes an
``If-Match``. Each call has the configured timeout; no answer is ``DmzUnavailable``, an
error document ``DmzError``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp
from attrs import frozen

from ..config import Config


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


class DmzTransport:
    """HTTP calls on either role of dmz_api (base URL ``dmz.<role>_url``), over one session."""

    def __init__(self, http: aiohttp.ClientSession, config: Config, log: logging.Logger) -> None:
        self.http = http
        self.config = config
        self.log = log

    async def request(
        self,
        role: str,
        method: str,
        path: str,
        *,
        acting: Acting,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        if_match: int | None = None,
        text: bool = False,
    ) -> Any:
        """The JSON answer; with ``text``, a successful answer's body as text (errors are
        still read as Matrix-style JSON)."""
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
        url = f"{self.config.dmz_url(role)}{path}"
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
            raise DmzUnavailable(role, timeout, "timeout") from None
        except aiohttp.ClientError as e:
            self.log.warning("%s %s [%s]: %s", method, path, acting.request_id, type(e).__name__)
            raise DmzUnavailable(role, timeout, type(e).__name__) from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                raise DmzError(status, str(data.get("errcode", "M_UNKNOWN")), data["error"])
            raise DmzError(status, "M_UNKNOWN", f"the {role} answered HTTP {status}")
        if text:
            return raw.decode("utf-8", "replace")
        if raw and data is None:
            raise DmzError(status, "M_BAD_JSON", f"the {role} answered with invalid JSON")
        self.log.debug("%s %s [%s] -> %d", method, path, acting.request_id, status)
        return data


class RoleClient:
    """Base of the typed clients: one role of dmz_api over the shared transport."""

    role: ClassVar[str]

    def __init__(self, transport: DmzTransport) -> None:
        self.transport = transport

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
        text: bool = False,
    ) -> Any:
        return await self.transport.request(
            self.role,
            method,
            path,
            acting=acting,
            body=body,
            params=params,
            idempotency_key=idempotency_key,
            if_match=if_match,
            text=text,
        )

    def items(self, data: Any, key: str) -> list[Any]:
        """The list under ``key`` of an answer; a missing one is ``M_BAD_JSON``."""
        items = data.get(key) if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise DmzError(200, "M_BAD_JSON", f"the {self.role} answered without a {key} list")
        return items


def as_int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""
