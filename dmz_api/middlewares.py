"""Middlewares shared by both roles: request ids, JSON errors, request counting."""

from __future__ import annotations

import logging
import re
import secrets

from aiohttp import web

from .auth import Handler
from .errors import ApiError, json_error
from .logs import request_id_var
from .metrics import METRICS

log = logging.getLogger("dmz_api.http")

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

_STATUS_ERRCODES = {
    400: "M_BAD_JSON",
    401: "M_MISSING_TOKEN",
    403: "M_FORBIDDEN",
    404: "M_UNRECOGNIZED",
    405: "M_UNRECOGNIZED",
    413: "M_TOO_LARGE",
    429: "M_LIMIT_EXCEEDED",
}


def request_id(request: web.Request) -> str:
    return str(request.get(REQUEST_ID, "-"))


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keep the caller's X-Request-Id (the bot's correlation id) or make one; echo it back."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if _REQUEST_ID.match(given) else secrets.token_hex(8)
    request[REQUEST_ID] = rid
    # Every log line of this request, and its homeserver calls, carry the id (dmz_api.logs).
    reset = request_id_var.set(rid)
    try:
        response = await handler(request)
    finally:
        request_id_var.reset(reset)
    response.headers["X-Request-Id"] = rid
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as ``{"errcode", "error"}``; unexpected ones never show their text."""
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except ApiError as e:
        response = e.to_response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        errcode = _STATUS_ERRCODES.get(e.status, "M_UNKNOWN")
        message = e.reason if e.status != 404 else "Unrecognized request"
        # A 405 must say which methods the resource has (RFC 9110); Retry-After likewise.
        kept = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
        response = json_error(e.status, errcode, message, headers=kept or None)
    except Exception:
        log.exception(
            "Unhandled error in %s %s [%s]", request.method, route_name, request_id(request)
        )
        response = json_error(500, "M_UNKNOWN", "Internal server error")
    metrics.requests.labels(route_name, str(response.status)).inc()
    return response
