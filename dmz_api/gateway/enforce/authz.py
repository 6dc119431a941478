"""Forward-auth decision endpoint for an existing edge proxy (nginx ``auth_request``,
Traefik ForwardAuth, Envoy ext_authz).

``GET /v1/authz`` reads the original request from ``X-Original-Method``/``X-Original-URI``
(nginx) or ``X-Forwarded-Method``/``X-Forwarded-Uri`` (Traefik); ``/v1/authz/<path>`` with
any method takes them from its own method and path (Envoy with ``path_prefix``). The
original ``Authorization`` (X-Matrix origin) and ``User-Agent`` headers come as they are;
the client address from ``X-Forwarded-For``/``X-Real-IP`` when the caller is a trusted
proxy. Answers 200 to allow, 403 (or 503 while failing closed) with
``{"errcode": "M_FORBIDDEN", "error": ...}`` and an ``X-Authz-Reason`` header that can be
pasted into a JSON string as is.

Callers are authenticated by address (``gateway.authz.allowed_peers``) and, when
``gateway.authz.secret`` is set, by an ``X-Authz-Secret`` header (the ``Authorization``
header belongs to the original request).

With ``gateway.user_lookup`` on, a client request's access token (the original
``Authorization`` header, or ``access_token`` in the original URI) is looked up as the
built-in proxy does (``users.identify``), so rules that name users hold behind nginx too.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web

from ...errors import json_error
from ..config import AuthzConfig, IPNetwork
from ..policy.matrix_paths import request_info
from ..policy.model import Decision, Source
from ..service import GATEWAY
from .users import CANNOT_TELL_USER, USER_LOOKUP, identify

PREFIX = "/v1/authz"


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(text: str | None, networks: Sequence[IPNetwork]) -> bool:
    address = _address(text)
    return address is not None and any(address in net for net in networks)


def client_ip(
    peer: str | None,
    forwarded_for: Iterable[str],
    real_ip: str | None,
    trusted: Sequence[IPNetwork],
) -> str | None:
    """The client's address: the peer, or what a trusted proxy peer says it forwarded for.

    ``X-Forwarded-For`` is read from the right, skipping trusted proxies (entries further
    left were written by the client); ``X-Real-IP`` is the fallback.
    """
    if not trusted or not in_networks(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if _address(hop) is None:
            break
        if not in_networks(hop, trusted):
            return hop
    if real_ip and _address(real_ip) is not None:
        return real_ip.strip()
    return peer


def caller_problem(peer: str | None, presented: str | None, config: AuthzConfig) -> str | None:
    """Why this caller may not ask for decisions, or None."""
    if not in_networks(peer, config.allowed_peers):
        return "this address may not call the gateway decision endpoint"
    if config.secret is not None and (
        presented is None or not hmac.compare_digest(presented.encode(), config.secret.encode())
    ):
        return "missing or wrong gateway secret"
    return None


def _deny(
    status: int,
    reason: str,
    extra: dict[str, str] | None = None,
    errcode: str = "M_FORBIDDEN",
) -> web.Response:
    headers = {"X-Authz-Reason": reason, **(extra or {})}
    return json_error(status, errcode, reason, headers=headers)


def decision_headers(decision: Decision) -> dict[str, str]:
    return {
        "X-Authz-Outcome": decision.outcome.value,
        "X-Authz-Rule": decision.rule_id or "",
        "X-Authz-Reason": decision.reason,
        "X-Authz-Version": str(decision.version),
    }


async def authz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    config = gateway.config
    problem = caller_problem(request.remote, request.headers.get("X-Authz-Secret"), config.authz)
    if problem is not None:
        return _deny(403, f"Refused by the gateway: {problem}")
    headers = request.headers
    tail = request.raw_path[len(PREFIX) :] if request.raw_path.startswith(PREFIX + "/") else None
    method = headers.get("X-Original-Method") or headers.get("X-Forwarded-Method")
    uri = headers.get("X-Original-URI") or headers.get("X-Forwarded-Uri")
    if tail is not None:
        method = method or request.method
        uri = uri or tail
    if not method or not uri:
        return _deny(
            403, "Refused by the gateway: the forward-auth request lacks the original method or URI"
        )
    authorization = headers.getall("Authorization", ())
    info = request_info(
        method,
        uri,
        authorization,
        user_agent=headers.get("User-Agent", ""),
        ip=client_ip(
            request.remote,
            headers.getall("X-Forwarded-For", ()),
            headers.get("X-Real-IP"),
            config.trusted_proxies,
        ),
        source=Source.AUTHZ,
    )
    if not await identify(request.app.get(USER_LOOKUP), info, authorization, uri):
        # Fails closed: nginx answers its own 500 for any status but 2xx, 401 and 403.
        return _deny(503, CANNOT_TELL_USER, errcode="M_UNKNOWN")
    decision = gateway.decide(info)
    if decision.allowed:
        return web.json_response(
            {"outcome": decision.outcome.value, "rule": decision.rule_id},
            headers=decision_headers(decision),
        )
    return json_error(
        decision.status, "M_FORBIDDEN", decision.reason, headers=decision_headers(decision)
    )


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", PREFIX, authz, name="gateway.authz")
    app.router.add_route("*", PREFIX + "/{tail:.*}", authz, name="gateway.authz.path")
