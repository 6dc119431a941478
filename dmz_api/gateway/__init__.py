"""The gateway role: the rule pipeline every federation and client request is checked
against, the points that enforce it, and its admin API.

Where to look:

* ``http/`` — transport: the proxy's HTTP/1.1 listener and pooled upstream client;
* ``policy/`` — what a request is (``matrix_paths``, ``model``) and what the rules say
  (``rules``, ``compile``, ``evaluate``); pure, no I/O;
* ``enforce/`` — enforcement points: the reverse ``proxy``, nginx forward-auth ``authz``,
  Synapse ``antispam`` callbacks and the MSC4284 ``policy_server``; each calls
  ``GatewayService.decide``;
* ``signing/`` — the policy server's key, events as the spec signs them, X-Matrix
  request signatures;
* state and admin, here: ``service`` (the live ruleset, ``decide``, rule writes),
  ``store`` and ``migrations`` (versioned rules, decisions), ``decisions`` (the batched
  decision log and metrics), ``routes`` (the admin API), ``config``;
* protected rooms: ``protection`` (pure: desired room state, differences), ``rooms`` (the
  live list and the proxy's guard), ``room_routes`` (their admin API).

``setup(app, config)`` is handed the ``gateway:`` section; it adds the routes and a
cleanup context that builds the ``GatewayService`` under ``GATEWAY`` once the shared
database (``DATABASE``) is open, then the proxy under ``GATEWAY_PROXY`` when
``gateway.listen`` is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..db import DATABASE
from ..metrics import METRICS
from . import room_routes, routes
from .config import GatewayConfig
from .decisions import GatewayMetrics
from .enforce import antispam, authz, policy_server
from .enforce.proxy import GATEWAY_PROXY, proxy_ctx
from .enforce.users import user_lookup_ctx
from .migrations import upgrade_table
from .service import GATEWAY, GatewayService
from .store import RuleStore


def setup(app: web.Application, config: GatewayConfig) -> None:
    metrics = GatewayMetrics(app[METRICS])
    routes.add_routes(app)
    room_routes.add_routes(app)
    authz.add_routes(app)
    antispam.add_routes(app, config.server_name)
    policy_server.add_routes(app)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        service = GatewayService(config, RuleStore(app[DATABASE]), metrics)
        await service.start()
        app[GATEWAY] = service
        try:
            yield
        finally:
            await service.stop()

    app.cleanup_ctx.append(service_ctx)
    app.cleanup_ctx.append(policy_server.policy_server_ctx)
    app.cleanup_ctx.append(user_lookup_ctx(config))
    app.cleanup_ctx.append(proxy_ctx)


__all__ = ["GATEWAY", "GATEWAY_PROXY", "GatewayService", "setup", "upgrade_table"]
