"""The plugin's client for dmz_api, over its published contract only.

``transport`` is the one HTTP client (API key, ``X-Acting-User``, ``X-Request-Id``,
``Idempotency-Key``, ``If-Match``, timeouts, error documents); ``registrar`` and
``gateway`` are the typed clients of the two roles, sharing one transport.
"""

from __future__ import annotations

from .gateway import Gateway, GatewayRule, Ruleset, RuleWrite
from .registrar import Guest, Registrar, Registration, SponsorRevocation, Token
from .transport import Acting, DmzError, DmzFailure, DmzTransport, DmzUnavailable, RoleClient

__all__ = [
    "Acting",
    "DmzError",
    "DmzFailure",
    "DmzTransport",
    "DmzUnavailable",
    "Gateway",
    "GatewayRule",
    "Guest",
    "Registrar",
    "Registration",
    "RoleClient",
    "RuleWrite",
    "Ruleset",
    "SponsorRevocation",
    "Token",
]
