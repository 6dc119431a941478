"""Fixtures for the gateway: configs, an app on a temporary SQLite file, rule builders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dmz_api.app import init_app
from dmz_api.config import Config, parse_config
from dmz_api.gateway.policy.model import Mode
from dmz_api.gateway.policy.rules import Kind, Rule, validate_params

RULES_KEY = "gateway-rules-key-" + "r" * 24
DECISIONS_KEY = "gateway-decisions-key-" + "d" * 24
TOKENS_KEY = "gateway-tokens-key-" + "t" * 24
AUTHZ_SECRET = "authz-shared-secret-" + "s" * 16
SERVER_NAME = "corp.example"

ADMIN = {"Authorization": f"Bearer {RULES_KEY}", "X-Acting-User": "@sec:corp.example"}
READER = {"Authorization": f"Bearer {DECISIONS_KEY}"}

GatewayClient = TestClient[web.Request, web.Application]


def make_rule(
    rule_id: str,
    kind: Kind | str,
    params: dict[str, Any],
    *,
    mode: Mode | str = Mode.ENFORCE,
    enabled: bool = True,
    priority: int = 100,
) -> Rule:
    kind = Kind(kind)
    return Rule(
        id=rule_id,
        kind=kind,
        params=validate_params(kind, params),
        mode=Mode(mode),
        enabled=enabled,
        priority=priority,
        note="",
        author=None,
        created=0,
        updated=0,
    )


def gateway_config(tmp_path: Path, **gateway: Any) -> Config:
    section: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "decision_log": {"flush_interval": 0.05, "batch_size": 50, "allow": "full"},
        "reload_interval": 0.1,
    }
    section.update(gateway)
    return parse_config(
        {
            "server": {"public_url": "https://gateway.corp.example"},
            "database": f"sqlite:{tmp_path / 'gateway.db'}",
            "api_keys": [
                {"name": "sec", "key": RULES_KEY, "scopes": ["rules", "decisions"]},
                {"name": "auditor", "key": DECISIONS_KEY, "scopes": ["decisions"]},
                {"name": "bot", "key": TOKENS_KEY, "scopes": ["tokens"]},
            ],
            "gateway": section,
        },
        tmp_path,
    )


@pytest.fixture
def make_client(aiohttp_client: Any, tmp_path: Path) -> Callable[..., Any]:
    async def make(**gateway: Any) -> GatewayClient:
        client: GatewayClient = await aiohttp_client(init_app(gateway_config(tmp_path, **gateway)))
        return client

    return make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> GatewayClient:
    result: GatewayClient = await make_client()
    return result
