"""The gateway as a Matrix policy server (MSC4284, spec v1.18): every server in a room whose
``m.room.policy`` state names us (``{"via": gateway.server_name, "public_keys": {"ed25519":
<our key>}}``) asks us to sign each event before sending it, and soft-fails any event it
receives without our signature. The rules then hold on every server in the room, not only
at our border.

Served by the proxy listener (ahead of forwarding, where partners reach us) and as plain
routes on the dmz_api app, both through ``PolicyServer``::

    POST /_matrix/policy/v1/sign            X-Matrix signed by the asking server
    {PDU}
    200 {"<server_name>": {"ed25519:policy_server": "<signature>"}}
    400 {"errcode": "M_FORBIDDEN", "error": "Refused by rule ..."}   the event is refused
    403 {"errcode": "M_FORBIDDEN", "error": ...}    the asking server is refused by the rules
    400 M_NOT_JSON / M_BAD_JSON / M_UNSUPPORTED_ROOM_VERSION, 401 M_UNAUTHORIZED,
    413 M_TOO_LARGE, 404 M_UNRECOGNIZED (no gateway.policy_server configured)

    GET /.well-known/matrix/policy_server
    200 {"public_keys": {"ed25519": "<unpadded base64>"}}

One judge: the event becomes a ``RequestInfo`` for ``GatewayService.decide`` as the antispam
callbacks map events: a sender on ``gateway.server_name`` makes a *client* request by that
user, any other sender a *federation* request from the sender's server, with the event's
type and room. Audit-mode rules only record (the event is signed). When the asking server is
not the sender's (a server re-checking an event it received), the asking server is judged
first, as a federation request without event types (server_allow, server_block,
partner_scope rooms). Each judgement is one decision record, source ``policy_server``, path
``/_matrix/policy/v1/sign?event_id=<id>``.

In a protected room (``gateway.rooms``) an event the rules allow is judged once more, by the
protected-rooms judge (``ProtectedRooms.judge_event``, which uses the proxy guard's
``protection.judge_write`` for guarded state): an event of another server's user that would
loosen the protection is refused (400 M_FORBIDDEN), a second record of rule
``protected-room``. This holds the room against a partner raised to the top level, whom the
auth rules let through. Synapse never asks about ``m.room.policy`` itself.

An allowed event is signed over its redacted form (``signing.events``) with the policy key
(``signing.keys``); the answer carries only our signature, as the spec asks. The asking
server's X-Matrix signature is verified (``signing.origin``) unless
``policy_server.verify_origin`` is false.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..config import PolicyServerConfig
from ..http.listener import ServerRequest, date_line
from ..policy.matrix_paths import x_matrix_origin
from ..policy.model import Decision, RequestClass, RequestInfo, Source
from ..protection import PolicyServerRef
from ..service import GATEWAY, GatewayService
from ..signing.events import KNOWN_VERSIONS, RoomVersions, event_id, redact
from ..signing.keys import KEY_ID, PolicyKey, load_or_create
from ..signing.origin import NotAuthenticated, RequestVerifier, ServerKeys

log = logging.getLogger("dmz_api.gateway.enforce.policy_server")

SIGN_PATH = "/_matrix/policy/v1/sign"
WELL_KNOWN_PATH = "/.well-known/matrix/policy_server"
ENDPOINT = "policy.sign"
_JSON_HEAD = b"Content-Type: application/json\r\n"
# Clients may read the well-known from a browser to fill in m.room.policy.
_CORS = {"Access-Control-Allow-Origin": "*"}
_CORS_HEAD = b"Access-Control-Allow-Origin: *\r\n"
# Seconds a key lookup may take beyond connecting (our homeserver may ask the origin first).
_KEY_FETCH_EXTRA = 10.0


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


def _error(status: int, errcode: str, error: str) -> Answer:
    return Answer(status, {"errcode": errcode, "error": error})


NOT_A_POLICY_SERVER = _error(404, "M_UNRECOGNIZED", "This server is not a policy server")
TOO_LARGE = _error(413, "M_TOO_LARGE", "The event is larger than the policy server reads")


class BadEvent(ValueError):
    pass


def _string(event: Mapping[str, Any], key: str) -> str:
    value = event.get(key)
    if not isinstance(value, str) or not value:
        raise BadEvent(f"the event's {key} must be a non-empty string")
    return value


def _server_of(user_id: str) -> str:
    localpart, sep, server = user_id.partition(":")
    if not localpart.startswith("@") or not sep or not server:
        raise BadEvent("the event's sender must be a user ID such as @alice:example.org")
    return server.lower()


class PolicyServer:
    """Signs the events the rules allow; knows nothing of HTTP frameworks."""

    def __init__(
        self,
        gateway: GatewayService,
        config: PolicyServerConfig,
        key: PolicyKey,
        verifier: RequestVerifier | None,
    ) -> None:
        self.gateway = gateway
        self.config = config
        self.key = key
        self.server_name = gateway.config.server_name
        self._local = self.server_name.lower()
        self._verifier = verifier
        self._versions = RoomVersions(config.fallback_room_version)
        self.well_known = Answer(200, {"public_keys": {"ed25519": key.public_key}})

    async def sign(
        self, method: str, uri: str, authorization: Iterable[str], body: bytes
    ) -> Answer:
        """The answer to ``POST /_matrix/policy/v1/sign`` (``uri``: the raw request target)."""
        try:
            event = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "M_NOT_JSON", "The body is not JSON")
        if not isinstance(event, dict):
            return _error(400, "M_BAD_JSON", "The body must be a PDU (a JSON object)")
        authorization = list(authorization)
        if self._verifier is not None:
            try:
                requester = await self._verifier.origin(method, uri, authorization, event)
            except NotAuthenticated as e:
                return _error(401, "M_UNAUTHORIZED", f"Not authenticated: {e}")
        else:
            origin, problem = x_matrix_origin(authorization)
            if origin is None:
                return _error(401, "M_UNAUTHORIZED", problem or "No X-Matrix authorization")
            requester = origin
        try:
            return self._judge(event, requester)
        except BadEvent as e:
            return _error(400, "M_BAD_JSON", f"Malformed event: {e}")

    def _judge(self, event: dict[str, Any], requester: str) -> Answer:
        event_type = _string(event, "type")
        sender = _string(event, "sender")
        sender_server = _server_of(sender)
        room = event.get("room_id")
        if room is not None and not isinstance(room, str):
            raise BadEvent("the event's room_id must be a string")
        if room is None and event_type != "m.room.create":
            raise BadEvent("the event's room_id must be a non-empty string")
        if not isinstance(event.get("content"), dict):
            raise BadEvent("the event's content must be an object")
        self._versions.learn(event)
        room_version = self._versions.of(room)
        if room_version not in KNOWN_VERSIONS:
            return _error(
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
                f"The policy server cannot sign events of room version {room_version[:32]}",
            )
        try:
            the_id = event_id(event, room_version)
        except (TypeError, ValueError):
            # canonicaljson refuses what the spec's canonical JSON has no form for (floats...).
            raise BadEvent("the event has no canonical JSON form") from None
        path = f"{SIGN_PATH}?event_id={quote(the_id, safe='$')}"
        if requester != sender_server:
            asking = self.gateway.decide(
                RequestInfo(
                    RequestClass.FEDERATION,
                    "POST",
                    path,
                    endpoint=ENDPOINT,
                    origin=requester,
                    room=room,
                    source=Source.POLICY_SERVER,
                )
            )
            if not asking.allowed:
                return self._refusal(asking, 403)
        local = sender_server == self._local
        info = RequestInfo(
            RequestClass.CLIENT if local else RequestClass.FEDERATION,
            "POST",
            path,
            endpoint=ENDPOINT,
            origin=None if local else sender_server,
            user=sender,
            event_types=(event_type,),
            room=room,
            source=Source.POLICY_SERVER,
        )
        decision = self.gateway.decide(info)
        if not decision.allowed:
            return self._refusal(decision, 400)
        state_key = event.get("state_key")
        refused = self.gateway.rooms.judge_event(
            info,
            room,
            sender,
            event_type,
            state_key if isinstance(state_key, str) else None,
            event["content"],
        )
        if refused is not None:
            return _error(400, "M_FORBIDDEN", refused)
        signature = self.key.sign(self.server_name, redact(event, room_version))
        return Answer(200, {self.server_name: {KEY_ID: signature}})

    @staticmethod
    def _refusal(decision: Decision, status: int) -> Answer:
        # 503 while the gateway fails closed; otherwise the spec's status for the case.
        return _error(
            decision.status if decision.status >= 500 else status, "M_FORBIDDEN", decision.reason
        )


POLICY_SERVER: web.AppKey[PolicyServer] = web.AppKey("gateway_policy_server", PolicyServer)


# ---- the proxy listener ------------------------------------------------------------------


def _respond(request: ServerRequest, answer: Answer, extra: bytes = b"") -> None:
    phrase = HTTPStatus(answer.status).phrase
    request.respond(answer.status, phrase, date_line() + _JSON_HEAD + extra, answer.encode())


async def _read_limited(request: ServerRequest, limit: int) -> bytes | None:
    length = request.content_length
    if length is not None and length > limit:
        return None
    request.send_continue()
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def handles(raw_path: str) -> bool:
    """Whether the proxy answers ``raw_path`` here instead of forwarding it."""
    path = raw_path.partition("?")[0]
    return path == SIGN_PATH or path == WELL_KNOWN_PATH


async def handle_proxied(policy: PolicyServer, request: ServerRequest) -> None:
    """Answer a request for which ``handles(request.raw_path)`` is true."""
    path = request.raw_path.partition("?")[0]
    method = request.method
    if path == WELL_KNOWN_PATH:
        if method not in ("GET", "HEAD"):
            return request.respond_json(405, "M_UNRECOGNIZED", "Use GET")
        return _respond(request, policy.well_known, _CORS_HEAD)
    if method != "POST":
        return request.respond_json(405, "M_UNRECOGNIZED", "Use POST")
    encoding = request.header(b"content-encoding")
    if encoding is not None and encoding.lower() != "identity":
        return request.respond_json(415, "M_BAD_JSON", "Compressed bodies are not read")
    body = await _read_limited(request, policy.config.max_body)
    if body is None:
        return _respond(request, TOO_LARGE)
    answer = await policy.sign(method, request.raw_path, request.header_all(b"authorization"), body)
    _respond(request, answer)


# ---- the dmz_api app ---------------------------------------------------------------------


def _json(answer: Answer, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(answer.body, status=answer.status, headers=headers)


async def well_known(request: web.Request) -> web.Response:
    """``GET /.well-known/matrix/policy_server`` → ``200 {"public_keys": {"ed25519": ...}}``."""
    policy = request.app.get(POLICY_SERVER)
    return _json(policy.well_known if policy is not None else NOT_A_POLICY_SERVER, _CORS)


async def sign(request: web.Request) -> web.Response:
    """``POST /_matrix/policy/v1/sign`` with a PDU → our signature, or a refusal."""
    policy = request.app.get(POLICY_SERVER)
    if policy is None:
        return _json(NOT_A_POLICY_SERVER)
    limit = policy.config.max_body
    if request.content_length is not None and request.content_length > limit:
        return _json(TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return _json(TOO_LARGE)
        chunks.append(chunk)
    body = b"".join(chunks)
    answer = await policy.sign(
        request.method, request.raw_path, request.headers.getall("Authorization", []), body
    )
    return _json(answer)


async def policy_server_ctx(app: web.Application) -> AsyncIterator[None]:
    """Build the policy server when ``gateway.policy_server`` is configured (before the proxy)."""
    gateway = app[GATEWAY]
    config = gateway.config.policy_server
    if config is None:
        yield
        return
    key = load_or_create(config.key_file)
    keys: ServerKeys | None = None
    verifier = None
    if config.verify_origin:
        assert config.key_server is not None
        ca_file = (
            gateway.config.upstream_ca_file
            if config.key_server == gateway.config.upstream
            else None
        )
        keys = ServerKeys(
            config.key_server,
            ca_file=ca_file,
            timeout=gateway.config.timeouts.connect + _KEY_FETCH_EXTRA,
        )
        await keys.start()
        verifier = RequestVerifier(gateway.config.server_name.lower(), keys)
    app[POLICY_SERVER] = PolicyServer(gateway, config, key, verifier)
    # Protected rooms name this server and key in their m.room.policy state.
    gateway.rooms.policy_server = PolicyServerRef(gateway.config.server_name, key.public_key)
    log.info("Policy server for %s, public key %s", gateway.config.server_name, key.public_key)
    try:
        yield
    finally:
        gateway.rooms.policy_server = None
        if keys is not None:
            await keys.close()


def add_routes(app: web.Application) -> None:
    app.router.add_post(SIGN_PATH, sign, name="gateway.policy.sign")
    app.router.add_get(WELL_KNOWN_PATH, well_known, name="gateway.policy.well_known")
