"""Bearer-key authentication and scope checks for the admin API.

Handlers declare the scope they need with ``@requires_scope("tokens")``; the middleware
does the rest, so no handler repeats an authorization check. Routes without a declared
scope are public (health, metrics, the onboarding page, the decision endpoints that
have their own auth).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from .errors import Forbidden, InvalidParam, MissingToken, UnknownToken
from .keys import KEYRING, ApiKey

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Any])

API_CLIENT: web.RequestKey[ApiKey] = web.RequestKey("api_client", ApiKey)
ACTING_USER: web.RequestKey[str] = web.RequestKey("acting_user", str)

_SCOPE_ATTR = "__bastion_scope__"
# The Matrix user ID grammar (localpart of the historical-compatible set, then server name).
USER_ID = re.compile(r"^@[!-9;-~]{1,255}:[A-Za-z0-9.\-]+(:\d{1,5})?$")


def requires_scope(scope: str) -> Callable[[H], H]:
    def mark(handler: H) -> H:
        setattr(handler, _SCOPE_ATTR, scope)
        return handler

    return mark


def required_scope(request: web.Request) -> str | None:
    handler = request.match_info.handler
    # Class-based views and partials keep the marker on the underlying function.
    return getattr(getattr(handler, "__func__", handler), _SCOPE_ATTR, None)


def acting_user(request: web.Request) -> str | None:
    return request.get(ACTING_USER)


def validate_user_id(value: str, field: str) -> str:
    if not USER_ID.match(value) or len(value) > 255:
        raise InvalidParam(f"{field} must be a Matrix user ID such as @alice:corp.example")
    return value


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    scope = required_scope(request)
    if scope is None:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    if not header:
        raise MissingToken("Missing API key: send Authorization: Bearer <key>")
    kind, _, presented = header.partition(" ")
    if kind.lower() != "bearer" or not presented.strip():
        raise MissingToken("Malformed Authorization header: expected Bearer <key>")
    key = request.app[KEYRING].authenticate(presented.strip())
    if key is None:
        raise UnknownToken("Unknown API key")
    if scope not in key.scopes:
        raise Forbidden(f"This API key does not have the {scope!r} scope")
    request[API_CLIENT] = key
    acting = request.headers.get("X-Acting-User")
    if acting is not None:
        request[ACTING_USER] = validate_user_id(acting.strip(), "X-Acting-User")
    return await handler(request)
