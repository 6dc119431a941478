"""The built-in reverse proxy: a second listener (``gateway.listen``) in front of
``gateway.upstream`` for ``/_matrix/*`` and ``/.well-known/matrix/*``.

Every request is classified (``matrix_paths``) and judged by ``GatewayService.decide``
before anything reaches the homeserver. A block is answered here,
``403 {"errcode": "M_FORBIDDEN", "error": ...}`` (503 while the gateway fails closed);
any other path gets ``404 M_UNRECOGNIZED``. With ``gateway.policy_server`` configured, the
policy server's paths (``policy_server.handles``) are answered here, not forwarded. An
allowed request is forwarded with its raw, still-encoded path (re-encoding breaks
X-Matrix signatures) and its body untouched; its
``X-Forwarded-For``, ``X-Real-IP`` and ``Forwarded`` headers are rebuilt to name exactly
the address the rules judged.
Request and response bodies stream through under flow control, so a long-polling
``/sync`` or a large media transfer holds no more than a few buffers. Only bodies that
hold what the rules judge are read first: ``createRoom`` (``initial_state`` names event
types), ``account/deactivate``, ``kick`` and ``ban`` (actions: erasure, redact-on-ban), up to
``gateway.max_inspect_body``; federation transactions (up to
``gateway.max_transaction_body``) and membership events, judged event by event
(``federation.py``): a transaction holding a refused event is answered here and not
forwarded. Such a body that cannot be judged (too large, compressed, not a JSON object)
is refused as malformed.

The hot path avoids what a naive proxy pays for: a plain asyncio protocol server with
``httptools`` (``listener``: no router, no middlewares, no access log, no request or
response objects beyond what is forwarded), a lean pooled keep-alive upstream client
(``upstream``) instead of ``ClientSession``, both heads serialised in one pass from the raw
header bytes, no regex compiled per request. ``python -m dmz_api`` runs on uvloop
(``server.event_loop``), which takes about a fifth off the CPU each proxied request costs.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict

from ...metrics import METRICS, Metrics
from ..config import GatewayConfig
from ..http.listener import HttpListener, ServerRequest, date_line
from ..http.upstream import (
    BodySource,
    UpstreamBroken,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from ..policy.actions import body_wanted
from ..policy.matrix_paths import classify, request_info
from ..policy.model import RequestClass, Source
from ..service import GATEWAY, GatewayService
from . import federation
from .authz import client_ip, in_networks
from .policy_server import POLICY_SERVER, PolicyServer, handle_proxied, handles
from .users import CANNOT_TELL_USER, USER_LOOKUP, UserLookup, identify

log = logging.getLogger("dmz_api.gateway.enforce.proxy")

PREFIXES = ("/_matrix/", "/.well-known/matrix/")

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
_HOP_BY_HOP = (
    hdrs.CONNECTION,
    hdrs.KEEP_ALIVE,
    hdrs.PROXY_AUTHENTICATE,
    hdrs.PROXY_AUTHORIZATION,
    "Proxy-Connection",
    hdrs.TE,
    hdrs.TRAILER,
    hdrs.TRANSFER_ENCODING,
    hdrs.UPGRADE,
)
# Listed in Connection or not, these frame or route the message: dropping them would
# change what the upstream sees (a media upload without Content-Length is refused).
_NEVER_DROP = frozenset({hdrs.CONTENT_LENGTH.lower(), hdrs.HOST.lower()})
_NEVER_DROP_B = frozenset(name.encode() for name in _NEVER_DROP)
# Lower-cased names the upstream request head never copies from the client: hop-by-hop
# headers, Expect (answered here) and those the proxy sets itself.
_NOT_COPIED = frozenset(
    {name.lower().encode() for name in _HOP_BY_HOP}
    | {b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
    | {b"x-real-ip", b"forwarded"}
)
# Methods that get ``Content-Length: 0`` when they carry no body (as ClientSession did).
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Bodies up to this size with a known length are passed on whole: header and body then
# leave in one write instead of two (nginx buffers such bodies too). Larger ones stream.
_SMALL_BODY = 2**16
_NO_BODY_STATUS = frozenset({204, 304})
_STOP_GRACE = 5.0

# Fixed texts, so the ruleset's per-problem decision cache stays small.
TOO_LARGE = "the createRoom body is larger than the gateway inspects"
ENCODED = "the createRoom body is compressed and cannot be inspected"
NOT_JSON = "the createRoom body is not a JSON object"
# The same for the other client bodies the rules read (account/deactivate, kick, ban).
BODY_TEXTS = (
    "the request body is larger than the gateway inspects",
    "the request body is compressed and cannot be inspected",
    "the request body is not a JSON object",
)
FEDERATION_TEXTS = (federation.TOO_LARGE, federation.ENCODED, federation.NOT_JSON)
_JSON_HEAD = b"Content-Type: application/json\r\n"


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove hop-by-hop headers, including those the Connection header names."""
    connection = headers.get(hdrs.CONNECTION)
    for name in _HOP_BY_HOP:
        if name in headers:
            del headers[name]
    if connection:
        for token in connection.split(","):
            name = token.strip()
            if name and name.lower() not in _NEVER_DROP and name in headers:
                del headers[name]


_HOP_BY_HOP_LOWER = frozenset(name.lower() for name in _HOP_BY_HOP)
# What the answer to the client never copies from the upstream's: hop-by-hop headers and
# the framing, which the listener sets for its own side.
_NOT_RELAYED = _HOP_BY_HOP_LOWER | {"content-length"}


def _connection_named(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")} - _NEVER_DROP


def _response_head(raw: list[tuple[str, str]]) -> bytes:
    """The upstream's response header lines less hop-by-hop ones and the framing."""
    dropped = _NOT_RELAYED
    for name, value in raw:
        if len(name) == 10 and name.lower() == "connection":
            dropped = dropped | _connection_named(value)
    lines = [f"{name}: {value}\r\n" for name, value in raw if name.lower() not in dropped]
    return "".join(lines).encode("utf-8", "surrogateescape")


def forwarded_lines(ip: str, proto: str) -> str:
    """``X-Forwarded-For``, ``X-Real-IP`` and ``Forwarded`` naming exactly ``ip``."""
    node = f'"[{ip}]"' if ":" in ip else ip  # RFC 7239 §6: IPv6 in brackets, quoted
    token = proto if proto.isalnum() else "https"
    return f"X-Forwarded-For: {ip}\r\nX-Real-IP: {ip}\r\nForwarded: for={node};proto={token}\r\n"


def _refuse(request: ServerRequest, status: int, errcode: str, error: str) -> None:
    # The listener closes the connection when the body was not received in full: the unread
    # rest must not be taken for the next request.
    request.respond_json(status, errcode, error)


class GatewayProxy:
    """The proxy listener and its upstream connection pool."""

    def __init__(
        self,
        gateway: GatewayService,
        metrics: Metrics,
        policy: PolicyServer | None = None,
        users: UserLookup | None = None,
    ) -> None:
        config: GatewayConfig = gateway.config
        assert config.listen is not None and config.upstream is not None
        self.gateway = gateway
        self.config = config
        # The policy server's paths are answered here, never forwarded (when configured).
        self.policy = policy
        self._listen = config.listen
        self._base = config.upstream
        self._trusted = config.trusted_proxies
        self._max_body = config.max_inspect_body
        self._max_transaction = config.max_transaction_body
        self._scheme = "https" if config.listen.tls_certificate is not None else "http"
        errors = metrics.counter(
            "dmz_api_gateway_proxy_upstream_errors_total",
            "Proxied requests that failed between the gateway and the homeserver",
            ["kind"],
        )
        self._connect_errors = errors.labels("connect")
        self._timeouts = errors.labels("timeout")
        self._broken = errors.labels("broken")
        self._pool: UpstreamPool | None = None
        # Which user each client request's access token belongs to (enforce/users.py).
        self.users = users
        self._listener: HttpListener | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        """The proxy's own base URL (with the bound port)."""
        host = self._listen.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"{self._scheme}://{host}:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        listen = self._listen
        if listen.tls_certificate is None or listen.tls_private_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(listen.tls_certificate, listen.tls_private_key)
        return context

    async def start(self) -> None:
        timeouts = self.config.timeouts
        # No cap on upstream connections: each downstream connection has at most one request
        # in flight, and a cap would queue requests behind long-polling /sync calls.
        # Idle upstream connections are closed before the homeserver would close them (a
        # request sent on a connection the other side is closing fails).
        self._pool = UpstreamPool(
            self._base,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
            keepalive_timeout=30.0,
            ca_file=str(ca) if (ca := self.config.upstream_ca_file) is not None else None,
        )
        self._listener = HttpListener(
            self.handle,
            body_timeout=self._listen.body_timeout,
            request_timeout=self._listen.request_timeout,
        )
        self.port = await self._listener.start(
            self._listen.host, self._listen.port, ssl_context=self._ssl_context(), backlog=1024
        )
        log.info(
            "Gateway proxy listening on %s:%d (%s), forwarding to %s",
            self._listen.host,
            self.port,
            self._scheme,
            self._base,
        )

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop(_STOP_GRACE)
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # ---- the hot path ----------------------------------------------------------------

    async def handle(self, request: ServerRequest) -> None:
        raw_path = request.raw_path
        if not raw_path.startswith(PREFIXES):
            return _refuse(request, 404, "M_UNRECOGNIZED", "Unrecognized request")
        if self.policy is not None and handles(raw_path):
            return await handle_proxied(self.policy, request)
        method = request.method
        path_info = classify(method, raw_path)
        body: bytes | None = None
        content: Any = None
        problem: str | None = None
        # A state write into a protected room (gateway/rooms.py) is judged on its content.
        guarded = self.gateway.rooms.guards(method, path_info)
        if path_info.inspect_body or guarded:
            body, content, problem = await self._read_inspected(request)
        elif path_info.request_class is RequestClass.FEDERATION:
            if federation.wants_body(method, path_info.endpoint):
                limit = federation.body_limit(
                    path_info.endpoint, self._max_transaction, self._max_body
                )
                body, content, problem = await self._read_json(request, limit, FEDERATION_TEXTS)
        elif body_wanted(method, path_info.endpoint, path_info.template):
            body, content, problem = await self._read_json(request, self._max_body, BODY_TEXTS)
        peer = request.peer
        ip = peer
        if self._trusted:
            ip = client_ip(
                peer,
                request.header_all(b"x-forwarded-for"),
                request.header(b"x-real-ip"),
                self._trusted,
            )
        info = request_info(
            method,
            raw_path,
            request.header_all(b"authorization"),
            user_agent=request.header(b"user-agent") or "",
            ip=ip,
            body=content,
            source=Source.PROXY,
            path_info=path_info,
        )
        if problem is not None and info.malformed is None:
            info.malformed = problem
        # Guarded here so the default (no lookup) costs no coroutine on the hot path.
        if self.users is not None and not await identify(
            self.users, info, request.header_all(b"authorization"), raw_path
        ):
            return _refuse(request, 503, "M_UNKNOWN", CANNOT_TELL_USER)
        if guarded:
            refusal = self.gateway.rooms.judge(info, path_info, content, problem)
            if refusal is not None:
                return _refuse(request, 403, "M_FORBIDDEN", refusal)
        if content is not None and path_info.endpoint in federation.MEMBER_ENDPOINTS:
            federation.with_member_event(info, raw_path, content)
        decision = self.gateway.decide(info)
        if not decision.allowed:
            return _refuse(request, decision.status, "M_FORBIDDEN", decision.reason)
        if content is not None and path_info.endpoint == federation.TRANSACTION:
            verdict = federation.judge_transaction(self.gateway.decide, info, content)
            if isinstance(verdict, str):
                info.malformed = verdict
                decision = self.gateway.decide(info)
                return _refuse(request, decision.status, "M_FORBIDDEN", decision.reason)
            if verdict is not None:
                # Answered here: forwarding a transaction with events taken out breaks
                # its signature (enforce/federation.py).
                answer = json.dumps(verdict).encode()
                return request.respond(200, "OK", date_line() + _JSON_HEAD, answer)
        if body is None:
            request.send_continue()
        await self._forward(request, peer, ip, body)

    async def _read_inspected(self, request: ServerRequest) -> tuple[bytes | None, Any, str | None]:
        """(raw body, parsed JSON, problem) of a createRoom body."""
        return await self._read_json(request, self._max_body, (TOO_LARGE, ENCODED, NOT_JSON))

    async def _read_json(
        self, request: ServerRequest, limit: int, texts: tuple[str, str, str]
    ) -> tuple[bytes | None, Any, str | None]:
        """(raw body, parsed JSON, problem) of a body the rules must see, read up to
        ``limit``; ``texts`` are the problems (too large, compressed, not a JSON object)."""
        too_large, encoded, not_json = texts
        encoding = request.header(b"content-encoding")
        if encoding is not None and encoding.lower() != "identity":
            return None, None, encoded
        length = request.content_length
        if length is not None and length > limit:
            return None, None, too_large
        request.send_continue()
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.readany():
            size += len(chunk)
            if size > limit:
                return None, None, too_large
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            content = json.loads(body)
        except ValueError:
            return body, None, not_json
        if not isinstance(content, dict):
            return body, None, not_json
        return body, content, None

    def _upstream_head(
        self,
        request: ServerRequest,
        peer: str | None,
        ip: str | None,
        length: int | None,
        chunked: bool,
    ) -> bytes:
        """The upstream request's header lines: the client's, less hop-by-hop ones, with
        the forwarding headers and the body framing (``length`` or ``chunked``) set here.

        The client address headers (``X-Forwarded-For``, ``X-Real-IP``, ``Forwarded``) are
        rebuilt from ``ip``, the address the rules judged; what the client sent is dropped,
        so the homeserver (which believes the first X-Forwarded-For entry) sees the same
        address as the rules."""
        connection = request.fields.get(b"connection")
        dropped = _NOT_COPIED
        if connection:
            named = {t.strip().lower() for t in connection.split(b",")} - _NEVER_DROP_B
            dropped = dropped | named
        framed = length is not None or chunked
        parts: list[bytes] = []
        append = parts.append
        has_host = False
        has_length = False
        for lower, name, value in request.headers:
            if lower in dropped:
                continue
            if lower == b"content-length":
                if framed:
                    continue
                has_length = True
            elif lower == b"host":
                has_host = True
            append(b"%b: %b\r\n" % (name, value))
        lines: list[str] = []
        if not has_host:
            pool = self._pool
            assert pool is not None
            lines.append(f"Host: {pool.netloc}\r\n")
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        elif not has_length and request.method not in _BODYLESS_METHODS:
            lines.append("Content-Length: 0\r\n")
        proto, host = self._scheme, request.host
        if self._trusted and in_networks(peer, self._trusted):
            proto = request.header(b"x-forwarded-proto") or proto
            host = request.header(b"x-forwarded-host") or host
        if ip:
            lines.append(forwarded_lines(ip, proto))
        lines.append(f"X-Forwarded-Proto: {proto}\r\nX-Forwarded-Host: {host}\r\n")
        append("".join(lines).encode("utf-8", "surrogateescape"))
        return b"".join(parts)

    async def _forward(
        self, request: ServerRequest, peer: str | None, ip: str | None, body: bytes | None
    ) -> None:
        pool = self._pool
        assert pool is not None
        data: bytes | BodySource | None = body
        length: int | None = None
        chunked = False
        if body is not None:
            length = len(body)
        elif request.body_exists:
            content_length = request.content_length
            if content_length is not None and content_length <= _SMALL_BODY:
                data = await request.read()
                length = len(data)
            else:
                data = request.readany
                chunked = content_length is None
        try:
            upstream = await pool.request(
                request.method,
                request.raw_path,
                self._upstream_head(request, peer, ip, length, chunked),
                data,
                chunked=chunked,
            )
        except UpstreamTimeout:
            self._timeouts.inc()
            log.warning("The homeserver at %s did not answer in time", self._base)
            return request.respond_json(504, "M_UNKNOWN", "The homeserver did not answer in time")
        except UpstreamConnectError as e:
            self._connect_errors.inc()
            log.warning("Cannot reach the homeserver at %s: %s", self._base, e)
            return request.respond_json(502, "M_UNKNOWN", "The homeserver cannot be reached")
        except (UpstreamBroken, OSError) as e:
            # A dropped connection or an answer that is not HTTP.
            self._broken.inc()
            log.warning("The request to the homeserver failed: %s", e)
            return request.respond_json(502, "M_UNKNOWN", "The homeserver did not answer properly")
        try:
            await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _relay(self, request: ServerRequest, upstream: UpstreamResponse) -> None:
        head = _response_head(upstream.headers)
        length = upstream.content_length
        status = upstream.status
        if (
            length is not None
            and length <= _SMALL_BODY
            and request.method != "HEAD"
            and status not in _NO_BODY_STATUS
        ):
            try:
                body = await upstream.read()
            except UpstreamError as e:
                self._broken.inc()
                log.warning("The homeserver's response broke off: %s", type(e).__name__)
                return request.respond_json(502, "M_UNKNOWN", "The homeserver's answer broke off")
            return request.respond(status, upstream.reason, head, body)
        request.start(status, upstream.reason, head, length)
        if request.method == "HEAD" or status in _NO_BODY_STATUS:
            request.finish()
            return
        while True:
            try:
                chunk = await upstream.readany()
            except UpstreamError as e:
                # The body is cut short: end the connection rather than a clean last chunk, so
                # the client cannot take a truncated body for a complete one.
                self._broken.inc()
                log.warning("The homeserver's response broke off: %s", type(e).__name__)
                upstream.close()
                request.abort()
                return
            if not chunk:
                break
            try:
                await request.write(chunk)
            except ConnectionError:
                upstream.close()  # the client left; the rest of the body is not wanted
                return
        request.finish()


# The built-in reverse proxy, present while gateway.listen is configured.
GATEWAY_PROXY: web.AppKey[GatewayProxy] = web.AppKey("gateway_proxy", GatewayProxy)


async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the proxy listener while the app runs, when ``gateway.listen`` is configured."""
    gateway = app[GATEWAY]
    if gateway.config.listen is None:
        yield
        return
    proxy = GatewayProxy(gateway, app[METRICS], app.get(POLICY_SERVER), app.get(USER_LOOKUP))
    try:
        await proxy.start()
    except BaseException:
        await proxy.stop()
        raise
    app[GATEWAY_PROXY] = proxy
    try:
        yield
    finally:
        await proxy.stop()


__all__ = ["GATEWAY_PROXY", "GatewayProxy", "proxy_ctx", "strip_hop_by_hop"]
