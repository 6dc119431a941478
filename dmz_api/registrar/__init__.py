"""The registrar role: single-use registration tokens, the guest onboarding page, guests.

``setup(app, config, ...)`` is handed the ``registrar:`` section and the server's public
URL and trusted proxies; it adds the admin API and the public page, and a cleanup context
that builds the ``RegistrarService`` (with its own HTTP session to the homeserver) under
``REGISTRAR`` once the shared database (``DATABASE``) is open; on PostgreSQL the page's
rate limits move into that database. At start it adopts tokens left native on the
homeserver by the old design (``service.sync``), in the background so an unreachable
homeserver does not hold up the start; and every ``expiry_interval`` it deactivates the
guests whose time ran out (``service.expire_guests``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from ..db import DATABASE
from ..metrics import METRICS
from .config import RegistrarConfig
from .crypto import RegistrarKeys
from .homeserver import make_adapter
from .migrations import upgrade_table
from .onboarding import OnboardingPage
from .ratelimit import RateLimiter, SharedRateLimiter
from .routes import add_routes
from .service import REGISTRAR, RegistrarMetrics, RegistrarService
from .store import RegistrarStore
from .tracing import HomeserverTracing

log = logging.getLogger("dmz_api.registrar")


def setup(
    app: web.Application,
    config: RegistrarConfig,
    *,
    public_url: str,
    trusted_proxies: Sequence[str],
) -> None:
    keys = RegistrarKeys(config.secret)
    if keys.ephemeral:
        log.warning(
            "registrar.secret is not set: open onboarding forms and idempotent mint replies "
            "will not survive a restart (and replicas cannot share them)"
        )
    metrics = RegistrarMetrics(app[METRICS])
    tracing = HomeserverTracing(app[METRICS])
    add_routes(app)
    page = OnboardingPage(config, keys, public_url=public_url, trusted_proxies=trusted_proxies)
    page.add_routes(app)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        hs = config.homeserver
        timeout = aiohttp.ClientTimeout(total=hs.timeout, connect=min(hs.timeout, 5.0))
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            raise_for_status=False,
            trace_configs=[tracing.trace_config()],
        ) as session:
            store = RegistrarStore(app[DATABASE])
            if store.shared and isinstance(page.limiter, RateLimiter):
                # Replicas share PostgreSQL: they share the page's rate limits too.
                page.limiter = SharedRateLimiter(
                    store,
                    config.rate_limit.per_minute,
                    config.rate_limit.burst,
                    fallback=page.limiter,
                )
            service = RegistrarService(
                config,
                public_url,
                store,
                make_adapter(hs, session),
                keys,
                metrics,
            )
            app[REGISTRAR] = service
            adoption = asyncio.create_task(_adopt_legacy(service))
            expiry = asyncio.create_task(_expire_forever(service, config.expiry_interval))
            try:
                yield
            finally:
                for task in (adoption, expiry):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app.cleanup_ctx.append(service_ctx)


async def _adopt_legacy(service: RegistrarService) -> None:
    try:
        await service.sync()
    except Exception:
        # Every admin read and page view tries again.
        log.exception("Adopting legacy native tokens failed")


async def _expire_forever(service: RegistrarService, interval: float) -> None:
    """Deactivate guests whose time ran out, every ``interval`` seconds."""
    while True:
        try:
            await service.expire_guests()
        except Exception:
            log.exception("Expiring guests failed; the next run tries again")
        await asyncio.sleep(interval)


__all__ = ["REGISTRAR", "setup", "upgrade_table"]
