"""The gateway role: the rule pipeline every federation and client request is checked
against, its admin API, and the decision endpoints (forward-auth, antispam callbacks).

``setup(app)`` adds the routes and a cleanup context that builds the ``GatewayService``
into ``app[appkeys.GATEWAY]`` once the shared database is open (see ``service.py`` for the
interface enforcement points use: ``decide(RequestInfo) -> Decision``, and
``matrix_paths.request_info``/``classify`` to describe a request).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .. import appkeys
from . import antispam, authz, routes
from .decisions import GatewayMetrics
from .migrations import upgrade_table
from .proxy import proxy_ctx
from .service import GatewayService
from .store import RuleStore


def setup(app: web.Application) -> None:
    config = app[appkeys.CONFIG].gateway
    assert config is not None
    metrics = GatewayMetrics(app[appkeys.METRICS])
    routes.add_routes(app)
    authz.add_routes(app)
    antispam.add_routes(app, config.server_name)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        service = GatewayService(config, RuleStore(app[appkeys.DATABASE]), metrics)
        await service.start()
        app[appkeys.GATEWAY] = service
        try:
            yield
        finally:
            await service.stop()

    app.cleanup_ctx.append(service_ctx)
    app.cleanup_ctx.append(proxy_ctx)


__all__ = ["GatewayService", "setup", "upgrade_table"]
