"""Prometheus metrics, one registry per application so tests and roles stay separate.

``init_app`` puts the application's ``Metrics`` under ``METRICS``; each role registers its
own counters on it, and ``GET /metrics`` (in ``app.py``) renders it.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = self.counter(
            "dmz_api_requests_total", "Admin and public API requests", ["route", "status"]
        )

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> Histogram:
        if buckets:
            return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)
        return Histogram(name, doc, labels, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
