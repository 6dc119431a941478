"""What every call on the homeserver carries and leaves behind, hooked into the registrar's
HTTP session (``aiohttp.TraceConfig``) so no adapter has to remember it:

* the ``X-Request-Id`` of the API request being served (``dmz_api.logs.request_id_var``),
  so one id follows a command from the bot through dmz_api to the homeserver;
* one log line per call: method, path (registration tokens masked, query never shown),
  status and time;
* ``dmz_api_registrar_homeserver_requests_total{outcome}`` (``2xx`` … ``5xx``, ``error``
  for no answer) and ``dmz_api_registrar_homeserver_request_seconds``.
"""

from __future__ import annotations

import logging
import re
import time
from types import SimpleNamespace

import aiohttp
from prometheus_client import Counter, Histogram

from ..logs import request_id_var
from ..metrics import Metrics

log = logging.getLogger("dmz_api.registrar.homeserver.calls")

# DELETE /_synapse/admin/v1/registration_tokens/{token}: the path holds a live token.
_TOKEN_IN_PATH = re.compile(r"(/registration_tokens/)(?!new$)[^/]+")


def safe_path(path: str) -> str:
    return _TOKEN_IN_PATH.sub(r"\1<token>", path)


class HomeserverTracing:
    def __init__(self, metrics: Metrics) -> None:
        self.requests: Counter = metrics.counter(
            "dmz_api_registrar_homeserver_requests_total",
            "Registrar calls on the homeserver, by outcome (status class, or error: no answer)",
            ["outcome"],
        )
        self.seconds: Histogram = metrics.histogram(
            "dmz_api_registrar_homeserver_request_seconds",
            "Time the homeserver took to answer a registrar call",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def trace_config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._start)
        trace.on_request_end.append(self._end)
        trace.on_request_exception.append(self._failed)
        return trace

    async def _start(
        self,
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        ctx.started = time.monotonic()
        rid = request_id_var.get()
        if rid is not None:
            params.headers["X-Request-Id"] = rid

    async def _end(
        self,
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        elapsed = time.monotonic() - ctx.started
        status = params.response.status
        self.requests.labels(f"{status // 100}xx").inc()
        self.seconds.observe(elapsed)
        log.info(
            "Homeserver %s %s: HTTP %d in %.1f ms",
            params.method,
            safe_path(params.url.path),
            status,
            elapsed * 1000,
        )

    async def _failed(
        self,
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        self.requests.labels("error").inc()
        # The adapter logs the failure (what it was doing); this line gives it the path.
        log.info(
            "Homeserver %s %s: no answer (%s)",
            params.method,
            safe_path(params.url.path),
            type(params.exception).__name__,
        )
