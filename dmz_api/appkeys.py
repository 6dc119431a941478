"""Every object shared through the aiohttp application, as a typed key in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from mautrix.util.async_db import Database

if TYPE_CHECKING:
    from .config import Config
    from .gateway.enforce.proxy import GatewayProxy
    from .gateway.service import GatewayService
    from .keys import KeyRing
    from .metrics import Metrics
    from .registrar.service import RegistrarService

CONFIG: web.AppKey[Config] = web.AppKey("config")
DATABASE: web.AppKey[Database] = web.AppKey("database", Database)
KEYRING: web.AppKey[KeyRing] = web.AppKey("keyring")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
REGISTRAR: web.AppKey[RegistrarService] = web.AppKey("registrar")
GATEWAY: web.AppKey[GatewayService] = web.AppKey("gateway")
# The built-in reverse proxy, present while gateway.listen is configured.
GATEWAY_PROXY: web.AppKey[GatewayProxy] = web.AppKey("gateway_proxy")
