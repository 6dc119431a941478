"""One contract: with both roles enabled, every route is documented and every documented
path is served, method by method."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import web

from dmz_api.app import init_app
from dmz_api.config import parse_config
from dmz_api.openapi import document

METHODS = {"get", "post", "put", "patch", "delete"}


def both_roles(tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"public_url": "https://partners.example"},
        "database": f"sqlite:{tmp_path / 'dmz.db'}",
        "api_keys": [{"name": "bot", "key": "k" * 32, "scopes": ["tokens", "rules"]}],
        "registrar": {
            "homeserver": {
                "kind": "synapse",
                "url": "http://127.0.0.1:9",
                "server_name": "partners.example",
                "admin_token": "unused",
            }
        },
        "gateway": {"server_name": "corp.example"},
    }


def template(path: str) -> str:
    """``/v1/rules/{rule_id}`` and ``/v1/rules/{id:.*}`` alike become ``/v1/rules/{}``."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def routed_pairs(app: web.Application) -> set[tuple[str, str]]:
    pairs = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if not path:
            continue
        # A catch-all route ("*": the forward-auth endpoint) answers every method.
        methods = METHODS if route.method == "*" else {route.method.lower()} & METHODS
        pairs.update((template(path), method) for method in methods)
    return pairs


async def test_every_route_documented_and_every_path_served(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    app = init_app(parse_config(both_roles(tmp_path)))
    client = await aiohttp_client(app)
    documented = {
        (template(path), method)
        for path, operations in document()["paths"].items()
        for method in operations
        if method in METHODS
    }
    routed = routed_pairs(app)
    assert documented - routed == set()
    # Every documented path exists, and no served route is missing from the document.
    assert {path for path, _ in routed} == {path for path, _ in documented}
    assert {pair for pair in routed - documented if not pair[0].startswith("/v1/authz")} == set()
    served = await (await client.get("/v1/openapi.json")).json()
    assert served["openapi"].startswith("3.1")
    assert served == document()
    health = await (await client.get("/healthz")).json()
    assert health == {"status": "ok", "roles": ["registrar", "gateway"]}
