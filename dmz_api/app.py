"""``init_app(config)``: the shared core (config, keys, database, metrics, errors) plus the
roles the config enables.

Each role package exposes ``upgrade_table`` and a ``setup(app, section, ...)`` that is
handed its own config section; the roles are imported here only when enabled, and they
import the core, never this module or ``dmz_api.config``, so no import goes in a circle.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial

from aiohttp import web
from mautrix.util.async_db import UpgradeTable
from prometheus_client import CONTENT_TYPE_LATEST

from .auth import auth_middleware
from .config import CONFIG, Config
from .db import DATABASE, open_database
from .keys import KEYRING, KeyRing
from .metrics import METRICS, Metrics
from .middlewares import error_middleware, request_id_middleware
from .openapi import openapi_handler

log = logging.getLogger("dmz_api")

ENABLED_ROLES = web.AppKey("enabled_roles", tuple[str, ...])


@dataclass(frozen=True)
class Role:
    name: str
    upgrade_table: UpgradeTable
    setup: Callable[[web.Application], None]


def enabled_roles(config: Config) -> list[Role]:
    roles: list[Role] = []
    if config.registrar is not None:
        from . import registrar

        setup = partial(
            registrar.setup,
            config=config.registrar,
            public_url=config.server.public_url,
            trusted_proxies=config.server.trusted_proxies,
        )
        roles.append(Role("registrar", registrar.upgrade_table, setup))
    if config.gateway is not None:
        from . import gateway

        setup = partial(gateway.setup, config=config.gateway)
        roles.append(Role("gateway", gateway.upgrade_table, setup))
    return roles


async def healthz(request: web.Request) -> web.Response:
    roles: tuple[str, ...] = request.app[ENABLED_ROLES]
    return web.json_response({"status": "ok", "roles": [*roles]})


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth_middleware],
        client_max_size=1024**2,
    )
    roles = enabled_roles(config)
    app[CONFIG] = config
    app[KEYRING] = KeyRing(config.api_keys)
    app[METRICS] = Metrics()
    app[ENABLED_ROLES] = tuple(role.name for role in roles)

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        tables = [role.upgrade_table for role in roles]
        async with open_database(config.database, tables, config.database_opts) as db:
            app[DATABASE] = db
            yield

    app.cleanup_ctx.append(database_ctx)
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics_handler, name="metrics")
    app.router.add_get("/v1/openapi.json", openapi_handler, name="openapi")
    for role in roles:
        role.setup(app)
    return app
