"""The registrar role: single-use registration tokens, the guest onboarding page, guests.

``setup(app)`` adds the admin API and the public page, and a cleanup context that builds
the ``RegistrarService`` (with its own HTTP session to the homeserver) once the shared
database is open; on PostgreSQL the page's rate limits move into that database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from .. import appkeys
from .crypto import RegistrarKeys
from .homeserver import make_adapter
from .migrations import upgrade_table
from .onboarding import OnboardingPage
from .ratelimit import RateLimiter, SharedRateLimiter
from .routes import add_routes
from .service import RegistrarMetrics, RegistrarService
from .store import RegistrarStore
from .tracing import HomeserverTracing

log = logging.getLogger("dmz_api.registrar")


def setup(app: web.Application) -> None:
    config = app[appkeys.CONFIG]
    registrar = config.registrar
    assert registrar is not None
    keys = RegistrarKeys(registrar.secret)
    if keys.ephemeral:
        log.warning(
            "registrar.secret is not set: open onboarding forms and idempotent mint replies "
            "will not survive a restart (and replicas cannot share them)"
        )
    metrics = RegistrarMetrics(app[appkeys.METRICS])
    tracing = HomeserverTracing(app[appkeys.METRICS])
    add_routes(app)
    page = OnboardingPage(config, registrar, keys)
    page.add_routes(app)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        hs = registrar.homeserver
        timeout = aiohttp.ClientTimeout(total=hs.timeout, connect=min(hs.timeout, 5.0))
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            raise_for_status=False,
            trace_configs=[tracing.trace_config()],
        ) as session:
            store = RegistrarStore(app[appkeys.DATABASE])
            if store.shared and isinstance(page.limiter, RateLimiter):
                # Replicas share PostgreSQL: they share the page's rate limits too.
                page.limiter = SharedRateLimiter(
                    store,
                    registrar.rate_limit.per_minute,
                    registrar.rate_limit.burst,
                    fallback=page.limiter,
                )
            app[appkeys.REGISTRAR] = RegistrarService(
                registrar,
                config.server.public_url,
                store,
                make_adapter(hs, session),
                keys,
                metrics,
            )
            yield

    app.cleanup_ctx.append(service_ctx)


__all__ = ["setup", "upgrade_table"]
