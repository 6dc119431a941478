"""The gateway for ``!sbg`` handler tests: dmz_api's real gateway role, in-process.

It runs the real admin routes on a temporary SQLite file (so the JSON shapes, If-Match and
409s are the contract's, not a copy of it), behind a middleware that records every request
and can delay it, fail it, or let "someone else" change the rules just before a write.
The plugin itself never imports dmz_api; only this test double does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from attrs import define, field
from multidict import CIMultiDict

from dmz_api.app import init_app
from dmz_api.config import parse_config
from dmz_api.gateway import GATEWAY
from dmz_api.gateway.policy.model import RequestClass, RequestInfo, Source
from dmz_api.gateway.rooms import ProtectedRooms
from dmz_api.gateway.service import GatewayService

from .fakes import REGISTRAR_KEY, Recorded

SERVER_NAME = "corp.example"
OTHER_ADMIN = "@bob:corp.example"
Hook = Callable[["GatewayDouble"], Awaitable[None]]


@define
class GatewayDouble:
    app: web.Application
    url: str = ""
    requests: list[Recorded] = field(factory=list)
    delay: float = 0.0
    # (status, body) answered to every request while set.
    fail: tuple[int, Any] | None = None
    # Runs once, just before the next write reaches the gateway (a concurrent change).
    before_write: Hook | None = None

    @classmethod
    def create(cls, workdir: Path) -> GatewayDouble:
        config = parse_config(
            {
                "server": {"public_url": "https://sbg.corp.example"},
                "database": f"sqlite:{workdir / 'gateway.db'}",
                "api_keys": [
                    {"name": "bot", "key": REGISTRAR_KEY, "scopes": ["rules", "decisions"]}
                ],
                "gateway": {
                    "server_name": SERVER_NAME,
                    "decision_log": {"flush_interval": 0.05, "allow": "full"},
                    "reload_interval": 0.1,
                },
            },
            workdir,
        )
        app = init_app(config)
        double = cls(app)
        app.middlewares.insert(0, double.middleware)
        return double

    @property
    def rooms(self) -> ProtectedRooms:
        return self.app[GATEWAY].rooms

    @property
    def service(self) -> GatewayService:
        return self.app[GATEWAY]

    def calls(self, method: str, prefix: str = "/v1/") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    @property
    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        recorded = Recorded(
            request.method, request.path, dict(request.query), CIMultiDict(request.headers), None
        )
        self.requests.append(recorded)
        if request.method != "GET" and request.path.startswith("/v1/rules"):
            hook, self.before_write = self.before_write, None
            if hook is not None:
                await hook(self)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            status, payload = self.fail
            return web.json_response(payload, status=status)
        try:
            response: web.StreamResponse = await handler(request)
        finally:
            # Read after the handler: a body read first would look absent to it.
            raw = await request.read()
            recorded.body = json.loads(raw) if raw else None
        return response

    async def version(self) -> int:
        version, _ = await self.service.rules()
        return version

    async def rules(self) -> dict[str, dict[str, Any]]:
        _, rules = await self.service.rules()
        return {rule.id: rule.to_json() for rule in rules}

    async def add(
        self,
        rule_id: str,
        kind: str,
        params: dict[str, Any],
        *,
        mode: str = "enforce",
        enabled: bool = True,
        note: str = "",
        author: str = OTHER_ADMIN,
        **more: Any,
    ) -> int:
        """Add a rule directly (as another admin); returns the new version. ``more``: other
        fields of ``POST /v1/rules`` (``expires_at``, ...)."""
        spec = {
            "id": rule_id,
            "kind": kind,
            "params": params,
            "mode": mode,
            "enabled": enabled,
            "note": note,
            **more,
        }
        result = await self.service.add_rule(spec, author=author)
        return result.version

    async def decide(
        self,
        *,
        origin: str | None = None,
        user: str | None = None,
        method: str = "PUT",
        path: str = "/_matrix/federation/v1/send/{txnId}",
        event_types: tuple[str, ...] = (),
        room: str | None = None,
    ) -> None:
        """One recorded decision, as an enforcement point would make it."""
        federation = origin is not None
        self.service.decide(
            RequestInfo(
                RequestClass.FEDERATION if federation else RequestClass.CLIENT,
                method,
                path,
                endpoint="test",
                origin=origin,
                user=user,
                event_types=event_types,
                room=room,
                user_agent=None if federation else "",
                source=Source.PROXY,
            )
        )

    async def flush(self) -> None:
        await self.service.decision_log.flush()
        await self.service.decision_log.flush_allows(everything=True)
