"""Classifying a Matrix HTTP request: federation or client, origin, room, event types.

Used by every HTTP enforcement point (the reverse proxy and ``GET /v1/authz``)::

    path_info = classify(request.method, request.raw_path)
    body = await request.read() if path_info.inspect_body else None  # createRoom only
    info = request_info(
        request.method, request.raw_path, request.headers.getall("Authorization", ()),
        user_agent=request.headers.get("User-Agent", ""),
        ip=client_ip(request.remote, request.headers.getall("X-Forwarded-For", ()),
                     request.headers.get("X-Real-IP"), config.trusted_proxies),  # authz.py
        body=body, source=Source.PROXY, path_info=path_info,
    )
    decision = app[GATEWAY].decide(info)  # GATEWAY: gateway/service.py

The classifier is deliberately lenient: it recognises every spelling a homeserver might
accept (``r0``, ``v3``, ``unstable[/namespace]``, ``api/v1``, any case, a trailing slash,
percent-encoding, ``POST send`` without a transaction id), so a request is never judged as
something harmless that a homeserver would route as an event. Paths are read as Twisted
and Synapse read them: the path ends at the first ``?`` (a raw ``#`` is part of it), is
split on ``/`` first and each segment is then percent-decoded; a path with an encoded slash
is classified both ways and the event types are merged. Dot segments and empty segments
(``//``), which Synapse's servlets would read one place off, make a request malformed.
Server names in ``X-Matrix`` headers are read by ``server_names``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from . import server_names
from .actions import body_actions, body_wanted, path_actions
from .model import RequestClass, RequestInfo, Source

FEDERATION = RequestClass.FEDERATION
CLIENT = RequestClass.CLIENT

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VERSION = re.compile(r"^(v\d{1,2}|r0)$")
_WORD = re.compile(r"^[a-z][a-z_]{0,31}$")
_CAMEL_WORDS = frozenset(
    {"createRoom", "sendToDevice", "publicRooms", "joined_rooms", "thirdparty", "getConfig"}
)
_MEMBERSHIP_ACTIONS = frozenset({"invite", "join", "leave", "kick", "ban", "unban", "knock"})
_FED_MEMBER = frozenset(
    {
        "make_join",
        "make_leave",
        "make_knock",
        "send_join",
        "send_leave",
        "send_knock",
        "invite",
        "exchange_third_party_invite",
    }
)
_FED_ROOM = _FED_MEMBER | frozenset(
    {
        "state",
        "state_ids",
        "backfill",
        "get_missing_events",
        "event_auth",
        "query_auth",
        "timestamp_to_event",
        "hierarchy",
    }
)
_MEMBER = ("m.room.member",)


@dataclass(frozen=True, slots=True)
class PathInfo:
    """What the path and method alone say about a request.

    ``template`` is the path without query string, ids replaced by placeholders
    (``/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}``). ``inspect_body`` is
    true for ``createRoom``: its event types are in the JSON body
    (``create_room_event_types``). ``public`` marks federation endpoints that are unsigned by
    design (server keys, ``.well-known/matrix/server``, ``federation/v1/version``).
    """

    request_class: RequestClass
    endpoint: str
    template: str
    room: str | None = None
    event_types: tuple[str, ...] = ()
    public: bool = False
    inspect_body: bool = False
    malformed: str | None = None


@lru_cache(maxsize=4096)
def _word(segment: str) -> str:
    if _WORD.match(segment) or segment in _CAMEL_WORDS or _VERSION.match(segment):
        return segment
    return "{}"


def _template(parts: Iterable[str]) -> str:
    return "/" + "/".join(parts)


def _split(path: str, *, decode_first: bool = False) -> tuple[list[str], str | None]:
    if decode_first:
        path = unquote(path, errors="replace")
    elif "%" not in path and "/." not in path and path[:1] == "/":
        return [segment for segment in path.split("/") if segment], None
    segments: list[str] = []
    malformed = None
    for raw in path.split("/"):
        if not raw:
            continue
        segment = unquote(raw, errors="replace") if "%" in raw and not decode_first else raw
        if segment in (".", ".."):
            malformed = "dot segments in the request path"
        segments.append(segment)
    return segments, malformed


def _skip_version(segments: list[str], i: int) -> int | None:
    """Index of the first resource segment after an API version, or None."""
    if i >= len(segments):
        return None
    word = segments[i].lower()
    if word == "api" and i + 1 < len(segments) and segments[i + 1].lower() == "v1":
        return i + 2
    if _VERSION.match(word):
        return i + 1
    if word == "unstable":
        # Unstable endpoints may sit under an MSC namespace (unstable/org.matrix.msc3575/...).
        if i + 1 < len(segments) and "." in segments[i + 1]:
            return i + 2
        return i + 1
    return None


def _rest(segments: list[str], start: int) -> list[str]:
    return [_word(s) for s in segments[start:]]


def _client(method: str, segments: list[str]) -> PathInfo:
    # No known version: judge the rest as if it had one (no server routes it, but be sure).
    i = _skip_version(segments, 2) or 2
    prefix = ["_matrix", "client", *(_word(s) for s in segments[2:i])]
    n = len(segments)
    if i >= n:
        return PathInfo(CLIENT, "client.unknown", _template(prefix))
    resource = segments[i].lower()
    write = method not in _READ_METHODS
    if resource == "rooms" and i + 1 < n:
        room = segments[i + 1]
        parts = [*prefix, "rooms", "{roomId}"]
        action = segments[i + 2].lower() if i + 2 < n else ""
        event_type = segments[i + 3] if i + 3 < n else ""
        if action == "send":
            parts += ["send", "{eventType}"] + (["{txnId}"] if i + 4 < n else [])
            types = (event_type,) if write and event_type else ()
            return PathInfo(CLIENT, "client.send", _template(parts), room, types)
        if action == "state":
            parts += ["state", "{eventType}"] + (["{stateKey}"] if i + 4 < n else [])
            types = (event_type,) if write and event_type else ()
            return PathInfo(CLIENT, "client.state", _template(parts), room, types)
        if action == "redact":
            parts += ["redact", "{eventId}"] + (["{txnId}"] if i + 4 < n else [])
            types = ("m.room.redaction",) if write else ()
            return PathInfo(CLIENT, "client.redact", _template(parts), room, types)
        if action in _MEMBERSHIP_ACTIONS:
            parts.append(action)
            types = _MEMBER if write else ()
            return PathInfo(CLIENT, f"client.{action}", _template(parts), room, types)
        if action == "upgrade":
            parts.append("upgrade")
            types = ("m.room.tombstone",) if write else ()
            return PathInfo(CLIENT, "client.upgrade", _template(parts), room, types)
        endpoint = f"client.rooms.{_word(action)}" if action else "client.rooms"
        return PathInfo(CLIENT, endpoint, _template(parts + _rest(segments, i + 2)), room)
    if resource == "createroom":
        return PathInfo(
            CLIENT, "client.createRoom", _template([*prefix, "createRoom"]), inspect_body=write
        )
    if resource in ("join", "knock") and i + 1 < n:
        room_or_alias = segments[i + 1]
        parts = [*prefix, resource, "{roomIdOrAlias}"]
        types = _MEMBER if write else ()
        return PathInfo(CLIENT, f"client.{resource}", _template(parts), room_or_alias, types)
    if resource == "sendtodevice" and i + 1 < n:
        parts = [*prefix, "sendToDevice", "{eventType}"] + (["{txnId}"] if i + 2 < n else [])
        types = (segments[i + 1],) if write else ()
        return PathInfo(CLIENT, "client.sendToDevice", _template(parts), None, types)
    endpoint = f"client.{_word(segments[i])}"
    # Other endpoints name a room too (room account data and tags, key backup, directory
    # visibility, room summary): the room is the segment that is a room ID.
    named = next((s for s in segments[i + 1 :] if s.startswith("!")), None)
    return PathInfo(CLIENT, endpoint, _template(prefix + _rest(segments, i)), named)


def _federation(segments: list[str]) -> PathInfo:
    i = _skip_version(segments, 2) or 2
    prefix = ["_matrix", "federation", *(_word(s) for s in segments[2:i])]
    if i >= len(segments):
        return PathInfo(FEDERATION, "federation.unknown", _template(prefix))
    resource = segments[i].lower()
    n = len(segments)
    if resource == "send":
        return PathInfo(FEDERATION, "federation.send", _template([*prefix, "send", "{txnId}"]))
    if resource in _FED_ROOM and i + 1 < n:
        parts = [*prefix, resource, "{roomId}"] + ["{}"] * (n - i - 2)
        types = _MEMBER if resource in _FED_MEMBER else ()
        return PathInfo(
            FEDERATION, f"federation.{resource}", _template(parts), segments[i + 1], types
        )
    if resource == "version":
        return PathInfo(
            FEDERATION, "federation.version", _template([*prefix, "version"]), public=True
        )
    if resource == "3pid" and i + 1 < n and segments[i + 1].lower() == "onbind":
        # Unsigned by design (identity servers call it); only a rule can let it through.
        parts = [*prefix, "3pid", "onbind"]
        return PathInfo(FEDERATION, "federation.3pid_onbind", _template(parts))
    if resource == "openid":
        # Authenticated by an OpenID token, not by a server signature.
        parts = prefix + _rest(segments, i)
        return PathInfo(FEDERATION, "federation.openid", _template(parts), public=True)
    return PathInfo(
        FEDERATION, f"federation.{_word(segments[i])}", _template(prefix + _rest(segments, i))
    )


def _media(segments: list[str]) -> PathInfo:
    parts = ["_matrix", "media"]
    if len(segments) > 2:
        parts.append(_word(segments[2]))
    if len(segments) > 3:
        parts.append(_word(segments[3]))
    parts += ["{}"] * max(0, len(segments) - 4)
    return PathInfo(CLIENT, "client.media", _template(parts))


def _classify_segments(method: str, segments: list[str]) -> PathInfo:
    n = len(segments)
    first = segments[0].lower() if n else ""
    second = segments[1].lower() if n > 1 else ""
    if first == "_matrix":
        if second == "client":
            return _client(method, segments)
        if second == "federation":
            return _federation(segments)
        if second == "key":
            parts = ["_matrix", "key", *_rest(segments, 2)[:2]]
            return PathInfo(FEDERATION, "federation.keys", _template(parts), public=True)
        if second == "media":
            return _media(segments)
        if second == "policy":
            # MSC4284 policy servers: signed by the asking server like any federation call.
            i = _skip_version(segments, 2) or 2
            endpoint = f"policy.{_word(segments[i].lower())}" if i < n else "policy.unknown"
            parts = ["_matrix", "policy", *_rest(segments, 2)]
            return PathInfo(FEDERATION, endpoint, _template(parts))
        return PathInfo(CLIENT, "matrix.other", _template(["_matrix", *_rest(segments, 1)]))
    if first == ".well-known" and second == "matrix":
        name = segments[2].lower() if n > 2 else ""
        template = _template([".well-known", "matrix", _word(name)])
        if name == "server":
            return PathInfo(FEDERATION, "well_known.server", template, public=True)
        return PathInfo(CLIENT, f"well_known.{_word(name)}", template)
    return PathInfo(CLIENT, "other", _template(_rest(segments, 0)))


def classify(method: str, raw_path: str) -> PathInfo:
    """Classify a request from its method and raw (still percent-encoded) path.

    ``raw_path`` may carry a query string; it is ignored. Pure and allocation-light: the
    proxy calls it once per request.
    """
    method = method.upper()
    # As Twisted: the path ends at the first "?"; a raw "#" is part of the path.
    path = raw_path.partition("?")[0]
    if not path.startswith("/") and "://" in path[:16]:
        # An absolute-form request target (``PUT http://host/_matrix/...``): keep the path.
        path = "/" + path.partition("://")[2].partition("/")[2]
    segments, malformed = _split(path)
    info = _classify_segments(method, segments)
    if "%2f" in path or "%2F" in path:
        # Some servers decode the whole path before routing: judge that reading as well.
        alt_segments, alt_malformed = _split(path, decode_first=True)
        alt = _classify_segments(method, alt_segments)
        extra = tuple(t for t in alt.event_types if t not in info.event_types)
        if extra or alt.inspect_body or alt_malformed:
            info = PathInfo(
                info.request_class,
                info.endpoint,
                info.template,
                info.room or alt.room,
                info.event_types + extra,
                info.public and alt.public,
                info.inspect_body or alt.inspect_body,
                info.malformed or alt_malformed,
            )
    if not malformed and "//" in path:
        # Synapse's servlets match one segment per group, empty ones included: with the
        # empty segments dropped, the rest would be read one place off.
        malformed = "empty segments (//) in the request path"
    if malformed and not info.malformed:
        info = PathInfo(
            info.request_class,
            info.endpoint,
            info.template,
            info.room,
            info.event_types,
            info.public,
            info.inspect_body,
            malformed,
        )
    return info


def parse_x_matrix(header: str) -> str | None:
    """The canonical origin server of one ``X-Matrix`` Authorization header.

    None when the header is not X-Matrix, cannot be parsed or names no valid server
    (``server_names`` reads it as Synapse does).
    """
    raw = server_names.parse_header(header.strip())
    return None if raw is None else server_names.canonical(raw)


def x_matrix_origin(authorization: Iterable[str]) -> tuple[str | None, str | None]:
    """(canonical origin, problem) from every Authorization header of a request."""
    found = server_names.x_matrix(authorization)
    return found.origin, found.problem


def create_room_event_types(body: bytes | str | Mapping[str, Any] | None) -> tuple[str, ...]:
    """The event types a ``createRoom`` body asks the homeserver to create.

    ``initial_state`` types, and the events implied by ``name``, ``topic``, ``invite``,
    ``room_alias_name``, ``power_level_content_override`` and ``invite_3pid``. Unparseable
    bodies give () (the homeserver refuses them too).
    """
    if body is None:
        return ()
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except ValueError:
            return ()
    if not isinstance(data, Mapping):
        return ()
    types: dict[str, None] = {}
    initial_state = data.get("initial_state")
    if isinstance(initial_state, list):
        for event in initial_state:
            if isinstance(event, Mapping) and isinstance(event.get("type"), str):
                types[event["type"]] = None
    implied = {
        "name": "m.room.name",
        "topic": "m.room.topic",
        "invite": "m.room.member",
        "room_alias_name": "m.room.canonical_alias",
        "power_level_content_override": "m.room.power_levels",
        "invite_3pid": "m.room.third_party_invite",
    }
    for key, event_type in implied.items():
        if data.get(key):
            types[event_type] = None
    return tuple(types)


def _parsed(body: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(body, bytes | str):
        try:
            return json.loads(body)
        except ValueError:
            return None
    return body


def request_info(
    method: str,
    raw_path: str,
    authorization: Iterable[str] = (),
    *,
    user_agent: str | None = "",
    ip: str | None = None,
    body: bytes | str | Mapping[str, Any] | None = None,
    source: Source = Source.PROXY,
    path_info: PathInfo | None = None,
) -> RequestInfo:
    """The ``RequestInfo`` of an HTTP request, ready for ``GatewayService.decide``.

    ``authorization`` is every Authorization header value (the origin is read only on
    federation paths). Pass ``body`` when ``classify(...).inspect_body`` or
    ``actions.body_wanted`` is true (it then adds the event types and actions it asks for), and
    ``path_info`` when the caller has already classified the path.
    """
    info = path_info or classify(method, raw_path)
    origin = origin_raw = problem = None
    if info.request_class is FEDERATION:
        found = server_names.x_matrix(authorization)
        origin, origin_raw, problem = found.origin, found.raw, found.problem
    event_types = info.event_types
    if info.inspect_body and body is not None:
        extra = tuple(t for t in create_room_event_types(body) if t not in event_types)
        event_types += extra
    method = method.upper()
    actions = path_actions(method, info.endpoint, info.template)
    if body is not None and body_wanted(method, info.endpoint, info.template):
        actions += body_actions(info.endpoint, _parsed(body))
    return RequestInfo(
        request_class=info.request_class,
        method=method,
        path=info.template,
        endpoint=info.endpoint,
        origin=origin,
        origin_raw=origin_raw,
        event_types=event_types,
        room=info.room,
        actions=actions,
        user_agent=user_agent,
        ip=ip,
        public=info.public,
        malformed=info.malformed or problem,
        source=source,
    )
