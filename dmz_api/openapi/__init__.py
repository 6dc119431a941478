"""The OpenAPI 3.1 contract: one document assembled from the core and each role's part."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

PARTS = ("core.yaml", "registrar.yaml", "gateway.yaml")


@cache
def document() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in PARTS:
        ref = resources.files(__package__).joinpath(part)
        if not ref.is_file():
            continue
        data = yaml.safe_load(ref.read_text())
        if not merged:
            merged = data
            continue
        merged.setdefault("paths", {}).update(data.get("paths", {}))
        for section, values in data.get("components", {}).items():
            merged.setdefault("components", {}).setdefault(section, {}).update(values)
        merged.setdefault("tags", []).extend(data.get("tags", []))
    return merged


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(document())
