"""Reading and validating request input at the edge, shared by both roles' handlers.

Each helper raises a Matrix-style error naming the field, so handlers stay one-liners.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .auth import API_CLIENT, acting_user, validate_user_id
from .errors import BadJson, InvalidParam

MAX_LIMIT = 1000


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The JSON object in the body; ``{}`` for an empty body unless ``required``."""
    if not request.can_read_body:
        if required:
            raise BadJson("The request body must be a JSON object")
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadJson("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadJson("The request body must be a JSON object")
    return body


def query_choice(request: web.Request, name: str, options: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if not value:
        return None
    if value not in options:
        raise InvalidParam(f"{name} must be one of {', '.join(options)}")
    return value


def query_user(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return validate_user_id(value, name) if value else None


def query_limit(request: web.Request, default: int = 100) -> int:
    value = request.query.get("limit", str(default))
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidParam(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise InvalidParam(f"{name} must be a whole number")
    return int(value)


def actor(request: web.Request) -> str:
    """Who a change is recorded against: the acting staff member, else the API client."""
    user = acting_user(request)
    return user if user is not None else f"api:{request[API_CLIENT].name}"
