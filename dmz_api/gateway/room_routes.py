"""The admin API of protected rooms (scope ``rules``): thin handlers over ``gateway.rooms``.

::

    GET    /v1/rooms                      -> 200 {"rooms": [protection, ...]}
    PUT    /v1/rooms/{room_id}            {"ledger": true, "acl": true, "policy_server": true}
                                          -> 201 (new) or 200 {"room": protection}
    DELETE /v1/rooms/{room_id}            -> 200 {"room": protection} | 404 M_NOT_FOUND
    GET    /v1/rooms/{room_id}/desired    -> 200 desired state under the enforced rules
    POST   /v1/rooms/{room_id}/check      {"state": {"m.room.power_levels": {...}, ...}}
                                          -> 200 {"in_order", "differences", "desired"}
    GET    /v1/policy_server              -> 200 {"via", "public_key"} | 404 M_NOT_FOUND

Room ids arrive percent-encoded in the path (``%21abc%3Acorp.example``); aiohttp decodes them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..auth import requires_scope
from ..errors import InvalidParam, NotFound
from ..params import actor, json_body
from .rooms import ProtectedRooms, parse_room_id
from .service import GATEWAY


def rooms(request: web.Request) -> ProtectedRooms:
    return request.app[GATEWAY].rooms


def room_id(request: web.Request) -> str:
    return parse_room_id(request.match_info["room_id"])


@requires_scope("rules")
async def list_rooms(request: web.Request) -> web.Response:
    return web.json_response({"rooms": [room.to_json() for room in rooms(request).rooms()]})


@requires_scope("rules")
async def protect_room(request: web.Request) -> web.Response:
    body = await json_body(request, required=False)
    room, created = await rooms(request).protect(room_id(request), body, author=actor(request))
    return web.json_response({"room": room.to_json()}, status=201 if created else 200)


@requires_scope("rules")
async def unprotect_room(request: web.Request) -> web.Response:
    room = await rooms(request).unprotect(room_id(request), author=actor(request))
    return web.json_response({"room": room.to_json()})


@requires_scope("rules")
async def room_desired(request: web.Request) -> web.Response:
    return web.json_response(rooms(request).desired(room_id(request)).to_json())


@requires_scope("rules")
async def room_check(request: web.Request) -> web.Response:
    body = await json_body(request)
    state: Any = body.get("state")
    if not isinstance(state, dict) or not all(
        value is None or isinstance(value, dict) for value in state.values()
    ):
        raise InvalidParam("state must be an object of event type -> content (or null)")
    want, check = rooms(request).check(room_id(request), state)
    return web.json_response({**check.to_json(), "desired": want.to_json()})


@requires_scope("rules")
async def policy_server(request: web.Request) -> web.Response:
    server = rooms(request).policy_server
    if server is None:
        raise NotFound("no policy server configured")
    return web.json_response(server.to_json())


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/v1/rooms", list_rooms, name="gateway.rooms")
    router.add_put("/v1/rooms/{room_id}", protect_room, name="gateway.room.protect")
    router.add_delete("/v1/rooms/{room_id}", unprotect_room, name="gateway.room.unprotect")
    router.add_get("/v1/rooms/{room_id}/desired", room_desired, name="gateway.room.desired")
    router.add_post("/v1/rooms/{room_id}/check", room_check, name="gateway.room.check")
    router.add_get("/v1/policy_server", policy_server, name="gateway.policy_server")
