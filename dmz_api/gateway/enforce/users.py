"""Which Matrix user a client request's access token belongs to (``gateway.user_lookup``).

``UserLookup.user_for(token)`` asks the homeserver (``GET /_matrix/client/v3/account/whoami``
with that token, under ``timeout``) and remembers the answer for ``cache_ttl`` seconds in a
least-recently-used table of at most ``cache_size`` entries. The table is keyed by the
token's SHA-256 digest: the token itself is never kept, logged or put in a metric label.
Concurrent first requests with one token share one whoami call.

Answers: the user ID; ``None`` when the homeserver says the token is not valid (401/403:
the homeserver will refuse the request itself, so it is judged without a user and that
answer is cached too, which bounds what a flood of made-up tokens costs the homeserver);
``LookupFailed`` when the homeserver cannot say (unreachable, timeout, 5xx, nonsense) —
then ``on_failure`` decides: ``decide`` judges without a user, ``refuse`` refuses (the
proxy answers 503). Failures are not cached.

``access_token(auth_headers, raw_path)`` is the token a request carries: the
``Authorization: Bearer`` header or, as Synapse still accepts it, the ``access_token``
query parameter. ``identify(users, info, ...)`` is the one step both enforcement points
that see client requests take (the built-in proxy and nginx forward-auth, ``authz``):
it names ``info.user`` before the rules run. ``user_lookup_ctx`` runs the lookup, under
``USER_LOOKUP``, while the app runs and ``gateway.user_lookup.enabled`` is set; it asks
``gateway.upstream``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web

from ...metrics import METRICS, Metrics
from ..config import GatewayConfig, UserLookupConfig
from ..policy.model import RequestClass, RequestInfo

log = logging.getLogger("dmz_api.gateway.enforce.users")

WHOAMI = "/_matrix/client/v3/account/whoami"
_MAX_TOKEN = 4096
# The answer (503 M_UNKNOWN) when the homeserver cannot say and ``on_failure`` is refuse.
CANNOT_TELL_USER = "The gateway cannot tell whose access token this is; try again later"


class LookupFailed(Exception):
    """The homeserver could not say whose token this is."""


def access_token(auth_headers: Sequence[str], raw_path: str) -> str | None:
    for value in auth_headers:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()[:_MAX_TOKEN]
    query = raw_path.partition("?")[2]
    if "access_token=" in query:
        values = parse_qs(query).get("access_token")
        if values and values[0]:
            return values[0][:_MAX_TOKEN]
    return None


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class UserLookup:
    def __init__(
        self,
        base_url: str,
        config: UserLookupConfig,
        metrics: Metrics,
        *,
        ca_file: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._url = base_url.rstrip("/") + WHOAMI
        self._ca_file = ca_file
        self._clock = clock or time.monotonic
        self._cache: OrderedDict[bytes, tuple[float, str | None]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[str | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        lookups = metrics.counter(
            "dmz_api_gateway_user_lookups_total",
            "Access-token lookups by the gateway (proxy and forward-auth), by result",
            ["result"],
        )
        self._hits = lookups.labels("cached")
        self._asked = lookups.labels("asked")
        self._failed = lookups.labels("failed")

    async def start(self) -> None:
        context: ssl.SSLContext | bool = True
        if self._ca_file is not None:
            context = ssl.create_default_context(cafile=self._ca_file)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            connector=aiohttp.TCPConnector(ssl=context, limit=64),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def cached(self, token: str) -> tuple[bool, str | None]:
        """(known, user) from the cache alone: no await on the common path."""
        key = token_key(token)
        entry = self._cache.get(key)
        if entry is None:
            return False, None
        expires, user = entry
        if self._clock() >= expires:
            del self._cache[key]
            return False, None
        self._cache.move_to_end(key)
        self._hits.inc()
        return True, user

    async def user_for(self, token: str) -> str | None:
        known, user = self.cached(token)
        if known:
            return user
        key = token_key(token)
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            user = await self._ask(token)
        except LookupFailed as e:
            self._failed.inc()
            future.set_exception(e)
            future.exception()  # retrieved here, so a future nobody else awaited is quiet
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(user)
        self._remember(key, user)
        return user

    def _remember(self, key: bytes, user: str | None) -> None:
        self._cache[key] = (self._clock() + self.config.cache_ttl, user)
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    async def _ask(self, token: str) -> str | None:
        if self._session is None:
            raise LookupFailed("the user lookup is not started")
        self._asked.inc()
        try:
            async with self._session.get(
                self._url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False
            ) as response:
                if response.status in (401, 403):
                    return None
                if response.status != 200:
                    raise LookupFailed(f"whoami answered {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            # The exception text never holds the token (it is only in a header).
            log.warning("Cannot look up an access token's user: %s", type(e).__name__)
            raise LookupFailed(type(e).__name__) from None
        user = body.get("user_id") if isinstance(body, dict) else None
        if not isinstance(user, str) or not user.startswith("@") or ":" not in user:
            raise LookupFailed("whoami answered without a user_id")
        return user[:255]


USER_LOOKUP = web.AppKey("user_lookup", UserLookup)


async def identify(
    users: UserLookup | None, info: RequestInfo, auth_headers: Sequence[str], raw_path: str
) -> bool:
    """Name ``info.user`` for a client request with an access token; False: refuse (503).

    A cached token is answered without suspending. A request without a token, or a
    federation request, is judged as it is.
    """
    if users is None or info.request_class is not RequestClass.CLIENT:
        return True
    token = access_token(auth_headers, raw_path)
    if token is None:
        return True
    known, user = users.cached(token)
    if not known:
        try:
            user = await users.user_for(token)
        except LookupFailed:
            return users.config.on_failure != "refuse"
    info.user = user
    return True


def user_lookup_ctx(config: GatewayConfig) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context that runs the user lookup when it is enabled."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if not config.user_lookup.enabled:
            yield
            return
        assert config.upstream is not None  # the config requires it (gateway/config.py)
        users = UserLookup(
            config.upstream,
            config.user_lookup,
            app[METRICS],
            ca_file=str(config.upstream_ca_file) if config.upstream_ca_file else None,
        )
        await users.start()
        app[USER_LOOKUP] = users
        try:
            yield
        finally:
            await users.stop()

    return ctx
