"""Reading and validating request input at the edge, shared by both roles' handlers.

Each helper raises a Matrix-style error naming the field, so handlers stay one-liners.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from .auth import API_CLIENT, acting_user, validate_user_id
from .errors import BadJson, InvalidParam

MAX_LIMIT = 1000
# A cursor holds a list position, (created_at in ms, id); an id is a Matrix ID at most.
MAX_CURSOR = 400
_CURSOR = re.compile(r"([0-9]{1,18}):([^\x00-\x1f\x7f]{1,255})")

T = TypeVar("T")
Position = tuple[int, str]


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


def encode_cursor(position: Position) -> str:
    created_at, item_id = position
    raw = f"{created_at}:{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position in ``cursor``; ValueError unless it is exactly what we hand out."""
    if not 0 < len(cursor) <= MAX_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise ValueError("not a cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not a cursor") from None
    match = _CURSOR.fullmatch(raw)
    if match is None:
        raise ValueError("not a cursor")
    position = (int(match[1]), match[2])
    if encode_cursor(position) != cursor:
        raise ValueError("not a cursor")
    return position


@dataclass(frozen=True, slots=True)
class PageQuery:
    """``limit`` and ``cursor`` of a list call (keyset paging, newest first)."""

    limit: int
    after: Position | None

    @property
    def fetch(self) -> int:
        """Rows to ask the store for: one more than the page shows, to learn if more exist."""
        return self.limit + 1

    def cut(
        self, items: Sequence[T], position: Callable[[T], Position]
    ) -> tuple[list[T], str | None]:
        """The page to answer, and the cursor of the next one (None on the last page)."""
        page = list(items[: self.limit])
        if len(items) <= self.limit:
            return page, None
        return page, encode_cursor(position(page[-1]))


def query_page(request: web.Request, default: int = 100) -> PageQuery:
    limit = query_limit(request, default)
    cursor = request.query.get("cursor")
    if not cursor:
        return PageQuery(limit, None)
    try:
        return PageQuery(limit, decode_cursor(cursor))
    except ValueError:
        raise InvalidParam("cursor must be the next_cursor of an earlier page") from None


def actor(request: web.Request) -> str:
    """Who a change is recorded against: the acting staff member, else the API client."""
    user = acting_user(request)
    return user if user is not None else f"api:{request[API_CLIENT].name}"
