"""Small fakes the plugin talks HTTP to: the registrar's admin API and the internal homeserver.

They follow the published shapes (dmz_api/registrar/routes.py, the Synapse admin API)
closely enough for handler tests; the real services are exercised in tests/e2e.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from attrs import define, field
from multidict import CIMultiDict

BODY = web.RequestKey("body", dict)
REGISTRAR_KEY = "registrar-test-key-0123456789"
ADMIN_TOKEN = "internal-admin-token-0123456789"
PUBLIC_URL = "https://partners.example.test"


def iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


@define
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: Any


@define
class FakeRegistrar:
    tokens: dict[str, dict[str, Any]] = field(factory=dict)
    guests: dict[str, dict[str, Any]] = field(factory=dict)
    requests: list[Recorded] = field(factory=list)
    idempotency: dict[str, str] = field(factory=dict)
    delay: float = 0.0
    # (status, body) answered to every authenticated request while set.
    fail: tuple[int, Any] | None = None
    minted: int = 0
    # The most items a list call answers, whatever its limit (the real default is 100).
    page_cap: int | None = None
    # The registrations feed, oldest first (see register).
    feed: list[dict[str, Any]] = field(factory=list)

    def add_token(self, sponsor: str, *, status: str = "active", note: str = "") -> str:
        token_id = secrets.token_hex(6)
        now = datetime.now(UTC)
        self.tokens[token_id] = {
            "id": token_id,
            "status": status,
            "uses_allowed": 1,
            "uses_completed": 1 if status == "used" else 0,
            "pending": 0,
            "expires_at": iso(now + timedelta(days=1)),
            "created_at": iso(now),
            "sponsor": sponsor,
            "note": note,
            "revoked_at": None,
            "revoked_by": None,
            "used_by": [],
            "homeserver_kind": "synapse",
        }
        return token_id

    def add_guest(self, user_id: str, sponsor: str, status: str = "active") -> None:
        self.guests[user_id] = {
            "user_id": user_id,
            "sponsor": sponsor,
            "token_id": None,
            "created_at": iso(datetime.now(UTC)),
            "status": status,
            "deactivated_at": None,
            "deactivated_by": None,
        }

    def register(self, token_id: str, user_id: str) -> None:
        """A guest registering with ``token_id`` on the page: a guest and a feed item."""
        token = self.tokens[token_id]
        self.add_guest(user_id, token["sponsor"])
        self.guests[user_id]["token_id"] = token_id
        self.feed.append(
            {
                "user_id": user_id,
                "sponsor": token["sponsor"],
                "token_id": token_id,
                "created_at": iso(datetime.now(UTC)),
                "created_at_ms": 1_000 + len(self.feed),
                "status": "active",
                "invites": token.get("invites", []),
                "notify": token.get("notify", ""),
            }
        )

    async def registrations(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        after = request.query.get("after", "")
        limit = int(request.query.get("limit", "100"))
        found = [
            item for item in self.feed if (item["created_at_ms"], item["user_id"]) > (since, after)
        ][:limit]
        last = found[-1] if found else None
        position = (
            {"since": last["created_at_ms"], "after": last["user_id"]}
            if last
            else {"since": since, "after": after}
        )
        return web.json_response({"registrations": found, "next": position})

    def calls(self, method: str, prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                dict(request.query),
                CIMultiDict(request.headers),
                body,
            )
        )
        if request.headers.get("Authorization") != f"Bearer {REGISTRAR_KEY}":
            return error(401, "M_UNKNOWN_TOKEN", "Unknown API key")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            status, payload = self.fail
            if isinstance(payload, str):
                return web.Response(status=status, text=payload)
            return web.json_response(payload, status=status)
        request[BODY] = body or {}
        return await handler(request)

    async def mint(self, request: web.Request) -> web.Response:
        body = request[BODY]
        sponsor = request.headers.get("X-Acting-User")
        if not sponsor:
            return error(400, "M_INVALID_PARAM", "X-Acting-User is required")
        uses = body.get("uses", 1)
        if not isinstance(uses, int) or not 1 <= uses <= 100:
            return error(400, "M_INVALID_PARAM", "uses must be a whole number from 1 to 100")
        key = request.headers.get("Idempotency-Key")
        if key and key in self.idempotency:
            token_id = self.idempotency[key]
            return web.json_response(self.tokens[token_id] | {"url": self._url(token_id)})
        token_id = self.add_token(sponsor, note=body.get("note", ""))
        token = self.tokens[token_id]
        token["invites"] = body.get("invites", [])
        token["notify"] = body.get("notify", "")
        token["uses_allowed"] = uses
        expires = datetime.now(UTC) + timedelta(seconds=int(body.get("expires_in", 86400)))
        token["expires_at"] = iso(expires)
        token["plaintext"] = secrets.token_urlsafe(12)
        if key:
            self.idempotency[key] = token_id
        self.minted += 1
        return web.json_response(
            {k: v for k, v in token.items() if k != "plaintext"}
            | {"token": token["plaintext"], "url": self._url(token_id)},
            status=201,
        )

    def _url(self, token_id: str) -> str:
        return f"{PUBLIC_URL}/register?token={self.tokens[token_id].get('plaintext', 'x')}"

    def _public(self, token: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in token.items() if k != "plaintext"}

    def _page(
        self, request: web.Request, key: str, items: list[dict[str, Any]], id_key: str
    ) -> web.Response:
        """Newest (last added) first; the cursor is the last item's id, a position like the
        real one's: it stays valid when that item no longer matches the filters."""
        limit = int(request.query.get("limit", "100"))
        if self.page_cap is not None:
            limit = min(limit, self.page_cap)
        ordered = items[::-1]
        start = 0
        if cursor := request.query.get("cursor"):
            ids = [item[id_key] for item in ordered]
            if cursor not in ids:
                return error(400, "M_INVALID_PARAM", "cursor must be the next_cursor of a page")
            start = ids.index(cursor) + 1
        status, sponsor = request.query.get("status"), request.query.get("sponsor")
        project = request.query.get("project")
        found = [
            item
            for item in ordered[start:]
            if (not status or item["status"] == status)
            and (not sponsor or item["sponsor"] == sponsor)
            and (not project or item.get("project") == project)
        ]
        page = found[:limit]
        next_cursor = page[-1][id_key] if len(found) > limit else None
        return web.json_response({key: page, "next_cursor": next_cursor})

    async def list_tokens(self, request: web.Request) -> web.Response:
        tokens = [self._public(t) for t in self.tokens.values()]
        return self._page(request, "tokens", tokens, "id")

    async def get_token(self, request: web.Request) -> web.Response:
        token = self.tokens.get(request.match_info["token_id"])
        if token is None:
            return error(404, "M_NOT_FOUND", "Token does not exist")
        return web.json_response(self._public(token))

    async def revoke_token(self, request: web.Request) -> web.Response:
        token = self.tokens.get(request.match_info["token_id"])
        if token is None:
            return error(404, "M_NOT_FOUND", "Token does not exist")
        if token["status"] == "used":
            return error(409, "M_CONFLICT", f"Token {token['id']} is already used")
        token["status"] = "revoked"
        return web.json_response(self._public(token))

    async def revoke_sponsor(self, request: web.Request) -> web.Response:
        sponsor = request.match_info["user_id"]
        revoked = 0
        for token in self.tokens.values():
            if token["sponsor"] == sponsor and token["status"] == "active":
                token["status"] = "revoked"
                revoked += 1
        deactivated = 0
        if request[BODY].get("guests") == "deactivate":
            for guest in self.guests.values():
                if guest["sponsor"] == sponsor and guest["status"] == "active":
                    guest["status"] = "deactivated"
                    deactivated += 1
        return web.json_response({"tokens_revoked": revoked, "guests_deactivated": deactivated})

    async def list_guests(self, request: web.Request) -> web.Response:
        return self._page(request, "guests", list(self.guests.values()), "user_id")

    async def deactivate_guest(self, request: web.Request) -> web.Response:
        guest = self.guests.get(request.match_info["user_id"])
        if guest is None:
            return error(404, "M_NOT_FOUND", "not a guest registered through this registrar")
        guest["status"] = "deactivated"
        return web.json_response(guest)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_post("/v1/tokens", self.mint)
        app.router.add_get("/v1/tokens", self.list_tokens)
        app.router.add_get("/v1/tokens/{token_id}", self.get_token)
        app.router.add_delete("/v1/tokens/{token_id}", self.revoke_token)
        app.router.add_post("/v1/sponsors/{user_id}/revoke", self.revoke_sponsor)
        app.router.add_get("/v1/guests", self.list_guests)
        app.router.add_get("/v1/registrations", self.registrations)
        app.router.add_post("/v1/guests/{user_id}/deactivate", self.deactivate_guest)
        return app


@define
class FakeHomeserver:
    """The internal homeserver: the admin user API, and the little of the client API used."""

    # user_id -> the admin API's user record (missing users answer 404).
    users: dict[str, dict[str, Any]] = field(factory=dict)
    # (room_id, user_id) -> membership.
    members: dict[tuple[str, str], str] = field(factory=dict)
    created_rooms: list[dict[str, Any]] = field(factory=list)
    admin_requests: list[str] = field(factory=list)
    admin_status: int | None = None
    admin_delay: float = 0.0
    create_room_fails: bool = False
    # Protected rooms: (room_id, event type) -> state content (state key ""); a room with no
    # state here is one the bot is not in (403).
    state: dict[tuple[str, str], dict[str, Any]] = field(factory=dict)
    state_writes: list[tuple[str, str, dict[str, Any]]] = field(factory=list)
    # Event types whose writes are refused (403), as a homeserver's auth rules would.
    refuse_state: set[str] = field(factory=set)
    aliases: dict[str, str] = field(factory=dict)
    # (room_id, user_id) of every invite the bot sent; an answer to give instead of 200.
    invites: list[tuple[str, str]] = field(factory=list)
    invite_fails: list[tuple[int, str, str]] = field(factory=list)
    # Rooms whose kicks are refused (403), as a room where the bot lacks the power.
    no_kick: set[str] = field(factory=set)
    kicks: list[tuple[str, str]] = field(factory=list)

    def add_user(self, user_id: str, **flags: bool) -> None:
        self.users[user_id] = {
            "name": user_id,
            "deactivated": False,
            "locked": False,
            "suspended": False,
            "admin": False,
        } | flags

    async def admin_user(self, request: web.Request) -> web.Response:
        self.admin_requests.append(request.match_info["user_id"])
        if request.headers.get("Authorization") != f"Bearer {ADMIN_TOKEN}":
            return error(401, "M_UNKNOWN_TOKEN", "Invalid access token")
        if self.admin_delay:
            await asyncio.sleep(self.admin_delay)
        if self.admin_status is not None:
            return error(self.admin_status, "M_UNKNOWN", "broken")
        user = self.users.get(request.match_info["user_id"])
        if user is None:
            return error(404, "M_NOT_FOUND", "User not found")
        return web.json_response(user)

    async def member(self, request: web.Request) -> web.Response:
        key = (request.match_info["room_id"], request.match_info["user_id"])
        membership = self.members.get(key)
        if membership is None:
            return error(404, "M_NOT_FOUND", "Event not found")
        return web.json_response({"membership": membership})

    async def joined_members(self, request: web.Request) -> web.Response:
        room_id = request.match_info["room_id"]
        joined = {
            user: {}
            for (room, user), state in self.members.items()
            if room == room_id and state == "join"
        }
        return web.json_response({"joined": joined})

    async def create_room(self, request: web.Request) -> web.Response:
        if self.create_room_fails:
            return error(500, "M_UNKNOWN", "Internal server error")
        body = await request.json()
        room_id = f"!dm{len(self.created_rooms)}:corp.example"
        self.created_rooms.append(body | {"room_id": room_id})
        for invitee in body.get("invite", []):
            self.members[(room_id, invitee)] = "invite"
        return web.json_response({"room_id": room_id})

    def _in_room(self, room_id: str) -> bool:
        return any(room == room_id for room, _ in self.state)

    async def get_state(self, request: web.Request) -> web.Response:
        room_id, event_type = request.match_info["room_id"], request.match_info["event_type"]
        if not self._in_room(room_id):
            return error(403, "M_FORBIDDEN", "You are not in this room")
        content = self.state.get((room_id, event_type))
        if content is None:
            return error(404, "M_NOT_FOUND", "Event not found")
        return web.json_response(content)

    async def put_state(self, request: web.Request) -> web.Response:
        room_id, event_type = request.match_info["room_id"], request.match_info["event_type"]
        if not self._in_room(room_id) or event_type in self.refuse_state:
            return error(403, "M_FORBIDDEN", "You don't have permission to post that to the room")
        content = await request.json()
        self.state[(room_id, event_type)] = content
        self.state_writes.append((room_id, event_type, content))
        return web.json_response({"event_id": f"$state{len(self.state_writes)}"})

    async def resolve_alias(self, request: web.Request) -> web.Response:
        room_id = self.aliases.get(request.match_info["alias"])
        if room_id is None:
            return error(404, "M_NOT_FOUND", "Room alias not found")
        return web.json_response({"room_id": room_id, "servers": ["corp.example"]})

    async def invite(self, request: web.Request) -> web.Response:
        room_id, user_id = request.match_info["room_id"], (await request.json())["user_id"]
        if self.invite_fails:
            status, errcode, message = self.invite_fails.pop(0)
            return error(status, errcode, message)
        self.invites.append((room_id, user_id))
        self.members[(room_id, user_id)] = "invite"
        return web.json_response({})

    async def joined_rooms(self, request: web.Request) -> web.Response:
        rooms = sorted({room for (room, user), m in self.members.items() if m == "join"})
        bot = [room for room in rooms if self.members.get((room, "@bastion:corp.example"))]
        return web.json_response({"joined_rooms": bot})

    async def kick(self, request: web.Request) -> web.Response:
        room_id, user_id = request.match_info["room_id"], (await request.json())["user_id"]
        if room_id in self.no_kick:
            return error(403, "M_FORBIDDEN", "You cannot kick user")
        self.kicks.append((room_id, user_id))
        self.members[(room_id, user_id)] = "leave"
        return web.json_response({})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_synapse/admin/v2/users/{user_id}", self.admin_user)
        app.router.add_get("/_matrix/client/v3/joined_rooms", self.joined_rooms)
        app.router.add_post("/_matrix/client/v3/rooms/{room_id}/kick", self.kick)
        app.router.add_post("/_matrix/client/v3/rooms/{room_id}/invite", self.invite)
        base = "/_matrix/client/v3/rooms/{room_id}"
        app.router.add_get(base + "/state/m.room.member/{user_id}", self.member)
        app.router.add_get(base + "/joined_members", self.joined_members)
        app.router.add_post("/_matrix/client/v3/createRoom", self.create_room)
        for state_path in (base + "/state/{event_type}", base + "/state/{event_type}/"):
            app.router.add_get(state_path, self.get_state)
            app.router.add_put(state_path, self.put_state)
        app.router.add_get("/_matrix/client/v3/directory/room/{alias}", self.resolve_alias)
        return app


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[TestServer]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()
