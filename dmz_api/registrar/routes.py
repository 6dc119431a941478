"""The registrar's admin API: thin handlers over ``RegistrarService``.

Scopes: ``tokens`` for /v1/tokens and sponsor revocation, ``guests`` for /v1/guests.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..auth import API_CLIENT, acting_user, requires_scope, validate_user_id
from ..durations import parse_duration
from ..errors import InvalidParam, NotFound
from ..params import (
    actor,
    json_body,
    query_choice,
    query_int,
    query_limit,
    query_page,
    query_user,
)
from .service import REGISTRAR, Minted, TokenView
from .store import GUEST_STATUSES, TOKEN_STATUSES, GuestRow, RegistrationRow

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
TOKEN_ID = re.compile(r"^[0-9a-f]{12}$")
MAX_NOTE = 500
# Rooms a token's guests are invited to (room IDs: the bot resolves aliases before minting).
ROOM_ID = re.compile(r"^![\x21-\x7e]{1,255}$")  # room v12 IDs have no server part
MAX_INVITES = 20
PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
PROJECT_RULE = "project must be a name of letters, digits, '.', '_' or '-' (at most 64)"
MAX_NOTIFY = 255


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def token_json(view: TokenView) -> dict[str, Any]:
    row = view.row
    return {
        "id": row.id,
        "status": view.status,
        "uses_allowed": row.uses_allowed,
        "uses_completed": row.uses_completed,
        "pending": row.pending,
        "expires_at": iso(row.expires_at),
        "created_at": iso(row.created_at),
        "sponsor": row.sponsor,
        "note": row.note,
        "revoked_at": iso(row.revoked_at),
        "revoked_by": row.revoked_by,
        "used_by": list(view.used_by),
        "homeserver_kind": row.homeserver_kind,
        "invites": json.loads(row.invites),
        "notify": row.notify,
        "guest_expires_in": row.guest_expires_in or None,
        "project": row.project,
    }


def minted_json(minted: Minted) -> dict[str, Any]:
    return {"token": minted.token, "url": minted.url, **token_json(minted.view)}


def guest_json(guest: GuestRow) -> dict[str, Any]:
    return {
        "user_id": guest.user_id,
        "sponsor": guest.sponsor,
        "token_id": guest.token_id,
        "created_at": iso(guest.created_at),
        "status": guest.status,
        "deactivated_at": iso(guest.deactivated_at),
        "deactivated_by": guest.deactivated_by,
        "expires_at": iso(guest.expires_at),
    }


def registration_json(item: RegistrationRow) -> dict[str, Any]:
    return {
        "user_id": item.user_id,
        "sponsor": item.sponsor,
        "token_id": item.token_id,
        "created_at": iso(item.created_at),
        "created_at_ms": item.created_at,
        "status": item.status,
        "invites": json.loads(item.invites),
        "notify": item.notify,
    }


def mint_invites(body: dict[str, Any]) -> list[str]:
    invites = body.get("invites", [])
    if (
        not isinstance(invites, list)
        or len(invites) > MAX_INVITES
        or not all(isinstance(room, str) and ROOM_ID.match(room) for room in invites)
    ):
        raise InvalidParam(f"invites must be a list of at most {MAX_INVITES} room IDs")
    return list(dict.fromkeys(invites))


def guest_duration(value: Any, most: int, name: str = "guest_expires_in") -> int:
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise InvalidParam(f"{name} {e}") from None
    if seconds > most:
        raise InvalidParam(f"{name} must be at most {most} seconds")
    return seconds


def token_id(request: web.Request) -> str:
    value = request.match_info["token_id"]
    if not TOKEN_ID.match(value):
        raise NotFound(f"Token {value[:40]} does not exist")
    return value


@requires_scope("tokens")
async def mint_token(request: web.Request) -> web.Response:
    service = request.app[REGISTRAR]
    config = service.config
    sponsor = acting_user(request)
    if sponsor is None:
        raise InvalidParam("X-Acting-User is required: the staff member who sponsors the guest")
    body = await json_body(request, required=False)
    uses = body.get("uses", config.default_uses)
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= config.max_uses:
        raise InvalidParam(f"uses must be a whole number from 1 to {config.max_uses}")
    try:
        expires_in = parse_duration(body.get("expires_in", config.default_expires_in))
    except ValueError as e:
        raise InvalidParam(f"expires_in {e}") from None
    if expires_in > config.max_expires_in:
        raise InvalidParam(f"expires_in must be at most {config.max_expires_in} seconds")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise InvalidParam(f"note must be text of at most {MAX_NOTE} characters")
    invites = mint_invites(body)
    notify = body.get("notify", "")
    if not isinstance(notify, str) or len(notify) > MAX_NOTIFY:
        raise InvalidParam(f"notify must be text of at most {MAX_NOTIFY} characters")
    guest_expires_in = 0
    if body.get("guest_expires_in") is not None:
        guest_expires_in = guest_duration(body["guest_expires_in"], config.max_guest_expires_in)
    project = body.get("project", "")
    if not isinstance(project, str) or (project and not PROJECT.match(project)):
        raise InvalidParam(
            "project must be a name of letters, digits, '.', '_' or '-' (at most 64)"
        )
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise InvalidParam("Idempotency-Key must be 1 to 255 printable ASCII characters")
    minted = await service.mint(
        sponsor=sponsor,
        api_client=request[API_CLIENT].name,
        uses=uses,
        expires_in=expires_in,
        note=note.strip(),
        idempotency_key=key,
        invites=invites,
        notify=notify,
        guest_expires_in=guest_expires_in,
        project=project,
    )
    headers = {"Cache-Control": "no-store"}
    if minted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(
        minted_json(minted), status=200 if minted.replayed else 201, headers=headers
    )


@requires_scope("tokens")
async def list_tokens(request: web.Request) -> web.Response:
    page = query_page(request)
    views = await request.app[REGISTRAR].list_tokens(
        status=query_choice(request, "status", TOKEN_STATUSES),
        sponsor=query_user(request, "sponsor"),
        limit=page.fetch,
        after=page.after,
    )
    views, next_cursor = page.cut(views, lambda view: (view.row.created_at, view.row.id))
    return web.json_response(
        {"tokens": [token_json(view) for view in views], "next_cursor": next_cursor}
    )


@requires_scope("tokens")
async def get_token(request: web.Request) -> web.Response:
    view = await request.app[REGISTRAR].get_token(token_id(request))
    return web.json_response(token_json(view))


@requires_scope("tokens")
async def revoke_token(request: web.Request) -> web.Response:
    view = await request.app[REGISTRAR].revoke_token(token_id(request), actor(request))
    return web.json_response(token_json(view))


@requires_scope("tokens")
async def revoke_sponsor(request: web.Request) -> web.Response:
    sponsor = validate_user_id(request.match_info["user_id"], "user_id")
    body = await json_body(request, required=False)
    guests = body.get("guests", "keep")
    if guests not in ("keep", "deactivate"):
        raise InvalidParam("guests must be keep or deactivate")
    result = await request.app[REGISTRAR].revoke_sponsor(
        sponsor, deactivate_guests=guests == "deactivate", actor=actor(request)
    )
    return web.json_response(
        {"tokens_revoked": result.tokens_revoked, "guests_deactivated": result.guests_deactivated}
    )


@requires_scope("guests")
async def list_guests(request: web.Request) -> web.Response:
    page = query_page(request)
    project = request.query.get("project")
    if project is not None and not PROJECT.match(project):
        raise InvalidParam(
            "project must be a name of letters, digits, '.', '_' or '-' (at most 64)"
        )
    guests = await request.app[REGISTRAR].list_guests(
        project=project,
        sponsor=query_user(request, "sponsor"),
        status=query_choice(request, "status", GUEST_STATUSES),
        limit=page.fetch,
        after=page.after,
    )
    guests, next_cursor = page.cut(guests, lambda guest: (guest.created_at, guest.user_id))
    return web.json_response(
        {"guests": [guest_json(guest) for guest in guests], "next_cursor": next_cursor}
    )


@requires_scope("guests")
async def list_registrations(request: web.Request) -> web.Response:
    """The registrations feed, oldest first, for the bot's invites and notices.

    ``GET /v1/registrations?since=<ms>&after=<user_id>&limit=N`` → ``{"registrations":
    [...], "next": {"since": ms, "after": user_id}}``: the guests registered after the
    position ``(since, after)``; ask again from ``next`` (the same position when empty).
    """
    since = query_int(request, "since") or 0
    after = request.query.get("after", "")
    if after:
        validate_user_id(after, "after")
    limit = query_limit(request)
    items = await request.app[REGISTRAR].registrations(since, after, limit)
    last = {"since": items[-1].created_at, "after": items[-1].user_id} if items else None
    return web.json_response(
        {
            "registrations": [registration_json(item) for item in items],
            "next": last or {"since": since, "after": after},
        }
    )


@requires_scope("guests")
async def deactivate_guest(request: web.Request) -> web.Response:
    user_id = validate_user_id(request.match_info["user_id"], "user_id")
    guest = await request.app[REGISTRAR].deactivate_guest(user_id, actor(request))
    return web.json_response(guest_json(guest))


@requires_scope("guests")
async def extend_guest(request: web.Request) -> web.Response:
    """``POST /v1/guests/{user_id}/extend {"expires_in": "30d"}`` → the guest, later expiry."""
    service = request.app[REGISTRAR]
    user_id = validate_user_id(request.match_info["user_id"], "user_id")
    body = await json_body(request)
    if "expires_in" not in body:
        raise InvalidParam("expires_in is required: how much longer the guest may stay")
    seconds = guest_duration(body["expires_in"], service.config.max_guest_expires_in, "expires_in")
    guest = await service.extend_guest(user_id, seconds, actor(request))
    return web.json_response(guest_json(guest))


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/v1/tokens", mint_token, name="mint_token")
    router.add_get("/v1/tokens", list_tokens, name="list_tokens")
    router.add_get("/v1/tokens/{token_id}", get_token, name="get_token")
    router.add_delete("/v1/tokens/{token_id}", revoke_token, name="revoke_token")
    router.add_post("/v1/sponsors/{user_id}/revoke", revoke_sponsor, name="revoke_sponsor")
    router.add_get("/v1/guests", list_guests, name="list_guests")
    router.add_get("/v1/registrations", list_registrations, name="list_registrations")
    router.add_post("/v1/guests/{user_id}/deactivate", deactivate_guest, name="deactivate_guest")
    router.add_post("/v1/guests/{user_id}/extend", extend_guest, name="extend_guest")
