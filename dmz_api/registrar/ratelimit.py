"""Per-address token buckets for the public onboarding page.

``RateLimiter`` keeps the buckets in process memory: right for one process on SQLite.
``SharedRateLimiter`` keeps them in the PostgreSQL database the replicas share, so a client
gets the same allowance however the load balancer spreads its requests; one statement per
request takes a token or says how long to wait. If the database cannot answer, the
request is judged by the process's own buckets instead (the page needs the database for
anything else anyway).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from .store import RegistrarStore

log = logging.getLogger("dmz_api.registrar.ratelimit")

# Rows of buckets that have refilled completely are deleted at most this often (seconds).
_PRUNE_EVERY = 60.0


class Limiter(Protocol):
    async def take(self, client: str) -> float:
        """Take one request for ``client``: 0 when allowed, else seconds until the next."""
        ...


class RateLimiter:
    """A token bucket per client address, in memory, with a bounded number of addresses."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def hit(self, client: str) -> float:
        """Take one request; returns 0 when allowed, else the seconds until the next one."""
        now = self.clock()
        tokens, updated = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    async def take(self, client: str) -> float:
        return self.hit(client)


class SharedRateLimiter:
    """The same buckets as ``RateLimiter``, in the shared database (wall-clock time)."""

    def __init__(
        self,
        store: RegistrarStore,
        per_minute: int,
        burst: int,
        *,
        fallback: RateLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.fallback = fallback
        self.clock = clock
        self._pruned = clock()
        self._failing = False

    async def take(self, client: str) -> float:
        now = self.clock()
        try:
            allowed, tokens = await self.store.take_rate_token(client, now, self.burst, self.rate)
            if now - self._pruned > _PRUNE_EVERY:
                self._pruned = now
                # A bucket full again is the same as no bucket.
                await self.store.prune_rate_buckets(now - self.burst / self.rate)
        except Exception as e:
            if not self._failing:
                log.warning(
                    "Shared rate limits unavailable (%s); using this process's own",
                    type(e).__name__,
                )
            self._failing = True
            return self.fallback.hit(client)
        if self._failing:
            log.info("Shared rate limits available again")
            self._failing = False
        return 0.0 if allowed else (1.0 - tokens) / self.rate
