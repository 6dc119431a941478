"""The HTTP callback API of the ``synapse-http-antispam`` Synapse module (0.5).

Synapse, with the module loaded, asks ``POST {base_url}/{callback}`` with a JSON body for
each event and membership action; this is where events inside federation transactions
(which the proxy never opens) meet the rules. ``base_url`` is ``http://GATEWAY/v1/antispam``.

* allow: ``200 {}``; deny: ``403 {"errcode": "M_FORBIDDEN", "error": reason}`` (Synapse
  passes errcode and error to the client); while failing closed: ``503`` with the same body.
* Each callback is turned into a ``RequestInfo``: a sender or user on ``gateway.server_name``
  makes a *client* request by that user, any other server a *federation* request from that
  server. ``user_may_invite`` of a remote invitee sets ``origin`` to the invitee's server
  (outbound federation is subject to the server rules as well).
* Callers are authenticated like ``/v1/authz``: an allowed address and, when
  ``gateway.authz.secret`` is set, ``Authorization: Bearer <secret>`` (the module's
  ``authorization`` option).

Callbacks the rules have nothing to say about (``check_username_for_spam``) answer 200 without
a decision; an unknown callback answers 404 ``M_UNRECOGNIZED``, which the module turns into a
refusal: list ``enabled_callbacks`` explicitly in the module config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ...errors import json_error
from ..policy import server_names
from ..policy.actions import event_actions
from ..policy.model import RequestClass, RequestInfo, Source
from ..service import GATEWAY
from .authz import caller_problem

PREFIX = "/v1/antispam"
_MEMBER = ("m.room.member",)


class BadCallback(ValueError):
    pass


def _str(body: Mapping[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadCallback(f"{key} must be a non-empty string")
    return value


def server_of(user_id: str) -> str:
    """The canonical server of a user ID (``server_names``), or its raw server part
    lower-cased when that is not a server name (such a caller is refused as malformed)."""
    raw = server_names.server_of_user(user_id)
    return server_names.canonical(raw) or raw.lower()


def _bad_server(user_id: str) -> str | None:
    raw = server_names.server_of_user(user_id)
    return None if server_names.canonical(raw) is not None else "the user's server name is invalid"


class CallbackMapper:
    """Turns one callback body into the RequestInfo the rules judge."""

    def __init__(self, server_name: str) -> None:
        self.exact_name = server_name
        self.server_name = server_names.canonical(server_name) or server_name.lower()

    def _by(self, callback: str, user: str, **fields: Any) -> RequestInfo:
        # Local as Synapse's is_mine sees it: the exact server name. Any other spelling is
        # a remote server, judged by its canonical name.
        raw = server_names.server_of_user(user)
        local = raw == self.exact_name
        server = server_of(user)
        if not local and "malformed" not in fields:
            fields["malformed"] = _bad_server(user)
        return RequestInfo(
            RequestClass.CLIENT if local else RequestClass.FEDERATION,
            "POST",
            f"{PREFIX}/{callback}",
            endpoint=f"antispam.{callback}",
            origin=None if local else server,
            origin_raw=None if local or raw == server else raw,
            user=user,
            source=Source.ANTISPAM,
            **fields,
        )

    def check_event_for_spam(self, body: Mapping[str, Any]) -> RequestInfo:
        event = body.get("event")
        if not isinstance(event, Mapping):
            raise BadCallback("event must be an object")
        sender = _str(event, "sender")
        event_type = _str(event, "type")
        assert sender is not None and event_type is not None
        event_id = _str(event, "event_id", required=False)
        return self._by(
            "check_event_for_spam",
            sender,
            event_types=(event_type,),
            room=_str(event, "room_id", required=False),
            actions=event_actions(event),
            event_id=event_id[:255] if event_id is not None else None,
        )

    def federated_user_may_invite(self, body: Mapping[str, Any]) -> RequestInfo:
        event = body.get("event")
        if not isinstance(event, Mapping):
            raise BadCallback("event must be an object")
        sender = _str(event, "sender")
        assert sender is not None
        return self._by(
            "federated_user_may_invite",
            sender,
            event_types=_MEMBER,
            room=_str(event, "room_id", required=False),
        )

    def user_may_invite(self, body: Mapping[str, Any]) -> RequestInfo:
        inviter, invitee = _str(body, "inviter"), _str(body, "invitee")
        assert inviter is not None and invitee is not None
        info = self._by("user_may_invite", inviter, event_types=_MEMBER, room=_str(body, "room_id"))
        invitee_server = server_names.server_of_user(invitee)
        if info.request_class is RequestClass.CLIENT and invitee_server != self.exact_name:
            info.origin = server_of(invitee)
            info.origin_raw = invitee_server if invitee_server != info.origin else None
            info.malformed = info.malformed or _bad_server(invitee)
        return info

    def user_may_join_room(self, body: Mapping[str, Any]) -> RequestInfo:
        user = _str(body, "user")
        assert user is not None
        return self._by("user_may_join_room", user, event_types=_MEMBER, room=_str(body, "room"))

    def accept_make_join(self, body: Mapping[str, Any]) -> RequestInfo:
        user = _str(body, "user")
        assert user is not None
        return self._by("accept_make_join", user, event_types=_MEMBER, room=_str(body, "room"))

    def user_may_send_3pid_invite(self, body: Mapping[str, Any]) -> RequestInfo:
        inviter = _str(body, "inviter")
        assert inviter is not None
        return self._by(
            "user_may_send_3pid_invite",
            inviter,
            event_types=("m.room.third_party_invite",),
            room=_str(body, "room_id"),
        )

    def user_may_create_room(self, body: Mapping[str, Any]) -> RequestInfo:
        user = _str(body, "user_id")
        assert user is not None
        return self._by("user_may_create_room", user)

    def user_may_create_room_alias(self, body: Mapping[str, Any]) -> RequestInfo:
        user = _str(body, "user_id")
        assert user is not None
        return self._by("user_may_create_room_alias", user)

    def user_may_publish_room(self, body: Mapping[str, Any]) -> RequestInfo:
        user = _str(body, "user_id")
        assert user is not None
        return self._by("user_may_publish_room", user, room=_str(body, "room_id"))

    def check_login_for_spam(self, body: Mapping[str, Any]) -> RequestInfo:
        user = _str(body, "user_id")
        assert user is not None
        user_agent, ip = None, None
        pairs = body.get("request_info")
        if isinstance(pairs, list) and pairs:
            last = pairs[-1]
            if isinstance(last, list | tuple) and len(last) == 2:
                user_agent = last[0] if isinstance(last[0], str) else ""
                ip = last[1] if isinstance(last[1], str) else None
        return self._by("check_login_for_spam", user, user_agent=user_agent, ip=ip)

    def mapper(self, callback: str) -> Callable[[Mapping[str, Any]], RequestInfo] | None:
        if callback in _JUDGED:
            method: Callable[[Mapping[str, Any]], RequestInfo] = getattr(self, callback)
            return method
        return None


_JUDGED = frozenset(
    {
        "check_event_for_spam",
        "federated_user_may_invite",
        "user_may_invite",
        "user_may_join_room",
        "accept_make_join",
        "user_may_send_3pid_invite",
        "user_may_create_room",
        "user_may_create_room_alias",
        "user_may_publish_room",
        "check_login_for_spam",
    }
)
# Callbacks outside the rules' concern: always allowed, not recorded.
_NEUTRAL = frozenset({"check_username_for_spam"})
CALLBACKS = tuple(sorted(_JUDGED | _NEUTRAL))

MAPPER: web.AppKey[CallbackMapper] = web.AppKey("gateway_antispam_mapper", CallbackMapper)


def _bearer(request: web.Request) -> str | None:
    kind, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if kind.lower() == "bearer" and value.strip() else None


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def callback(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    problem = caller_problem(request.remote, _bearer(request), gateway.config.authz)
    if problem is not None:
        return json_error(403, "M_FORBIDDEN", f"Refused by the gateway: {problem}")
    name = request.match_info["callback"]
    body = await _body(request)
    if body is None:
        return json_error(400, "M_BAD_JSON", "The callback body must be a JSON object")
    if name == "ping":
        return web.json_response({"id": body.get("id"), "status": "ok"})
    if name in _NEUTRAL:
        return web.json_response({})
    mapper = request.app[MAPPER].mapper(name)
    if mapper is None:
        return json_error(404, "M_UNRECOGNIZED", f"Unknown antispam callback {name[:64]!r}")
    try:
        info = mapper(body)
    except BadCallback as e:
        return json_error(400, "M_BAD_JSON", f"{name}: {e}")
    decision = gateway.decide(info)
    if decision.allowed:
        return web.json_response({})
    return json_error(decision.status, "M_FORBIDDEN", decision.reason)


def add_routes(app: web.Application, server_name: str) -> None:
    app[MAPPER] = CallbackMapper(server_name)
    app.router.add_post(PREFIX + "/{callback}", callback, name="gateway.antispam")
