"""``init_app(config)``: the shared core (config, keys, database, metrics, errors) plus the
roles the config enables. Each role package exposes ``upgrade_table`` and ``setup(app)``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import ModuleType

from aiohttp import web

from . import appkeys
from .auth import auth_middleware
from .config import Config
from .db import open_database
from .keys import KeyRing
from .metrics import Metrics, metrics_handler
from .middlewares import error_middleware, request_id_middleware
from .openapi import openapi_handler

log = logging.getLogger("dmz_api")

ENABLED_ROLES = web.AppKey("enabled_roles", tuple[str, ...])


def enabled_roles(config: Config) -> list[tuple[str, ModuleType]]:
    roles: list[tuple[str, ModuleType]] = []
    if config.registrar is not None:
        from . import registrar

        roles.append(("registrar", registrar))
    if config.gateway is not None:
        from . import gateway

        roles.append(("gateway", gateway))
    return roles


async def healthz(request: web.Request) -> web.Response:
    roles: tuple[str, ...] = request.app[ENABLED_ROLES]
    return web.json_response({"status": "ok", "roles": [*roles]})


def init_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth_middleware],
        client_max_size=1024**2,
    )
    roles = enabled_roles(config)
    app[appkeys.CONFIG] = config
    app[appkeys.KEYRING] = KeyRing(config.api_keys)
    app[appkeys.METRICS] = Metrics()
    app[ENABLED_ROLES] = tuple(name for name, _ in roles)

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        tables = [module.upgrade_table for _, module in roles]
        async with open_database(config.database, tables, config.database_opts) as db:
            app[appkeys.DATABASE] = db
            yield

    app.cleanup_ctx.append(database_ctx)
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics_handler, name="metrics")
    app.router.add_get("/v1/openapi.json", openapi_handler, name="openapi")
    for _, module in roles:
        module.setup(app)
    return app
