"""The admin API, /v1/authz and the antispam callbacks through the real application."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dmz_api.gateway.config import IPNetwork
from dmz_api.gateway.enforce.authz import client_ip
from dmz_api.openapi import document

from .conftest import ADMIN, AUTHZ_SECRET, READER, TOKENS_KEY, GatewayClient

BLOCK_EVIL = {"id": "no-evil", "kind": "server_block", "params": {"servers": ["evil.example"]}}
X_MATRIX = 'X-Matrix origin="{}",key="ed25519:a",sig="s"'


async def add(client: GatewayClient, body: dict[str, Any], **headers: str) -> Any:
    resp = await client.post("/v1/rules", json=body, headers={**ADMIN, **headers})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def wait_for_decisions(client: GatewayClient, count: int, query: str = "") -> list[Any]:
    for _ in range(100):
        resp = await client.get(f"/v1/decisions?limit=1000{query}", headers=READER)
        assert resp.status == 200
        decisions: list[Any] = (await resp.json())["decisions"]
        if len(decisions) >= count:
            return decisions
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} decisions recorded")


async def test_auth_and_scopes(client: GatewayClient) -> None:
    resp = await client.get("/v1/rules")
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    resp = await client.get("/v1/rules", headers={"Authorization": f"Bearer {TOKENS_KEY}"})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await client.get("/v1/rules", headers=READER)
    assert resp.status == 403
    resp = await client.get("/v1/decisions", headers=READER)
    assert resp.status == 200
    resp = await client.post("/v1/evaluate", json={"class": "client"}, headers=READER)
    assert resp.status == 403


async def test_rule_lifecycle(client: GatewayClient) -> None:
    resp = await client.get("/v1/rules", headers=ADMIN)
    assert await resp.json() == {"version": 0, "rules": []} and resp.headers["ETag"] == '"0"'
    created = await add(client, {**BLOCK_EVIL, "note": "see ticket 42", "reason": "incident 7"})
    assert created["version"] == 1 and created["changed"] is True
    rule = created["rule"]
    assert rule["author"] == "@sec:corp.example" and rule["mode"] == "enforce" and rule["enabled"]
    assert (
        rule["priority"] == 100
        and rule["note"] == "see ticket 42"
        and rule["created"].endswith("Z")
    )

    resp = await client.get("/v1/rules/no-evil", headers=ADMIN)
    assert (await resp.json())["rule"]["id"] == "no-evil"
    resp = await client.patch(
        "/v1/rules/no-evil", json={"mode": "audit", "priority": 5}, headers=ADMIN
    )
    body = await resp.json()
    assert resp.status == 200 and body["version"] == 2 and body["rule"]["mode"] == "audit"
    assert resp.headers["ETag"] == '"2"'
    resp = await client.post("/v1/rules/no-evil/promote", headers=ADMIN)
    body = await resp.json()
    assert body["version"] == 3 and body["rule"]["mode"] == "enforce" and body["changed"]
    resp = await client.post("/v1/rules/no-evil/promote", headers=ADMIN)
    assert (await resp.json())["changed"] is False
    resp = await client.delete("/v1/rules/no-evil", headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["version"] == 4

    resp = await client.get("/v1/rules/history", headers=ADMIN)
    versions = (await resp.json())["versions"]
    assert [v["version"] for v in versions] == [4, 3, 2, 1, 0]
    assert versions[3]["reason"] == "incident 7" and versions[3]["author"] == "@sec:corp.example"
    assert versions[2]["diff"]["changed"][0]["before"]["mode"] == "enforce"
    assert versions[2]["diff"]["changed"][0]["after"]["mode"] == "audit"
    assert versions[1]["reason"] == "promote rule no-evil to enforce"
    assert versions[0]["diff"]["removed"][0]["id"] == "no-evil"
    resp = await client.get("/v1/rules/history?limit=2&before=3", headers=ADMIN)
    assert [v["version"] for v in (await resp.json())["versions"]] == [2, 1]


async def test_author_defaults_to_api_key(client: GatewayClient) -> None:
    headers = {"Authorization": ADMIN["Authorization"]}
    resp = await client.post("/v1/rules", json=BLOCK_EVIL, headers=headers)
    assert (await resp.json())["rule"]["author"] == "api:sec"
    resp = await client.post(
        "/v1/rules", json=BLOCK_EVIL, headers={**headers, "X-Acting-User": "bob"}
    )
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_PARAM"


async def test_if_match(client: GatewayClient) -> None:
    await add(client, BLOCK_EVIL)
    for stale in ("0", '"0"', 'W/"0"'):
        resp = await client.patch(
            "/v1/rules/no-evil", json={"note": "x"}, headers={**ADMIN, "If-Match": stale}
        )
        body = await resp.json()
        assert (
            resp.status == 409 and body["errcode"] == "M_CONFLICT" and "version 1" in body["error"]
        )
    resp = await client.patch(
        "/v1/rules/no-evil", json={"note": "x"}, headers={**ADMIN, "If-Match": '"1"'}
    )
    assert resp.status == 200 and (await resp.json())["version"] == 2
    resp = await client.delete("/v1/rules/no-evil", headers={**ADMIN, "If-Match": "1"})
    assert resp.status == 409
    resp = await client.delete("/v1/rules/no-evil", headers={**ADMIN, "If-Match": "*"})
    assert resp.status == 200
    resp = await client.post("/v1/rules", json=BLOCK_EVIL, headers={**ADMIN, "If-Match": "abc"})
    assert resp.status == 400


async def test_validation_errors(client: GatewayClient) -> None:
    cases = [
        ({"kind": "nope", "params": {}}, "kind must be one of"),
        ({"kind": "server_block", "params": {}}, "params.servers is required"),
        ({"kind": "server_block", "params": {"servers": ["a b"]}}, "not a server name"),
        ({"kind": "server_block", "params": {"servers": ["a"], "extra": 1}}, "unknown key 'extra'"),
        ({"kind": "client_allow", "params": {"user_agents": ["("]}}, "not a regex"),
        ({"kind": "client_allow", "params": {"networks": ["10.0.0.0/33"]}}, "not a CIDR"),
        ({"kind": "client_allow", "params": {}}, "user_agents (regexes) and/or networks"),
        ({"kind": "event_type_block", "params": {"event_types": ["m.x"], "scope": "all"}}, "scope"),
        ({"kind": "event_type_block", "params": {"event_types": ['m."x']}}, "not an event type"),
        ({"kind": "partner_scope", "params": {"servers": ["p"]}}, "rooms and/or event_types"),
        (
            {"kind": "partner_scope", "params": {"servers": ["p"], "rooms": ["#alias:x"]}},
            "not a room ID",
        ),
        ({**BLOCK_EVIL, "mode": "dry"}, "mode must be audit or enforce"),
        ({**BLOCK_EVIL, "priority": -1}, "priority must be"),
        ({**BLOCK_EVIL, "enabled": "yes"}, "enabled must be"),
        ({**BLOCK_EVIL, "id": "-bad"}, "id must be"),
        ({**BLOCK_EVIL, "colour": "red"}, "unknown field 'colour'"),
    ]
    for body, message in cases:
        resp = await client.post("/v1/rules", json=body, headers=ADMIN)
        result = await resp.json()
        assert resp.status == 400 and result["errcode"] == "M_INVALID_PARAM", body
        assert message in result["error"], (body, result)
    resp = await client.post("/v1/rules", data=b"{oops", headers=ADMIN)
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"
    await add(client, BLOCK_EVIL)
    resp = await client.post("/v1/rules", json=BLOCK_EVIL, headers=ADMIN)
    assert resp.status == 409
    resp = await client.patch("/v1/rules/no-evil", json={"kind": "server_allow"}, headers=ADMIN)
    assert resp.status == 400 and "cannot be changed" in (await resp.json())["error"]
    resp = await client.patch("/v1/rules/missing", json={"note": "x"}, headers=ADMIN)
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"
    resp = await client.get("/v1/rules/missing", headers=ADMIN)
    assert resp.status == 404


async def test_preset(client: GatewayClient) -> None:
    resp = await client.post("/v1/rules/preset/compliance-ledger", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 201 and body["rule"]["id"] == "compliance-ledger" and body["version"] == 1
    resp = await client.post(
        "/v1/rules/preset/compliance-ledger", json={"mode": "audit"}, headers=ADMIN
    )
    body = await resp.json()
    assert resp.status == 200 and body["rule"]["mode"] == "audit" and body["version"] == 2
    resp = await client.post("/v1/rules/preset/unknown", headers=ADMIN)
    assert resp.status == 404


async def test_evaluate(client: GatewayClient) -> None:
    await client.post("/v1/rules/preset/compliance-ledger", headers=ADMIN)
    await add(client, BLOCK_EVIL)
    body = {
        "method": "PUT",
        "path": "/_matrix/client/v3/rooms/!r:corp.example/state/m%2Eroom%2Eencryption/",
        "headers": {"User-Agent": "Element/1"},
    }
    resp = await client.post("/v1/evaluate", json=body, headers=ADMIN)
    result = await resp.json()
    assert resp.status == 200 and result["version"] == 2
    assert (
        result["decision"]["outcome"] == "block"
        and result["decision"]["rule"] == "compliance-ledger"
    )
    assert result["request"]["event_types"] == ["m.room.encryption"]
    assert result["request"]["user_agent"] == "Element/1"
    assert {t["rule"]: t["result"] for t in result["trace"]} == {
        "compliance-ledger": "block",
        "no-evil": "not_applicable",
    }
    described = {"class": "federation", "origin": "EVIL.example", "event_type": "m.room.message"}
    resp = await client.post("/v1/evaluate", json=described, headers=ADMIN)
    result = await resp.json()
    assert result["decision"]["rule"] == "no-evil" and result["request"]["origin"] == "evil.example"
    signed = {
        "path": "/_matrix/federation/v1/send/1",
        "method": "PUT",
        "headers": {"Authorization": X_MATRIX.format("evil.example")},
    }
    resp = await client.post("/v1/evaluate", json=signed, headers=ADMIN)
    assert (await resp.json())["decision"]["outcome"] == "block"
    create = {
        "path": "/_matrix/client/v3/createRoom",
        "method": "POST",
        "body": {"initial_state": [{"type": "m.room.encryption", "content": {}}]},
    }
    resp = await client.post("/v1/evaluate", json=create, headers=ADMIN)
    assert (await resp.json())["decision"]["rule"] == "compliance-ledger"
    for bad in (
        {},
        {"class": "x"},
        {"class": "client", "path": "/_matrix/federation/v1/send/1"},
        {"class": "client", "origin": "bad name"},
        {"class": "client", "foo": 1},
    ):
        resp = await client.post("/v1/evaluate", json=bad, headers=ADMIN)
        assert resp.status == 400, bad
    # dry runs are not decisions
    resp = await client.get("/v1/decisions", headers=READER)
    assert (await resp.json())["decisions"] == []


async def test_authz_endpoint(client: GatewayClient) -> None:
    await add(client, BLOCK_EVIL)
    await client.post("/v1/rules/preset/compliance-ledger", headers=ADMIN)
    resp = await client.get(
        "/v1/authz",
        headers={
            "X-Original-URI": "/_matrix/federation/v1/send/1?x=1",
            "X-Original-Method": "PUT",
            "Authorization": X_MATRIX.format("evil.example"),
        },
    )
    body = await resp.json()
    assert resp.status == 403 and body["errcode"] == "M_FORBIDDEN"
    assert (
        resp.headers["X-Authz-Reason"] == body["error"]
        and resp.headers["X-Authz-Rule"] == "no-evil"
    )
    resp = await client.get(
        "/v1/authz",
        headers={
            "X-Forwarded-Uri": "/_matrix/client/r0/rooms/!r:c/state/m%2Eroom%2Eencryption",
            "X-Forwarded-Method": "PUT",
            "X-Forwarded-Host": "corp.example",
            "User-Agent": "Element",
        },
    )
    assert resp.status == 403 and resp.headers["X-Authz-Rule"] == "compliance-ledger"
    resp = await client.get(
        "/v1/authz",
        headers={
            "X-Original-URI": "/_matrix/client/v3/rooms/!r:c/send/m.room.message/1",
            "X-Original-Method": "PUT",
        },
    )
    assert resp.status == 200 and resp.headers["X-Authz-Outcome"] == "allow"
    # Envoy-style: the original method and path on the authz request itself
    resp = await client.put("/v1/authz/_matrix/client/v3/rooms/!r:c/redact/$e/t")
    assert resp.status == 403 and "m.room.redaction" in resp.headers["X-Authz-Reason"]
    resp = await client.get("/v1/authz", headers={"X-Original-URI": "/_matrix/client/v3/sync"})
    assert resp.status == 403 and "original method" in (await resp.json())["error"]
    decisions = await wait_for_decisions(client, 4, "&source=authz")
    assert [d["outcome"] for d in decisions] == ["block", "allow", "block", "block"]
    assert decisions[-1]["path"] == "/_matrix/federation/v1/send/{txnId}"


async def test_authz_caller_checks(make_client: Callable[..., Any]) -> None:
    client = await make_client(authz={"secret": AUTHZ_SECRET})
    headers = {"X-Original-URI": "/_matrix/client/versions", "X-Original-Method": "GET"}
    resp = await client.get("/v1/authz", headers=headers)
    assert resp.status == 403 and "secret" in resp.headers["X-Authz-Reason"]
    resp = await client.get("/v1/authz", headers={**headers, "X-Authz-Secret": "wrong"})
    assert resp.status == 403
    resp = await client.get("/v1/authz", headers={**headers, "X-Authz-Secret": AUTHZ_SECRET})
    assert resp.status == 200
    resp = await client.post("/v1/antispam/ping", json={"id": "abc"})
    assert resp.status == 403
    resp = await client.post(
        "/v1/antispam/ping", json={"id": "abc"}, headers={"Authorization": f"Bearer {AUTHZ_SECRET}"}
    )
    assert await resp.json() == {"id": "abc", "status": "ok"}


async def test_authz_peer_allow_list(make_client: Callable[..., Any]) -> None:
    client = await make_client(authz={"allowed_peers": ["10.0.0.0/8"]})
    resp = await client.get(
        "/v1/authz", headers={"X-Original-URI": "/", "X-Original-Method": "GET"}
    )
    assert resp.status == 403 and "address" in resp.headers["X-Authz-Reason"]


async def test_authz_client_address_from_trusted_proxy(make_client: Callable[..., Any]) -> None:
    client = await make_client(trusted_proxies=["127.0.0.1/32"])
    await add(
        client, {"id": "corp-net", "kind": "client_allow", "params": {"networks": ["10.0.0.0/8"]}}
    )
    base = {"X-Original-URI": "/_matrix/client/v3/sync", "X-Original-Method": "GET"}
    resp = await client.get("/v1/authz", headers={**base, "X-Forwarded-For": "10.1.1.1"})
    assert resp.status == 200
    resp = await client.get(
        "/v1/authz", headers={**base, "X-Forwarded-For": "10.1.1.1, 203.0.113.9"}
    )
    assert resp.status == 403 and resp.headers["X-Authz-Rule"] == "corp-net"
    resp = await client.get("/v1/authz", headers={**base, "X-Real-IP": "10.2.2.2"})
    assert resp.status == 200


def test_client_ip() -> None:
    import ipaddress

    trusted: list[IPNetwork] = [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("10.0.0.0/8"),
    ]
    assert client_ip("127.0.0.1", ["1.1.1.1, 2.2.2.2, 10.0.0.3"], None, trusted) == "2.2.2.2"
    assert client_ip("127.0.0.1", ["1.1.1.1", "2.2.2.2"], None, trusted) == "2.2.2.2"
    assert client_ip("127.0.0.1", [], "3.3.3.3", trusted) == "3.3.3.3"
    assert client_ip("127.0.0.1", ["garbage"], None, trusted) == "127.0.0.1"
    assert client_ip("8.8.8.8", ["1.1.1.1"], "3.3.3.3", trusted) == "8.8.8.8"
    assert client_ip("127.0.0.1", ["1.1.1.1"], None, []) == "127.0.0.1"


async def test_antispam_callbacks(client: GatewayClient) -> None:
    await client.post("/v1/rules/preset/compliance-ledger", headers=ADMIN)
    await add(
        client,
        {"id": "partners", "kind": "server_allow", "params": {"servers": ["partner.example"]}},
    )
    post = client.post

    async def call(callback: str, body: Any) -> tuple[int, Any]:
        resp = await post(f"/v1/antispam/{callback}", json=body)
        return resp.status, await resp.json()

    event = {
        "type": "m.room.message",
        "sender": "@alice:corp.example",
        "room_id": "!r:corp.example",
        "content": {"body": "hi"},
        "event_id": "$1",
    }
    assert await call("check_event_for_spam", {"event": event}) == (200, {})
    status, body = await call(
        "check_event_for_spam", {"event": {**event, "type": "m.room.redaction"}}
    )
    assert (
        status == 403 and body["errcode"] == "M_FORBIDDEN" and "compliance-ledger" in body["error"]
    )
    status, _ = await call(
        "check_event_for_spam", {"event": {**event, "sender": "@x:stranger.example"}}
    )
    assert status == 403
    status, _ = await call(
        "check_event_for_spam", {"event": {**event, "sender": "@p:partner.example"}}
    )
    assert status == 200
    invite = {
        "inviter": "@alice:corp.example",
        "invitee": "@x:stranger.example",
        "room_id": "!r:corp.example",
    }
    assert (await call("user_may_invite", invite))[0] == 403
    assert (await call("user_may_invite", {**invite, "invitee": "@p:partner.example"}))[0] == 200
    assert (await call("user_may_invite", {**invite, "invitee": "@bob:corp.example"}))[0] == 200
    join = {"user": "@alice:corp.example", "room": "!r:corp.example", "is_invited": False}
    assert await call("user_may_join_room", join) == (200, {})
    assert (await call("user_may_join_room", {**join, "user": "@x:stranger.example"}))[0] == 403
    assert (
        await call("accept_make_join", {"user": "@p:partner.example", "room": "!r:corp.example"})
    )[0] == 200
    fed_invite = {"event": {**event, "type": "m.room.member", "sender": "@x:stranger.example"}}
    assert (await call("federated_user_may_invite", fed_invite))[0] == 403
    assert (await call("user_may_create_room", {"user_id": "@alice:corp.example"}))[0] == 200
    assert (
        await call(
            "user_may_create_room_alias",
            {"user_id": "@alice:corp.example", "room_alias": "#a:corp.example"},
        )
    )[0] == 200
    assert (
        await call(
            "user_may_publish_room",
            {"user_id": "@alice:corp.example", "room_id": "!r:corp.example"},
        )
    )[0] == 200
    threepid = {
        "inviter": "@alice:corp.example",
        "medium": "email",
        "address": "a@b",
        "room_id": "!r:corp.example",
    }
    assert (await call("user_may_send_3pid_invite", threepid))[0] == 200
    login = {
        "user_id": "@alice:corp.example",
        "device_id": None,
        "initial_display_name": None,
        "request_info": [["Element/1", "10.0.0.1"]],
        "auth_provider_id": None,
    }
    assert (await call("check_login_for_spam", login))[0] == 200
    assert await call("check_username_for_spam", {"user_profile": {}, "requester_id": "@a:b"}) == (
        200,
        {},
    )
    status, body = await call("no_such_callback", {})
    assert status == 404 and body["errcode"] == "M_UNRECOGNIZED"
    status, body = await call("check_event_for_spam", {"event": {"type": "x"}})
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    resp = await post("/v1/antispam/check_event_for_spam", data=b"[")
    assert resp.status == 400
    decisions = await wait_for_decisions(client, 16, "&source=antispam")
    blocked = [d for d in decisions if d["outcome"] == "block"]
    assert {d["rule"] for d in blocked} == {"compliance-ledger", "partners"}
    invite_row = next(
        d
        for d in decisions
        if d["path"] == "/v1/antispam/user_may_invite" and d["outcome"] == "block"
    )
    assert (
        invite_row["user"] == "@alice:corp.example" and invite_row["origin"] == "stranger.example"
    )


async def test_decisions_api_filters(client: GatewayClient) -> None:
    await add(client, BLOCK_EVIL)
    for origin in ("evil.example", "good.example", "evil.example"):
        await client.get(
            "/v1/authz",
            headers={
                "X-Original-URI": "/_matrix/federation/v1/send/1",
                "X-Original-Method": "PUT",
                "Authorization": X_MATRIX.format(origin),
            },
        )
    await wait_for_decisions(client, 3)
    resp = await client.get(
        "/v1/decisions?decision=block&origin=EVIL.example&rule=no-evil", headers=READER
    )
    assert len((await resp.json())["decisions"]) == 2
    resp = await client.get(
        "/v1/decisions?decision=allow&class=federation&since=1h", headers=READER
    )
    assert len((await resp.json())["decisions"]) == 1
    resp = await client.get("/v1/decisions?since=2000-01-01T00:00:00Z&limit=2", headers=READER)
    body = await resp.json()
    assert len(body["decisions"]) == 2 and body["next_before"] == body["decisions"][1]["id"]
    resp = await client.get(f"/v1/decisions?before={body['next_before']}", headers=READER)
    assert len((await resp.json())["decisions"]) == 1
    resp = await client.get("/v1/decisions?since=4102444800000", headers=READER)
    assert (await resp.json())["decisions"] == []
    for bad in (
        "decision=maybe",
        "limit=0",
        "limit=5000",
        "since=yesterday",
        "class=x",
        "user=bob",
        "before=x",
    ):
        resp = await client.get(f"/v1/decisions?{bad}", headers=READER)
        assert resp.status == 400, bad


async def test_metrics_and_openapi(client: GatewayClient) -> None:
    await client.get("/v1/authz", headers={"X-Original-URI": "/", "X-Original-Method": "GET"})
    text = await (await client.get("/metrics")).text()
    assert "dmz_api_gateway_decisions_dropped_total 0.0" in text
    assert 'dmz_api_gateway_decisions_total{outcome="allow"} 1.0' in text
    assert "dmz_api_gateway_rules_loaded 1.0" in text
    paths = document()["paths"]
    for path in (
        "/v1/rules",
        "/v1/rules/{rule_id}",
        "/v1/rules/{rule_id}/promote",
        "/v1/rules/history",
        "/v1/rules/preset/{name}",
        "/v1/evaluate",
        "/v1/decisions",
        "/v1/authz",
        "/v1/antispam/{callback}",
    ):
        assert path in paths, path


async def test_routes_match_openapi(client: GatewayClient) -> None:
    """Every gateway route is documented with its method."""
    paths = document()["paths"]
    for resource in client.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter", "")
        if not path.startswith(
            ("/v1/rules", "/v1/evaluate", "/v1/decisions", "/v1/authz", "/v1/antispam")
        ):
            continue
        path = path.replace("{tail}", "{path}")
        assert path in paths, path
        for route in resource:
            if route.method not in ("*", "HEAD"):
                assert route.method.lower() in paths[path], (route.method, path)


def schema_validator(name: str) -> Any:
    import jsonschema

    root = dict(document())
    root["$ref"] = f"#/components/schemas/{name}"
    return jsonschema.Draft202012Validator(root)


async def test_responses_follow_the_openapi_schemas(client: GatewayClient) -> None:
    written = await add(client, BLOCK_EVIL)
    schema_validator("RuleWrite").validate(written)
    resp = await client.post("/v1/rules/preset/compliance-ledger", headers=ADMIN)
    schema_validator("RuleWrite").validate(await resp.json())
    resp = await client.get("/v1/rules", headers=ADMIN)
    schema_validator("Ruleset").validate(await resp.json())
    resp = await client.get("/v1/rules/history", headers=ADMIN)
    for version in (await resp.json())["versions"]:
        schema_validator("RulesetVersion").validate(version)
    resp = await client.post(
        "/v1/evaluate", json={"class": "federation", "origin": "evil.example"}, headers=ADMIN
    )
    schema_validator("Evaluation").validate(await resp.json())
    await client.get("/v1/authz", headers={"X-Original-URI": "/", "X-Original-Method": "GET"})
    for record in await wait_for_decisions(client, 1):
        schema_validator("DecisionRecord").validate(record)
    schema_validator("NewRule").validate({**BLOCK_EVIL, "mode": "audit"})
    resp = await client.post("/v1/rules", json={}, headers=ADMIN)
    schema_validator("Error").validate(await resp.json())
