"""Classifying Matrix requests: every path spelling a homeserver accepts (docs/rules.md §1)."""

from __future__ import annotations

import pytest

from dmz_api.gateway.policy.matrix_paths import (
    classify,
    create_room_event_types,
    parse_x_matrix,
    request_info,
    x_matrix_origin,
)
from dmz_api.gateway.policy.model import RequestClass, Source

ENC = "m.room.encryption"
ROOM = "!abc:corp.example"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/{ENC}/txn1"),
        ("PUT", f"/_matrix/client/r0/rooms/{ROOM}/send/{ENC}/txn1"),
        ("PUT", f"/_matrix/client/unstable/rooms/{ROOM}/send/{ENC}/txn1"),
        ("PUT", f"/_matrix/client/api/v1/rooms/{ROOM}/send/{ENC}/txn1"),
        ("PUT", f"/_matrix/client/v1/rooms/{ROOM}/send/{ENC}/txn1"),
        ("PUT", f"/_matrix/client/unstable/org.matrix.msc9999/rooms/{ROOM}/send/{ENC}/t"),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/{ENC}/txn1/"),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/{ENC}/txn1?ts=1&user_id=x"),
        ("POST", f"/_matrix/client/v3/rooms/{ROOM}/send/{ENC}"),
        ("POST", f"/_matrix/client/v3/rooms/{ROOM}/send/{ENC}/"),
        ("PUT", f"/_MATRIX/Client/V3/Rooms/{ROOM}/SEND/{ENC}/t"),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/m%2Eroom%2Eencryption/t"),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/m%2eroom%2eencryption/t"),
        ("PUT", f"/_matrix/client/v3/rooms/%21abc%3Acorp.example/%73end/{ENC}/t"),
        ("put", f"/_matrix/client/v3/rooms/{ROOM}/send/{ENC}/t"),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/state/{ENC}"),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/state/{ENC}/"),
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/state/{ENC}/some%2Fkey"),
        ("PUT", f"/_matrix/client/r0/rooms/{ROOM}/state/m%2Eroom%2Eencryption/"),
        ("POST", f"/_matrix/client/v3/rooms/{ROOM}/state/{ENC}"),
        ("PUT", f"/_matrix/client/v3/sendToDevice/{ENC}/t1"),
    ],
)
def test_event_type_found_in_every_spelling(method: str, path: str) -> None:
    info = classify(method, path)
    assert info.request_class is RequestClass.CLIENT
    assert ENC in info.event_types
    assert "?" not in info.template and "txn1" not in info.template
    assert info.malformed is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/redact/$event/txn"),
        ("POST", f"/_matrix/client/r0/rooms/{ROOM}/redact/$event"),
        ("PUT", f"/_matrix/client/unstable/rooms/{ROOM}/redact/%24event/txn/"),
        ("PUT", f"/_matrix/client/api/v1/rooms/{ROOM}/redact/$event/txn"),
    ],
)
def test_redactions(method: str, path: str) -> None:
    info = classify(method, path)
    assert info.event_types == ("m.room.redaction",)
    assert info.room == ROOM
    assert info.template.endswith(
        "/rooms/{roomId}/redact/{eventId}" + ("" if method == "POST" else "/{txnId}")
    )


@pytest.mark.parametrize(
    "path",
    [
        f"/_matrix/client/v3/rooms/{ROOM}/state/{ENC}",
        f"/_matrix/client/v3/rooms/{ROOM}/state/{ENC}/",
        f"/_matrix/client/v3/rooms/{ROOM}/send/{ENC}/t",
        f"/_matrix/client/v3/rooms/{ROOM}/redact/$e/t",
    ],
)
def test_reads_carry_no_event_type(path: str) -> None:
    for method in ("GET", "HEAD", "OPTIONS"):
        assert classify(method, path).event_types == ()


def test_send_template_room_and_endpoint() -> None:
    info = classify("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/m123.4?x=1")
    assert info.endpoint == "client.send"
    assert info.room == ROOM
    assert info.event_types == ("m.room.message",)
    assert info.template == "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"
    assert classify("POST", f"/_matrix/client/v3/rooms/{ROOM}/send/x").template == (
        "/_matrix/client/v3/rooms/{roomId}/send/{eventType}"
    )


def test_room_ids_are_percent_decoded() -> None:
    info = classify("PUT", "/_matrix/client/v3/rooms/%21abc%3Acorp.example/send/m.room.message/1")
    assert info.room == ROOM


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("POST", f"/_matrix/client/v3/rooms/{ROOM}/join", "client.join"),
        ("POST", f"/_matrix/client/v3/rooms/{ROOM}/invite", "client.invite"),
        ("POST", f"/_matrix/client/r0/rooms/{ROOM}/kick", "client.kick"),
        ("POST", "/_matrix/client/v3/join/%23alias%3Acorp.example", "client.join"),
        ("POST", f"/_matrix/client/v3/knock/{ROOM}", "client.knock"),
    ],
)
def test_membership(method: str, path: str, endpoint: str) -> None:
    info = classify(method, path)
    assert (info.endpoint, info.event_types) == (endpoint, ("m.room.member",))
    assert info.room is not None


def test_create_room_needs_body() -> None:
    info = classify("POST", "/_matrix/client/v3/createRoom")
    assert info.inspect_body and info.event_types == ()
    assert classify("POST", "/_matrix/client/r0/createroom/").inspect_body
    assert classify("POST", "/_matrix/client/unstable/createRoom").inspect_body
    assert not classify("GET", "/_matrix/client/v3/createRoom").inspect_body
    body = {
        "initial_state": [
            {"type": ENC, "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {"type": "m.room.history_visibility", "content": {}},
            "junk",
        ],
        "name": "Room",
        "invite": ["@a:b"],
    }
    types = create_room_event_types(body)
    assert types[:2] == (ENC, "m.room.history_visibility")
    assert {"m.room.name", "m.room.member"} <= set(types)
    import json

    assert create_room_event_types(json.dumps(body).encode()) == types
    assert create_room_event_types(b"{not json") == ()
    assert create_room_event_types(b"[1, 2]") == ()
    assert create_room_event_types(None) == ()
    info = request_info("POST", "/_matrix/client/v3/createRoom", body=json.dumps(body).encode())
    assert ENC in info.event_types and info.path == "/_matrix/client/v3/createRoom"


@pytest.mark.parametrize(
    ("method", "path", "endpoint", "room", "types"),
    [
        ("PUT", "/_matrix/federation/v1/send/1700000000", "federation.send", None, ()),
        (
            "GET",
            f"/_matrix/federation/v1/make_join/{ROOM}/@p:partner.example",
            "federation.make_join",
            ROOM,
            ("m.room.member",),
        ),
        (
            "PUT",
            f"/_matrix/federation/v2/send_join/{ROOM}/$ev",
            "federation.send_join",
            ROOM,
            ("m.room.member",),
        ),
        (
            "PUT",
            f"/_matrix/federation/v1/send_join/{ROOM}/$ev",
            "federation.send_join",
            ROOM,
            ("m.room.member",),
        ),
        (
            "PUT",
            f"/_matrix/federation/v2/invite/{ROOM}/$ev",
            "federation.invite",
            ROOM,
            ("m.room.member",),
        ),
        (
            "PUT",
            f"/_matrix/federation/v1/exchange_third_party_invite/{ROOM}",
            "federation.exchange_third_party_invite",
            ROOM,
            ("m.room.member",),
        ),
        (
            "GET",
            f"/_matrix/federation/v1/state_ids/{ROOM}?event_id=$e",
            "federation.state_ids",
            ROOM,
            (),
        ),
        (
            "GET",
            f"/_matrix/federation/v1/backfill/{ROOM}?v=$e&limit=10",
            "federation.backfill",
            ROOM,
            (),
        ),
        (
            "GET",
            f"/_matrix/federation/unstable/org.matrix.msc1234/hierarchy/{ROOM}",
            "federation.hierarchy",
            ROOM,
            (),
        ),
        (
            "GET",
            "/_matrix/federation/v1/query/profile?user_id=@a:corp.example",
            "federation.query",
            None,
            (),
        ),
        ("GET", "/_matrix/federation/v1/event/$abc", "federation.event", None, ()),
    ],
)
def test_federation(
    method: str, path: str, endpoint: str, room: str | None, types: tuple[str, ...]
) -> None:
    info = classify(method, path)
    assert info.request_class is RequestClass.FEDERATION
    assert (info.endpoint, info.room, info.event_types, info.public) == (
        endpoint,
        room,
        types,
        False,
    )
    assert "$" not in info.template and "!" not in info.template and "?" not in info.template


@pytest.mark.parametrize(
    ("path", "request_class", "public"),
    [
        ("/_matrix/key/v2/server", RequestClass.FEDERATION, True),
        ("/_matrix/key/v2/server/ed25519:abc", RequestClass.FEDERATION, True),
        ("/_matrix/key/v2/query/partner.example", RequestClass.FEDERATION, True),
        ("/.well-known/matrix/server", RequestClass.FEDERATION, True),
        ("/_matrix/federation/v1/version", RequestClass.FEDERATION, True),
        ("/_matrix/federation/v1/openid/userinfo?access_token=x", RequestClass.FEDERATION, True),
        ("/_matrix/federation/v1/user/devices/@a:b", RequestClass.FEDERATION, False),
        ("/.well-known/matrix/client", RequestClass.CLIENT, False),
        ("/.well-known/matrix/support", RequestClass.CLIENT, False),
        ("/_matrix/media/v3/download/corp.example/AbCdEf", RequestClass.CLIENT, False),
        ("/_matrix/client/v1/media/download/corp.example/AbCdEf", RequestClass.CLIENT, False),
        ("/_matrix/client/versions", RequestClass.CLIENT, False),
        ("/_matrix/client/v3/sync?since=s1&timeout=30000", RequestClass.CLIENT, False),
        ("/_synapse/admin/v1/users", RequestClass.CLIENT, False),
        ("/", RequestClass.CLIENT, False),
    ],
)
def test_class_and_public(path: str, request_class: RequestClass, public: bool) -> None:
    info = classify("GET", path)
    assert (info.request_class, info.public) == (request_class, public)


def test_templates_hide_ids() -> None:
    assert classify("GET", "/_matrix/media/v3/download/corp.example/AbCdEf").template == (
        "/_matrix/media/v3/download/{}/{}"
    )
    assert classify("GET", "/_matrix/client/v3/sync?since=s1").template == "/_matrix/client/v3/sync"
    assert classify("GET", f"/_matrix/client/v3/rooms/{ROOM}/messages?from=x").template == (
        "/_matrix/client/v3/rooms/{roomId}/messages"
    )
    assert classify(
        "GET", "/_matrix/client/v3/profile/@alice:corp.example/displayname"
    ).template == ("/_matrix/client/v3/profile/{}/displayname")


@pytest.mark.parametrize(
    "path",
    [
        f"/_matrix/client/v3/rooms/{ROOM}/send/../state/{ENC}",
        f"/_matrix/client/v3/rooms/{ROOM}/./send/{ENC}/t",
        f"/_matrix/client/v3/rooms/{ROOM}/send/%2e%2e/state/{ENC}",
        "/foo/../_matrix/client/v3/sync",
    ],
)
def test_dot_segments_are_malformed(path: str) -> None:
    assert classify("PUT", path).malformed == "dot segments in the request path"


def test_encoded_slashes_are_judged_both_ways() -> None:
    path = f"/_matrix%2Fclient%2Fv3/rooms/{ROOM}/send%2F{ENC}%2Ft"
    info = classify("PUT", path)
    assert ENC in info.event_types
    # A state key with an encoded slash stays one segment for routing.
    info = classify("PUT", f"/_matrix/client/v3/rooms/{ROOM}/state/m.custom/a%2Fb")
    assert info.event_types == ("m.custom",) and info.endpoint == "client.state"


@pytest.mark.parametrize(
    ("header", "origin"),
    [
        ('X-Matrix origin="partner.example",key="ed25519:a",sig="abc"', "partner.example"),
        ("X-Matrix origin=partner.example,key=ed25519:a,sig=abc", "partner.example"),
        ('X-Matrix  origin = "x"', None),
        (
            'X-Matrix key="ed25519:a", origin="Partner.Example:8448", sig="a"',
            "partner.example:8448",
        ),
        (
            'X-Matrix origin="localhost:8448",destination="corp.example",key="k",sig="s"',
            "localhost:8448",
        ),
        ('x-matrix origin="partner.example",key="k",sig="s"', "partner.example"),
        ('X-Matrix origin="evil\\".example",key="k",sig="s"', None),
        ('X-Matrix origin="[::1]:8448",key="k",sig="s"', "[::1]:8448"),
        ('X-Matrix key="k",sig="s"', None),
        ("Bearer abc", None),
        ('X-Matrixorigin="a.example"', None),
    ],
)
def test_x_matrix_parsing(header: str, origin: str | None) -> None:
    assert parse_x_matrix(header) == origin


def test_conflicting_origins_are_refused() -> None:
    a = 'X-Matrix origin="a.example",key="k",sig="s"'
    b = 'X-Matrix origin="b.example",key="k",sig="s"'
    assert x_matrix_origin([a, a]) == ("a.example", None)
    assert x_matrix_origin([a, "Bearer x"]) == ("a.example", None)
    assert x_matrix_origin([a, b]) == (None, "conflicting X-Matrix origins")
    assert x_matrix_origin([]) == (None, None)
    info = request_info("PUT", "/_matrix/federation/v1/send/1", [a, b])
    assert info.malformed == "conflicting X-Matrix origins"


def test_origin_read_only_on_federation_paths() -> None:
    auth = ['X-Matrix origin="a.example",key="k",sig="s"']
    fed = request_info("PUT", "/_matrix/federation/v1/send/1", auth, source=Source.AUTHZ)
    assert (fed.origin, fed.request_class, fed.source) == (
        "a.example",
        RequestClass.FEDERATION,
        Source.AUTHZ,
    )
    client = request_info("GET", "/_matrix/client/v3/sync", auth, user_agent="UA", ip="10.0.0.1")
    assert (client.origin, client.user_agent, client.ip) == (None, "UA", "10.0.0.1")


def test_versionless_and_absolute_form_paths() -> None:
    info = classify("PUT", f"/_matrix/client/rooms/{ROOM}/send/{ENC}/t")
    assert info.event_types == (ENC,)
    info = classify("PUT", f"http://corp.example/_matrix/client/v3/rooms/{ROOM}/state/{ENC}")
    assert info.event_types == (ENC,) and info.template.startswith("/_matrix/client/v3/rooms/")
    info = classify("GET", f"/_matrix/federation/make_join/{ROOM}/@u:p")
    assert info.room == ROOM and info.request_class is RequestClass.FEDERATION
    assert classify("GET", "/_matrix/federation/").endpoint == "federation.unknown"
    assert classify("GET", "/_matrix/client/").endpoint == "client.unknown"


def test_relative_request_targets_are_checked_for_dots() -> None:
    assert classify("PUT", "../_matrix/client/v3/sync").malformed is not None
    assert classify("GET", "/.well-known/matrix/server").malformed is None


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/user/%40a%3Acorp.example/rooms/%21abc%3Acorp.example/account_data/x",
        "/_matrix/client/v3/user/@a:corp.example/rooms/!abc:corp.example/tags/u.work",
        "/_matrix/client/v3/room_keys/keys/%21abc%3Acorp.example/session1",
        "/_matrix/client/r0/directory/list/room/!abc:corp.example",
        "/_matrix/client/v3/directory/list/appservice/irc/%21abc%3Acorp.example",
        "/_matrix/client/v1/room_summary/%21abc%3Acorp.example",
    ],
)
def test_rooms_named_outside_rooms_paths(path: str) -> None:
    # Found by the conformance suite (tests/conformance): the room is recorded with the
    # decision wherever the path names one.
    info = classify("PUT", path)
    assert (info.room, info.event_types) == (ROOM, ())
    assert "abc" not in info.template


def test_aliases_outside_joins_name_no_room() -> None:
    assert classify("GET", "/_matrix/client/v1/room_summary/%23lobby%3Acorp.example").room is None


def test_create_room_third_party_invites() -> None:
    # Found by the conformance suite: the spec's invite_3pid makes m.room.third_party_invite.
    invite = {"id_server": "id.example", "medium": "email", "address": "b@example.org"}
    assert create_room_event_types({"invite_3pid": [invite]}) == ("m.room.third_party_invite",)
    assert create_room_event_types({"invite_3pid": []}) == ()
