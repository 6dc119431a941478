"""Who asks: the ``X-Matrix`` signature of a federation request, verified as Synapse does.

The signed object is ``{"method", "uri", "origin", "destination", "content"}`` with ``uri``
the raw request target (path and query, still encoded) and ``destination`` our own server
name; each ``X-Matrix`` header carries one ``key``/``sig``; one valid signature from the
origin suffices. A header naming another destination is refused.

The origin's keys are looked up through ``key_server`` (our own homeserver's notary API,
``GET /_matrix/key/v2/query/{server}``): it resolves and reaches the origin as federation
does, and it is the server the gateway already trusts with everything it forwards. Each
key object must also carry the origin's own signature. Keys are cached until their
``valid_until_ts`` (at most ``_MAX_CACHE`` seconds); concurrent lookups for one server
share one request, and a failed lookup is not retried for ``_NEGATIVE_CACHE`` seconds, so
a flood of requests naming an unknown server costs one outbound request.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from signedjson.types import VerifyKey
from unpaddedbase64 import decode_base64

_X_MATRIX = re.compile(r"^X-Matrix +", re.IGNORECASE)
_PARAMS = re.compile(r"[ \t]*,[ \t]*")
_ESCAPED = re.compile(r"\\(.)")
_MAX_CACHE = 3600.0
_NEGATIVE_CACHE = 10.0
_MAX_KEYS_BODY = 1024 * 1024


class NotAuthenticated(Exception):
    """The request's X-Matrix signature is missing or does not verify (one sentence)."""


@dataclass(frozen=True)
class XMatrix:
    origin: str
    key_id: str
    signature: str
    destination: str | None


def _unquote(value: str) -> str:
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        return _ESCAPED.sub(r"\1", value[1:-1])
    return value


def parse_x_matrix(header: str) -> XMatrix | None:
    """The parameters of one ``X-Matrix`` header; None for another scheme or a broken one."""
    parts = _X_MATRIX.split(header.strip(), maxsplit=1)
    if len(parts) != 2:
        return None
    params: dict[str, str] = {}
    for param in _PARAMS.split(parts[1]):
        key, sep, value = param.partition("=")
        if sep:
            params[key.strip().lower()] = _unquote(value.strip())
    try:
        origin, key_id, signature = params["origin"], params["key"], params["sig"]
    except KeyError:
        return None
    return XMatrix(origin, key_id, signature, params.get("destination"))


class KeyFetchError(Exception):
    pass


class ServerKeys:
    """The verify keys of remote servers, fetched through a notary and cached."""

    def __init__(
        self,
        key_server: str,
        *,
        ca_file: Path | None,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = key_server.rstrip("/")
        self._ca_file = ca_file
        self._timeout = timeout
        self._clock = clock
        # server -> (key id -> key, expires at); failures: server -> retry after.
        self._cache: dict[str, tuple[dict[str, VerifyKey], float]] = {}
        self._failed: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[dict[str, VerifyKey]]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        context: ssl.SSLContext | bool = True
        if self._base.startswith("https://"):
            context = ssl.create_default_context(
                cafile=str(self._ca_file) if self._ca_file is not None else None
            )
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(ssl=context, limit=16),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def keys(self, server: str) -> dict[str, VerifyKey]:
        now = self._clock()
        cached = self._cache.get(server)
        if cached is not None and cached[1] > now:
            return cached[0]
        if self._failed.get(server, 0.0) > now:
            raise KeyFetchError(f"the keys of {server} could not be fetched a moment ago")
        pending = self._inflight.get(server)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(server))
            self._inflight[server] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(server, None))
        return await asyncio.shield(pending)

    async def _fetch(self, server: str) -> dict[str, VerifyKey]:
        session = self._session
        assert session is not None, "ServerKeys.start() was not called"
        url = f"{self._base}/_matrix/key/v2/query/{quote(server, safe='')}"
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    raise KeyFetchError(f"the key server answered {response.status}")
                raw = await response.content.read(_MAX_KEYS_BODY + 1)
                if len(raw) > _MAX_KEYS_BODY:
                    raise KeyFetchError("the key server's answer is too large")
            keys, expires = _server_keys(server, raw, self._clock())
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            self._failed[server] = self._clock() + _NEGATIVE_CACHE
            raise KeyFetchError(
                f"the keys of {server} cannot be fetched ({type(e).__name__})"
            ) from None
        except KeyFetchError as e:
            self._failed[server] = self._clock() + _NEGATIVE_CACHE
            raise KeyFetchError(f"no key of {server} can be used: {e}") from None
        self._failed.pop(server, None)
        self._cache[server] = (keys, expires)
        return keys


def _server_keys(server: str, raw: bytes, now: float) -> tuple[dict[str, VerifyKey], float]:
    """The current verify keys in a ``/_matrix/key/v2/query`` answer, and until when."""
    body = json.loads(raw)
    objects = body.get("server_keys") if isinstance(body, dict) else None
    if not isinstance(objects, list):
        raise KeyFetchError("the key server's answer has no server_keys")
    keys: dict[str, VerifyKey] = {}
    expires = now + _MAX_CACHE
    for obj in objects:
        if not isinstance(obj, dict) or obj.get("server_name") != server:
            continue
        found = _verify_keys(obj)
        if not found:
            continue
        # The origin's own signature, by one of the keys it lists.
        if not any(_self_signed(obj, server, key) for key in found.values()):
            continue
        valid_until = obj.get("valid_until_ts")
        if isinstance(valid_until, int) and valid_until / 1000 > now:
            expires = min(expires, valid_until / 1000)
            keys.update(found)
    if not keys:
        raise KeyFetchError("the key server knows no valid one")
    return keys, expires


def _verify_keys(obj: dict[str, Any]) -> dict[str, VerifyKey]:
    found: dict[str, VerifyKey] = {}
    verify_keys = obj.get("verify_keys")
    if not isinstance(verify_keys, dict):
        return found
    for key_id, data in verify_keys.items():
        if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("key"), str):
            continue
        try:
            found[key_id] = decode_verify_key_bytes(key_id, decode_base64(data["key"]))
        except Exception:  # noqa: S112 - a malformed key is skipped, the others may do
            continue
    return found


def _self_signed(obj: dict[str, Any], server: str, key: VerifyKey) -> bool:
    try:
        verify_signed_json(obj, server, key)
    except SignatureVerifyException:
        return False
    return True


class RequestVerifier:
    """Verifies the X-Matrix signature of a request to us (``destination``)."""

    def __init__(self, destination: str, keys: ServerKeys) -> None:
        self.destination = destination
        self._keys = keys

    async def origin(
        self, method: str, uri: str, authorization: Iterable[str], content: Any
    ) -> str:
        """The verified origin server of the request (lower case); NotAuthenticated otherwise."""
        headers = [h for h in (parse_x_matrix(a) for a in authorization) if h is not None]
        if not headers:
            raise NotAuthenticated("the request carries no X-Matrix authorization")
        origins = {h.origin.lower() for h in headers}
        if len(origins) > 1:
            raise NotAuthenticated("the request names conflicting X-Matrix origins")
        origin = headers[0].origin
        destination = self.destination
        for header in headers:
            if header.destination is not None:
                if header.destination.lower() != self.destination.lower():
                    raise NotAuthenticated("the request is addressed to another server")
                # Signed as the sender spelled it (server names are case-insensitive).
                destination = header.destination
        signed: dict[str, Any] = {
            "method": method.upper(),
            "uri": uri,
            "origin": origin,
            "destination": destination,
            "signatures": {origin: {h.key_id: h.signature for h in headers}},
        }
        if content is not None:
            signed["content"] = content
        try:
            keys = await self._keys.keys(origin)
        except KeyFetchError as e:
            raise NotAuthenticated(str(e)) from None
        for header in headers:
            key = keys.get(header.key_id)
            if key is not None and _self_signed(signed, origin, key):
                return origin.lower()
        raise NotAuthenticated(f"the X-Matrix signature of {origin} does not verify")
