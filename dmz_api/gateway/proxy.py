"""The built-in reverse proxy: a second listener (``gateway.listen``) in front of
``gateway.upstream`` for ``/_matrix/*`` and ``/.well-known/matrix/*``.

Every request is classified (``matrix_paths``) and judged by ``GatewayService.decide``
before anything reaches the homeserver. A block is answered here,
``403 {"errcode": "M_FORBIDDEN", "error": ...}`` (503 while the gateway fails closed);
any other path gets ``404 M_UNRECOGNIZED``. An allowed request is forwarded with its raw,
still-encoded path (re-encoding breaks X-Matrix signatures) and its body untouched.
Request and response bodies stream through under flow control, so a long-polling
``/sync`` or a large media transfer holds no more than a few buffers. Only ``createRoom``
bodies are read first, up to ``gateway.max_inspect_body``: their ``initial_state`` names
event types. Such a body that cannot be judged (too large, compressed, not a JSON object)
is refused as malformed.

The hot path avoids what a naive proxy pays for: a low-level ``web.Server`` (no router,
no middlewares, no access log), a lean pooled keep-alive upstream client (``upstream``)
instead of ``ClientSession``, the upstream request head serialised in one pass, no regex
compiled per request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from .. import appkeys
from ..errors import json_error
from ..metrics import Metrics
from .authz import client_ip, in_networks
from .config import GatewayConfig
from .matrix_paths import classify, request_info
from .model import Source
from .service import GatewayService
from .upstream import (
    BodySource,
    UpstreamBroken,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("dmz_api.gateway.proxy")

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
# Lower-cased names the upstream request head never copies from the client: hop-by-hop
# headers, Expect (answered here) and those the proxy sets itself.
_NOT_COPIED = frozenset(
    {name.lower() for name in _HOP_BY_HOP}
    | {"expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)
# Methods that get ``Content-Length: 0`` when they carry no body (as ClientSession did).
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Bodies up to this size with a known length are passed on whole: header and body then
# leave in one write instead of two (nginx buffers such bodies too). Larger ones stream.
_SMALL_BODY = 2**16
_NO_BODY_STATUS = frozenset({204, 304})
_STOP_GRACE = 5.0

# Fixed texts, so the ruleset's per-problem decision cache stays small.
TOO_LARGE = "the createRoom body is larger than the gateway inspects"
ENCODED = "the createRoom body is compressed and cannot be inspected"
NOT_JSON = "the createRoom body is not a JSON object"


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


def _response_headers(raw: list[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream's response headers less hop-by-hop ones (``strip_hop_by_hop`` in one
    pass over the parsed list)."""
    dropped = _HOP_BY_HOP_LOWER
    for name, value in raw:
        if name.lower() == "connection":
            named = {t.strip().lower() for t in value.split(",")} - _NEVER_DROP
            dropped = dropped | named
    return CIMultiDict([(name, value) for name, value in raw if name.lower() not in dropped])


def _refuse(request: web.BaseRequest, status: int, errcode: str, error: str) -> web.Response:
    response = json_error(status, errcode, error)
    if request.body_exists and not request.content.is_eof():
        # The unread body must not be taken for the next request on this connection.
        response.force_close()
    return response


async def _continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue``, once the request may go on (the low-level server
    leaves it to the handler, so a refused client never sends its body)."""
    expect = request.headers.get(hdrs.EXPECT)
    if (
        expect is not None
        and expect.lower() == "100-continue"
        and request.version >= aiohttp.HttpVersion11
    ):
        await request.writer.write(_CONTINUE)


class GatewayProxy:
    """The proxy listener and its upstream connection pool."""

    def __init__(self, gateway: GatewayService, metrics: Metrics) -> None:
        config: GatewayConfig = gateway.config
        assert config.listen is not None and config.upstream is not None
        self.gateway = gateway
        self.config = config
        self._listen = config.listen
        self._base = config.upstream
        self._trusted = config.trusted_proxies
        self._max_body = config.max_inspect_body
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
        self._runner: web.ServerRunner | None = None
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
        )
        server = web.Server(
            self.handle,
            handler_cancellation=True,
            access_log=None,
            auto_decompress=False,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=_STOP_GRACE)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self._listen.host,
            self._listen.port,
            ssl_context=self._ssl_context(),
            backlog=1024,
            shutdown_timeout=_STOP_GRACE,
        )
        await site.start()
        self.port = site.port
        log.info(
            "Gateway proxy listening on %s:%d (%s), forwarding to %s",
            self._listen.host,
            self.port,
            self._scheme,
            self._base,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # ---- the hot path ----------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path = request.raw_path
        if not raw_path.startswith(PREFIXES):
            return _refuse(request, 404, "M_UNRECOGNIZED", "Unrecognized request")
        method = request.method
        headers = request.headers
        path_info = classify(method, raw_path)
        body: bytes | None = None
        content: Any = None
        problem: str | None = None
        if path_info.inspect_body:
            body, content, problem = await self._read_inspected(request)
        peer = request.remote
        ip = peer
        if self._trusted:
            ip = client_ip(
                peer,
                headers.getall(hdrs.X_FORWARDED_FOR, ()),
                headers.get("X-Real-IP"),
                self._trusted,
            )
        info = request_info(
            method,
            raw_path,
            headers.getall(hdrs.AUTHORIZATION, ()),
            user_agent=headers.get(hdrs.USER_AGENT, ""),
            ip=ip,
            body=content,
            source=Source.PROXY,
            path_info=path_info,
        )
        if problem is not None and info.malformed is None:
            info.malformed = problem
        decision = self.gateway.decide(info)
        if not decision.allowed:
            return _refuse(request, decision.status, "M_FORBIDDEN", decision.reason)
        if body is None:
            await _continue(request)
        return await self._forward(request, peer, body)

    async def _read_inspected(
        self, request: web.BaseRequest
    ) -> tuple[bytes | None, Any, str | None]:
        """(raw body, parsed JSON, problem) of a body the rules must see."""
        if request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity":
            return None, None, ENCODED
        limit = self._max_body
        length = request.content_length
        if length is not None and length > limit:
            return None, None, TOO_LARGE
        await _continue(request)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                return None, None, TOO_LARGE
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            content = json.loads(body)
        except ValueError:
            return body, None, NOT_JSON
        if not isinstance(content, dict):
            return body, None, NOT_JSON
        return body, content, None

    def _upstream_head(
        self, request: web.BaseRequest, peer: str | None, length: int | None, chunked: bool
    ) -> bytes:
        """The upstream request's header lines: the client's, less hop-by-hop ones, with
        the forwarding headers and the body framing (``length`` or ``chunked``) set here."""
        headers = request.headers
        connection = headers.get(hdrs.CONNECTION)
        dropped = _NOT_COPIED
        if connection:
            named = {t.strip().lower() for t in connection.split(",")} - _NEVER_DROP
            dropped = dropped | named
        framed = length is not None or chunked
        lines: list[str] = []
        append = lines.append
        has_host = False
        has_length = False
        for name, value in headers.items():
            lower = name.lower()
            if lower in dropped:
                continue
            if lower == "content-length":
                if framed:
                    continue
                has_length = True
            elif lower == "host":
                has_host = True
            append(f"{name}: {value}\r\n")
        if not has_host:
            pool = self._pool
            assert pool is not None
            append(f"Host: {pool.netloc}\r\n")
        if length is not None:
            append(f"Content-Length: {length}\r\n")
        elif chunked:
            append("Transfer-Encoding: chunked\r\n")
        elif not has_length and request.method not in _BODYLESS_METHODS:
            append("Content-Length: 0\r\n")
        if self._trusted and in_networks(peer, self._trusted):
            prior = headers.get(hdrs.X_FORWARDED_FOR)
            forwarded_for = (f"{prior}, {peer}" if prior else peer) if peer else prior
            if forwarded_for:
                append(f"X-Forwarded-For: {forwarded_for}\r\n")
            append(f"X-Forwarded-Proto: {headers.get(hdrs.X_FORWARDED_PROTO, self._scheme)}\r\n")
            append(f"X-Forwarded-Host: {headers.get(hdrs.X_FORWARDED_HOST, request.host)}\r\n")
        else:
            # Whatever an untrusted client claims about its address is dropped.
            if peer:
                append(f"X-Forwarded-For: {peer}\r\n")
            append(f"X-Forwarded-Proto: {self._scheme}\r\nX-Forwarded-Host: {request.host}\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    async def _forward(
        self, request: web.BaseRequest, peer: str | None, body: bytes | None
    ) -> web.StreamResponse:
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
                data = await request.content.read()
                length = len(data)
            else:
                data = request.content.readany
                chunked = content_length is None
        try:
            upstream = await pool.request(
                request.method,
                request.raw_path,
                self._upstream_head(request, peer, length, chunked),
                data,
                chunked=chunked,
            )
        except UpstreamTimeout:
            self._timeouts.inc()
            log.warning("The homeserver at %s did not answer in time", self._base)
            return json_error(504, "M_UNKNOWN", "The homeserver did not answer in time")
        except UpstreamConnectError as e:
            self._connect_errors.inc()
            log.warning("Cannot reach the homeserver at %s: %s", self._base, e)
            return json_error(502, "M_UNKNOWN", "The homeserver cannot be reached")
        except (UpstreamBroken, OSError) as e:
            # A dropped connection or an answer that is not HTTP.
            self._broken.inc()
            log.warning("The request to the homeserver failed: %s", e)
            return json_error(502, "M_UNKNOWN", "The homeserver did not answer properly")
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.BaseRequest, upstream: UpstreamResponse
    ) -> web.StreamResponse:
        headers = _response_headers(upstream.headers)
        length = upstream.content_length
        if (
            length is not None
            and length <= _SMALL_BODY
            and request.method != "HEAD"
            and upstream.status not in _NO_BODY_STATUS
        ):
            try:
                body = await upstream.read()
            except UpstreamError as e:
                self._broken.inc()
                log.warning("The homeserver's response broke off: %s", type(e).__name__)
                return json_error(502, "M_UNKNOWN", "The homeserver's answer broke off")
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        try:
            await response.prepare(request)
        except ConnectionError:
            upstream.close()
            return response
        while True:
            try:
                chunk = await upstream.readany()
            except UpstreamError as e:
                # The body is cut short: end the connection rather than a clean last chunk, so
                # the client cannot take a truncated body for a complete one.
                self._broken.inc()
                log.warning("The homeserver's response broke off: %s", type(e).__name__)
                upstream.close()
                if request.transport is not None:
                    request.transport.close()
                return response
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionError:
                upstream.close()  # the client left; the rest of the body is not wanted
                return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the proxy listener while the app runs, when ``gateway.listen`` is configured."""
    gateway = app[appkeys.GATEWAY]
    if gateway.config.listen is None:
        yield
        return
    proxy = GatewayProxy(gateway, app[appkeys.METRICS])
    try:
        await proxy.start()
    except BaseException:
        await proxy.stop()
        raise
    app[appkeys.GATEWAY_PROXY] = proxy
    try:
        yield
    finally:
        await proxy.stop()


__all__ = ["GatewayProxy", "proxy_ctx", "strip_hop_by_hop"]
