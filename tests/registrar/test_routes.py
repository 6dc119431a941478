"""The admin API over HTTP: auth and scopes, validation, shapes, idempotency, OpenAPI."""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from dmz_api.openapi import document
from dmz_api.registrar import REGISTRAR
from dmz_api.registrar.store import GuestRow

from .conftest import GUESTS_ONLY_KEY, SPONSOR, Clock, auth, csrf_of
from .fakes import FakeHomeserver

Client = TestClient[Any, Any]


async def mint(client: Client, body: Any = None, **headers: str) -> tuple[int, Any]:
    resp = await client.post("/v1/tokens", json=body or {}, headers=auth(**headers))
    return resp.status, await resp.json()


async def test_mint_shape_and_defaults(client: Client) -> None:
    status, body = await mint(client, {"note": "ACME audit"})
    assert status == 201
    assert body["url"] == f"http://dmz.test/register?token={body['token']}"
    assert body["uses_allowed"] == 1 and body["uses_completed"] == 0
    assert body["status"] == "active" and body["sponsor"] == SPONSOR
    assert body["note"] == "ACME audit" and body["used_by"] == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])
    assert re.fullmatch(r"[0-9a-f]{12}", body["id"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"uses": 0}, "uses"),
        ({"uses": 101}, "uses"),
        ({"uses": "1"}, "uses"),
        ({"uses": True}, "uses"),
        ({"expires_in": "3x"}, "expires_in"),
        ({"expires_in": -5}, "expires_in"),
        ({"expires_in": "31d"}, "expires_in"),
        ({"note": "n" * 501}, "note"),
        ({"note": 5}, "note"),
    ],
)
async def test_mint_validation_names_the_field(client: Client, body: Any, field: str) -> None:
    status, error = await mint(client, body)
    assert (status, error["errcode"]) == (400, "M_INVALID_PARAM")
    assert error["error"].startswith(field)


async def test_mint_accepts_durations(client: Client) -> None:
    for value, seconds in [("7d", 7 * 86400), (90, 90), ("15m", 900)]:
        status, body = await mint(client, {"expires_in": value, "uses": 3})
        assert status == 201 and body["uses_allowed"] == 3
        resp = await client.get(f"/v1/tokens/{body['id']}", headers=auth())
        shown = await resp.json()
        assert shown["expires_at"] == body["expires_at"]
        assert "token" not in shown and "url" not in shown
        assert seconds  # the exact instant is covered by the service tests


async def test_mint_requires_acting_user_and_json(client: Client) -> None:
    resp = await client.post("/v1/tokens", json={}, headers=auth(acting=None))
    body = await resp.json()
    assert (resp.status, body["errcode"]) == (400, "M_INVALID_PARAM")
    assert "X-Acting-User" in body["error"]
    resp = await client.post("/v1/tokens", data=b"{nope", headers=auth())
    assert (await resp.json())["errcode"] == "M_NOT_JSON"
    resp = await client.post("/v1/tokens", json=[1], headers=auth())
    assert (await resp.json())["errcode"] == "M_NOT_JSON"
    resp = await client.post("/v1/tokens", json={}, headers=auth(acting="alice"))
    assert (await resp.json())["errcode"] == "M_INVALID_PARAM"


async def test_auth_and_scopes(client: Client) -> None:
    resp = await client.post("/v1/tokens", json={})
    assert (resp.status, (await resp.json())["errcode"]) == (401, "M_MISSING_TOKEN")
    resp = await client.get("/v1/tokens", headers={"Authorization": "Bearer wrong"})
    assert (resp.status, (await resp.json())["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    resp = await client.post("/v1/tokens", json={}, headers=auth(key=GUESTS_ONLY_KEY))
    assert (resp.status, (await resp.json())["errcode"]) == (403, "M_FORBIDDEN")
    resp = await client.get("/v1/guests", headers=auth(key=GUESTS_ONLY_KEY))
    assert resp.status == 200


async def test_idempotency_key_over_http(client: Client) -> None:
    status, first = await mint(client, {"note": "x"}, **{"Idempotency-Key": "abc-1"})
    resp = await client.post(
        "/v1/tokens", json={"note": "x"}, headers=auth(**{"Idempotency-Key": "abc-1"})
    )
    assert status == 201 and resp.status == 200
    assert resp.headers["Idempotent-Replayed"] == "true"
    assert await resp.json() == first
    status, body = await mint(client, {"note": "y"}, **{"Idempotency-Key": "abc-1"})
    assert (status, body["errcode"]) == (409, "M_CONFLICT")
    status, body = await mint(client, {}, **{"Idempotency-Key": "bad key with spaces"})
    assert status == 400


async def test_list_show_revoke(client: Client, fake_hs: FakeHomeserver) -> None:
    _, a = await mint(client, {"note": "a"})
    _, b = await mint(client, {"note": "b"}, acting="@bob:corp.example")
    resp = await client.get("/v1/tokens", headers=auth())
    assert [t["id"] for t in (await resp.json())["tokens"]] == [b["id"], a["id"]]
    resp = await client.get("/v1/tokens", params={"sponsor": SPONSOR}, headers=auth())
    assert [t["id"] for t in (await resp.json())["tokens"]] == [a["id"]]
    resp = await client.delete(f"/v1/tokens/{a['id']}", headers=auth(acting="@carol:corp"))
    revoked = await resp.json()
    assert (resp.status, revoked["status"], revoked["revoked_by"]) == (
        200,
        "revoked",
        "@carol:corp",
    )
    resp = await client.get("/v1/tokens", params={"status": "active"}, headers=auth())
    assert [t["id"] for t in (await resp.json())["tokens"]] == [b["id"]]
    resp = await client.get("/v1/tokens", params={"status": "gone"}, headers=auth())
    assert (await resp.json())["error"].startswith("status")
    resp = await client.get("/v1/tokens", params={"limit": "0"}, headers=auth())
    assert (await resp.json())["error"].startswith("limit")
    resp = await client.get("/v1/tokens/000000000000", headers=auth())
    assert (resp.status, (await resp.json())["errcode"]) == (404, "M_NOT_FOUND")
    resp = await client.delete("/v1/tokens/not-an-id", headers=auth())
    assert resp.status == 404
    resp = await client.delete(f"/v1/tokens/{b['id']}", headers=auth(acting=None))
    assert (await resp.json())["revoked_by"] == "api:bot"


async def pages(client: Client, path: str, key: str, **params: str) -> list[tuple[list[Any], Any]]:
    """Every page of a list call, following next_cursor: (items, next_cursor) each."""
    found: list[tuple[list[Any], Any]] = []
    cursor = None
    while len(found) < 20:
        query = params | ({"cursor": cursor} if cursor else {})
        resp = await client.get(path, params=query, headers=auth())
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        found.append((body[key], body["next_cursor"]))
        cursor = body["next_cursor"]
        if cursor is None:
            return found
        assert isinstance(cursor, str) and re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    raise AssertionError("the pages never end")


async def test_tokens_are_paged(client: Client) -> None:
    # 25 tokens minted at three instants (12, 8 and 5 of them): pages of 10 break inside
    # runs of tokens created in the same millisecond.
    clock = client.app[REGISTRAR].clock = Clock()
    for n in range(25):
        if n in (12, 20):
            clock.advance(1)
        await mint(client, {"note": f"t{n}"})
    resp = await client.get("/v1/tokens", params={"limit": "100"}, headers=auth())
    body = await resp.json()
    everything = [t["id"] for t in body["tokens"]]
    assert body["next_cursor"] is None and len(set(everything)) == 25
    notes = [t["note"] for t in body["tokens"]]
    assert sorted(notes[:5]) == [f"t{n}" for n in range(20, 25)], "newest first"

    found = await pages(client, "/v1/tokens", "tokens", limit="10")
    assert [len(items) for items, _ in found] == [10, 10, 5]
    assert [t["id"] for items, _ in found for t in items] == everything, "no gap, no repeat"

    exact = await pages(client, "/v1/tokens", "tokens", limit="5")
    assert [len(items) for items, _ in exact] == [5] * 5, "no empty page after a full last one"


async def test_token_pages_survive_changes_between_pages(client: Client) -> None:
    for n in range(6):
        await mint(client, {"note": f"t{n}"})
    resp = await client.get("/v1/tokens", params={"status": "active"}, headers=auth())
    everything = [t["id"] for t in (await resp.json())["tokens"]]
    resp = await client.get("/v1/tokens", params={"status": "active", "limit": "3"}, headers=auth())
    first = await resp.json()
    assert [t["id"] for t in first["tokens"]] == everything[:3]
    for token_id in everything[:3]:  # an offset would now skip three tokens
        await client.delete(f"/v1/tokens/{token_id}", headers=auth())
    _, newer = await mint(client, {"note": "minted between pages"})
    params = {"status": "active", "limit": "3", "cursor": first["next_cursor"]}
    second = await (await client.get("/v1/tokens", params=params, headers=auth())).json()
    assert [t["id"] for t in second["tokens"]] == everything[3:]
    assert newer["id"] not in everything and second["next_cursor"] is None


async def test_guests_are_paged(client: Client) -> None:
    _, minted = await mint(client, {"uses": 30})
    store = client.app[REGISTRAR].store
    for n in range(25):
        sponsor = SPONSOR if n % 5 else "@bob:corp.example"
        await store.insert_guest(
            GuestRow(
                f"@g{n}:dmz.test", sponsor, minted["id"], 1_000 + n // 10, "active", None, None
            )
        )
    resp = await client.get("/v1/guests", params={"limit": "100"}, headers=auth())
    body = await resp.json()
    everything = [g["user_id"] for g in body["guests"]]
    assert body["next_cursor"] is None and sorted(everything) == sorted(
        f"@g{n}:dmz.test" for n in range(25)
    )
    found = await pages(client, "/v1/guests", "guests", limit="10")
    assert [len(items) for items, _ in found] == [10, 10, 5]
    assert [g["user_id"] for items, _ in found for g in items] == everything

    alices = [user for user in everything if int(user[2:].split(":")[0]) % 5]
    found = await pages(client, "/v1/guests", "guests", limit="7", sponsor=SPONSOR)
    assert [len(items) for items, _ in found] == [7, 7, 6]
    assert [g["user_id"] for items, _ in found for g in items] == alices


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/guests"])
@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor",
        "!!!!",
        "A" * 401,
        cursor_of("1700000000000:" + "x" * 400),
        cursor_of("1700000000000"),
        cursor_of("1700000000000:"),
        cursor_of(":abc"),
        cursor_of("17e3:abc"),
        cursor_of("-5:abc"),
        cursor_of("0017:abc"),
        cursor_of("1" * 19 + ":abc"),
        cursor_of("\u0661\u0662:abc"),
        cursor_of("12:ab\nc"),
        cursor_of("12:abc") + "==",
        "_w",
        cursor_of("12:abcd")[:-1] + "B",  # the same bytes, spelled another way
    ],
)
async def test_bad_cursor_is_refused(client: Client, path: str, cursor: str) -> None:
    resp = await client.get(path, params={"cursor": cursor}, headers=auth())
    body = await resp.json()
    assert (resp.status, body["errcode"]) == (400, "M_INVALID_PARAM")
    assert body["error"].startswith("cursor")


async def register(client: Client, token: str, username: str) -> int:
    page = await client.get("/register", params={"token": token})
    resp = await client.post(
        "/register",
        data={
            "token": token,
            "csrf_token": csrf_of(await page.text()),
            "username": username,
            "password": "long enough password",
            "password_confirm": "long enough password",
        },
    )
    return resp.status


async def test_guests_and_sponsor_revoke(client: Client, fake_hs: FakeHomeserver) -> None:
    _, a = await mint(client, {"uses": 2})
    assert await register(client, a["token"], "guest1") == 200
    resp = await client.get("/v1/guests", params={"sponsor": SPONSOR}, headers=auth())
    guests = (await resp.json())["guests"]
    assert [(g["user_id"], g["token_id"], g["status"]) for g in guests] == [
        ("@guest1:dmz.test", a["id"], "active")
    ]
    resp = await client.get(f"/v1/tokens/{a['id']}", headers=auth())
    assert (await resp.json())["used_by"] == ["@guest1:dmz.test"]
    resp = await client.post(
        f"/v1/sponsors/{SPONSOR}/revoke", json={"guests": "maybe"}, headers=auth()
    )
    assert (await resp.json())["error"].startswith("guests")
    resp = await client.post(
        f"/v1/sponsors/{SPONSOR}/revoke", json={"guests": "deactivate"}, headers=auth()
    )
    assert await resp.json() == {"tokens_revoked": 1, "guests_deactivated": 1}
    resp = await client.post(f"/v1/sponsors/{SPONSOR}/revoke", headers=auth())
    assert await resp.json() == {"tokens_revoked": 0, "guests_deactivated": 0}
    resp = await client.get("/v1/guests", params={"status": "deactivated"}, headers=auth())
    assert [g["user_id"] for g in (await resp.json())["guests"]] == ["@guest1:dmz.test"]
    resp = await client.post("/v1/sponsors/not-a-user/revoke", headers=auth())
    assert (await resp.json())["error"].startswith("user_id")


async def test_deactivate_guest_route(client: Client, fake_hs: FakeHomeserver) -> None:
    _, a = await mint(client)
    await register(client, a["token"], "guest2")
    resp = await client.post("/v1/guests/@guest2:dmz.test/deactivate", headers=auth())
    body = await resp.json()
    assert (resp.status, body["status"], body["deactivated_by"]) == (200, "deactivated", SPONSOR)
    assert fake_hs.deactivated == {"@guest2:dmz.test"}
    resp = await client.post("/v1/guests/@nobody:dmz.test/deactivate", headers=auth())
    assert resp.status == 404
    _, b = await mint(client, {"uses": 1})
    await register(client, b["token"], "guest3")
    fake_hs.down = True
    resp = await client.post("/v1/guests/@guest3:dmz.test/deactivate", headers=auth())
    assert (resp.status, (await resp.json())["errcode"]) == (503, "M_UNAVAILABLE")


async def test_mint_and_revoke_need_no_homeserver(client: Client, fake_hs: FakeHomeserver) -> None:
    fake_hs.down = True
    status, body = await mint(client)
    assert (status, body["status"]) == (201, "active")
    resp = await client.delete(f"/v1/tokens/{body['id']}", headers=auth())
    assert (resp.status, (await resp.json())["status"]) == (200, "revoked")
    assert fake_hs.calls == []


async def test_tokens_never_logged(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, a = await mint(client, **{"Idempotency-Key": "log-test"})
    await mint(client, **{"Idempotency-Key": "log-test"})
    await register(client, a["token"], "logged")
    await client.get("/register", params={"token": a["token"]})
    await client.get(f"/v1/tokens/{a['id']}", headers=auth())
    # aiohttp's access log is on in the test server only; __main__ turns it off.
    ours = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.name != "aiohttp.access"
    )
    assert a["token"] not in ours and "long enough password" not in ours
    assert a["id"] in ours  # the short id is what logs carry


async def test_metrics(client: Client) -> None:
    _, a = await mint(client)
    await register(client, a["token"], "counted")
    await client.delete(f"/v1/tokens/{(await mint(client))[1]['id']}", headers=auth())
    text = await (await client.get("/metrics")).text()
    assert "dmz_api_registrar_tokens_minted_total 2.0" in text
    assert "dmz_api_registrar_tokens_revoked_total 1.0" in text
    assert 'dmz_api_registrar_registrations_total{outcome="ok"} 1.0' in text


def _route_pairs(client: Client) -> set[tuple[str, str]]:
    pairs = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "*") or path is None:
            continue
        pairs.add((path, route.method.lower()))
    return pairs


async def test_openapi_matches_the_routes(client: Client) -> None:
    doc = document()
    documented = {
        (path, method)
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    }
    routed = _route_pairs(client)
    registrar_routes = {
        pair
        for pair in routed
        if pair[0].startswith(("/v1/tokens", "/v1/sponsors", "/v1/guests"))
        or pair[0].startswith("/register")
    }
    assert registrar_routes and registrar_routes <= documented
    registrar_documented = {
        pair
        for pair in documented
        if pair[0].startswith(("/v1/tokens", "/v1/sponsors", "/v1/guests", "/register"))
    }
    assert registrar_documented <= routed
    served = await (await client.get("/v1/openapi.json")).json()
    assert "/v1/tokens" in served["paths"] and "MintedToken" in served["components"]["schemas"]


def test_openapi_refs_resolve() -> None:
    doc = document()
    text = repr(doc)
    for ref in set(re.findall(r"#/components/(\w+)/(\w+)", text)):
        assert ref[1] in doc["components"][ref[0]], ref


async def test_a_token_carries_its_invites_into_the_registrations_feed(
    client: Client, fake_hs: FakeHomeserver
) -> None:
    rooms = ["!one:corp.example", "!two:corp.example:8448"]
    _, plain = await mint(client)
    _, invited = await mint(client, {"uses": 2, "invites": [*rooms, rooms[0]], "notify": "dm"})
    assert (invited["invites"], invited["notify"]) == (rooms, "dm")
    assert (plain["invites"], plain["notify"]) == ([], "")
    assert await register(client, plain["token"], "feed0") == 200
    assert await register(client, invited["token"], "feed1") == 200
    assert await register(client, invited["token"], "feed2") == 200

    resp = await client.get("/v1/registrations", params={"limit": "2"}, headers=auth())
    body = await resp.json()
    first = [
        (r["user_id"], r["token_id"], r["invites"], r["notify"]) for r in body["registrations"]
    ]
    assert first == [
        ("@feed0:dmz.test", plain["id"], [], ""),
        ("@feed1:dmz.test", invited["id"], rooms, "dm"),
    ]
    assert body["next"] == {
        "since": body["registrations"][1]["created_at_ms"],
        "after": "@feed1:dmz.test",
    }
    resp = await client.get("/v1/registrations", params=body["next"], headers=auth())
    rest = await resp.json()
    assert [r["user_id"] for r in rest["registrations"]] == ["@feed2:dmz.test"]
    resp = await client.get("/v1/registrations", params=rest["next"], headers=auth())
    assert await resp.json() == {"registrations": [], "next": rest["next"]}


@pytest.mark.parametrize(
    "body",
    [
        {"invites": "!one:corp.example"},
        {"invites": ["#alias:corp.example"]},
        {"invites": ["!with space"]},
        {"invites": [""]},
        {"invites": [f"!r{n}:corp.example" for n in range(21)]},
        {"invites": [5]},
    ],
)
async def test_mint_refuses_bad_invites(client: Client, body: Any) -> None:
    status, error = await mint(client, body)
    assert (status, error["errcode"]) == (400, "M_INVALID_PARAM")
    assert error["error"].startswith("invites")


@pytest.mark.parametrize("params", [{"since": "-1"}, {"since": "x"}, {"after": "bob"}])
async def test_registrations_feed_refuses_a_bad_position(
    client: Client, params: dict[str, str]
) -> None:
    resp = await client.get("/v1/registrations", params=params, headers=auth())
    assert (resp.status, (await resp.json())["errcode"]) == (400, "M_INVALID_PARAM")


async def test_guests_expire_and_can_be_extended(client: Client, fake_hs: FakeHomeserver) -> None:
    service = client.app[REGISTRAR]
    clock = Clock()
    service.clock = clock
    _, minted = await mint(client, {"uses": 2, "guest_expires_in": "1h"})
    assert minted["guest_expires_in"] == 3600
    assert await register(client, minted["token"], "short1") == 200
    assert await register(client, minted["token"], "short2") == 200
    resp = await client.get("/v1/guests", headers=auth())
    expiries = {g["user_id"]: g["expires_at"] for g in (await resp.json())["guests"]}
    assert all(expiries.values())

    resp = await client.post(
        "/v1/guests/@short2:dmz.test/extend", json={"expires_in": "2h"}, headers=auth()
    )
    extended = await resp.json()
    assert resp.status == 200 and extended["expires_at"] > expiries["@short2:dmz.test"]
    clock.advance(3601)
    assert await service.expire_guests() == 1
    assert fake_hs.deactivated == {"@short1:dmz.test"}
    short1 = await service.store.get_guest("@short1:dmz.test")
    assert short1 is not None and (short1.status, short1.deactivated_by) == (
        "deactivated",
        "expiry",
    )
    assert await service.expire_guests() == 0
    clock.advance(2 * 3600)
    assert await service.expire_guests() == 1
    assert fake_hs.deactivated == {"@short1:dmz.test", "@short2:dmz.test"}

    resp = await client.post(
        "/v1/guests/@short1:dmz.test/extend", json={"expires_in": "1h"}, headers=auth()
    )
    assert (resp.status, (await resp.json())["errcode"]) == (409, "M_CONFLICT")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "expires_in"),
        ({"expires_in": "x"}, "expires_in"),
        ({"expires_in": "400d"}, "expires_in"),
    ],
)
async def test_extend_validation(client: Client, body: Any, field: str) -> None:
    resp = await client.post("/v1/guests/@nobody:dmz.test/extend", json=body, headers=auth())
    error = await resp.json()
    assert (resp.status, error["errcode"]) == (400, "M_INVALID_PARAM")
    assert error["error"].startswith(field)


async def test_mint_refuses_a_guest_expiry_beyond_the_maximum(client: Client) -> None:
    status, error = await mint(client, {"guest_expires_in": "366d"})
    assert (status, error["errcode"]) == (400, "M_INVALID_PARAM")
    assert error["error"].startswith("guest_expires_in")


async def test_guests_of_a_project(client: Client, fake_hs: FakeHomeserver) -> None:
    _, apollo = await mint(client, {"uses": 2, "project": "apollo-1"})
    _, other = await mint(client)
    assert (apollo["project"], other["project"]) == ("apollo-1", "")
    assert await register(client, apollo["token"], "ap1") == 200
    assert await register(client, other["token"], "ot1") == 200
    resp = await client.get("/v1/guests", params={"project": "apollo-1"}, headers=auth())
    assert [g["user_id"] for g in (await resp.json())["guests"]] == ["@ap1:dmz.test"]
    for bad_name in ("-x", "a b", "x" * 65):
        resp = await client.get("/v1/guests", params={"project": bad_name}, headers=auth())
        assert (await resp.json())["error"].startswith("project")
        status, error = await mint(client, {"project": bad_name})
        assert (status, error["error"][:7]) == (400, "project")
