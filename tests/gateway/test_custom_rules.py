"""Expression rules and life spans: written through the API and the service, judged live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mautrix.util.async_db import Database

from dmz_api.config_reader import Section
from dmz_api.errors import InvalidParam
from dmz_api.gateway.config import parse_gateway_config
from dmz_api.gateway.decisions import GatewayMetrics
from dmz_api.gateway.migrations import upgrade_table
from dmz_api.gateway.policy.expr import MAX_EXPRESSION, compile_expression
from dmz_api.gateway.policy.matrix_paths import request_info
from dmz_api.gateway.policy.model import Outcome, RequestInfo
from dmz_api.gateway.policy.rules import parse_instant
from dmz_api.gateway.service import GatewayService
from dmz_api.gateway.store import RuleStore
from dmz_api.metrics import Metrics

from .conftest import ADMIN, GatewayClient

PARTNER = 'X-Matrix origin="partner.example",key="k",sig="s"'


def fed_send() -> RequestInfo:
    return request_info("PUT", "/_matrix/federation/v1/send/1", [PARTNER])


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.create(f"sqlite:{tmp_path / 'gw.db'}", upgrade_table=upgrade_table)
    await database.start()
    yield database
    await database.stop()


def make_service(db: Database, clock: Clock) -> GatewayService:
    section: dict[str, Any] = {
        "server_name": "corp.example",
        # Long: the test shows expiry needs no reload at all.
        "reload_interval": 3600,
        "decision_log": {"flush_interval": 0.02, "batch_size": 10},
    }
    config = parse_gateway_config(Section(section))
    return GatewayService(config, RuleStore(db), GatewayMetrics(Metrics()), clock=clock)


# ---- the expression language


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('request.class == "client" &&', "line 1, column 29: Syntax error"),
        ('request.hour == 1 && 1 + "x" == 2', "line 1, column 24: found no matching overload"),
        ('request.hour == 1 &&\n  request.orgin == "a"', "line 2, column 3: request has no field"),
        ("request.hour + 1", "must be true or false, not int"),
        ("partner == 1", "line 1, column 1: undeclared reference to 'partner'"),
        ("   ", "must not be empty"),
        ("true || " * 300 + "true", f"at most {MAX_EXPRESSION} characters"),
        ("(" * 60 + "true" + ")" * 60, "recursion limit"),
    ],
)
def test_bad_expressions_are_refused_with_a_position(text: str, message: str) -> None:
    with pytest.raises(InvalidParam, match=message.replace("(", r"\(")):
        compile_expression(text)


def test_guards_only_for_plain_conjunctions() -> None:
    def guards(text: str) -> dict[str, set[str]]:
        return {k: set(v) for k, v in compile_expression(text).guards}

    assert guards('request.origin == "a.example" && request.hour < 9') == {"origin": {"a.example"}}
    assert guards('request.origin in ["a", "b"] && ("b" == request.origin)') == {"origin": {"b"}}
    assert guards('request.origin == "a" || request.hour < 9') == {}
    assert guards('request.origin == "a" && request.hour < 9 ? true : false') == {}
    assert guards('!(request.origin == "a") && request.user == "@x:y"') == {"user": {"@x:y"}}
    assert guards('request.origin == "a\\"b" && true') == {}
    # A field name inside a string literal is text, not a field.
    assert guards('request.path == "/x/request.nope" && request.user == "@a:b"') == {
        "user": {"@a:b"}
    }


# ---- through the API


async def test_expr_rule_via_api_and_trace(client: GatewayClient) -> None:
    bad = await client.post(
        "/v1/rules",
        json={"kind": "expr", "params": {"expression": "request.hour >"}},
        headers=ADMIN,
    )
    body = await bad.json()
    assert bad.status == 400 and body["errcode"] == "M_INVALID_PARAM"
    assert "line 1, column 15" in body["error"]
    listed = await (await client.get("/v1/rules", headers=ADMIN)).json()
    assert listed["rules"] == []  # nothing half-done

    expression = 'request.origin == "partner.example" && request.weekday >= 6'
    made = await client.post(
        "/v1/rules",
        json={
            "id": "weekdays",
            "kind": "expr",
            "params": {"expression": expression},
            "mode": "audit",
            "expires_at": "2099-01-01",
        },
        headers=ADMIN,
    )
    assert made.status == 201, await made.text()
    rule = (await made.json())["rule"]
    assert rule["expires_at"] == "2099-01-01T00:00:00.000Z" and rule["not_before"] is None

    saturday = {"path": "/_matrix/federation/v1/send/1", "method": "PUT"}
    saturday["headers"] = {"Authorization": PARTNER}  # type: ignore[assignment]
    dry = await client.post(
        "/v1/evaluate", json={**saturday, "at": "2027-03-06T10:00:00Z"}, headers=ADMIN
    )
    result = await dry.json()
    assert result["decision"]["outcome"] == "would_block", result
    entry = result["trace"][0]
    assert entry["result"] == "block" and entry["expression"]["returned"] is True
    seen = entry["expression"]["saw"]["request"]
    assert (seen["origin"], seen["weekday"], seen["hour"]) == ("partner.example", 6, 10)
    assert seen["endpoint"] == "federation.send"

    monday = await client.post(
        "/v1/evaluate", json={**saturday, "at": "2027-03-08T10:00:00Z"}, headers=ADMIN
    )
    result = await monday.json()
    assert result["decision"]["outcome"] == "allow"
    assert result["trace"][0]["expression"]["returned"] is False

    after = await client.post(
        "/v1/evaluate", json={**saturday, "at": "2099-01-02T00:00:00Z"}, headers=ADMIN
    )
    result = await after.json()
    assert result["decision"]["outcome"] == "allow"
    assert result["trace"][0]["result"] == "inactive"
    assert "expired at 2099-01-01" in result["trace"][0]["detail"]

    wrong = await client.patch(
        "/v1/rules/weekdays",
        json={"not_before": "2100-01-01", "reason": "x"},
        headers=ADMIN,
    )
    assert wrong.status == 400
    assert "later than not_before" in (await wrong.json())["error"]


# ---- life spans in the live service


async def test_rule_expires_at_the_instant_without_reload(db: Database) -> None:
    start = parse_instant("2027-03-31T23:59:59Z", "t")
    assert start is not None
    clock = Clock(start / 1000)
    service = make_service(db, clock)
    await service.start()
    try:
        await service.add_rule(
            {
                "id": "temp-block",
                "kind": "server_block",
                "params": {"servers": ["partner.example"]},
                "expires_at": "2027-04-01T00:00:00Z",
            },
            author="@sec:corp",
        )
        await service.add_rule(
            {
                "id": "later",
                "kind": "event_type_block",
                "params": {"event_types": ["m.room.encryption"]},
                "not_before": "2027-04-01T00:00:01Z",
            },
            author="@sec:corp",
        )
        version = service.version
        assert service.decide(fed_send()).rule_id == "temp-block"
        clock.now += 0.999
        assert service.decide(fed_send()).outcome is Outcome.BLOCK
        clock.now += 0.001  # exactly expires_at: no longer applies
        decision = service.decide(fed_send())
        assert (decision.outcome, decision.version) == (Outcome.ALLOW, version)
        encrypt = request_info(
            "PUT", "/_matrix/client/v3/rooms/!r:corp/send/m.room.encryption/1", []
        )
        assert service.decide(encrypt).outcome is Outcome.ALLOW
        clock.now += 1
        assert service.decide(encrypt).rule_id == "later"
        ruleset = service.ruleset
        assert ruleset is not None and ruleset.next_change is None
    finally:
        await service.stop()


def test_instants() -> None:
    assert parse_instant("2027-03-31", "x") == parse_instant("2027-03-31T00:00:00Z", "x")
    assert parse_instant("2027-03-31T02:00:00+02:00", "x") == parse_instant("2027-03-31", "x")
    assert parse_instant(None, "x") is None
    with pytest.raises(InvalidParam, match="not an ISO 8601 time"):
        parse_instant("next tuesday", "until")


# ---- policy as code


async def test_export_edit_import(client: GatewayClient) -> None:
    for rule in (
        {"id": "blk", "kind": "server_block", "params": {"servers": ["evil.example"]}},
        {"id": "old", "kind": "server_block", "params": {"servers": ["old.example"]}},
    ):
        assert (await client.post("/v1/rules", json=rule, headers=ADMIN)).status == 201
    exported = await client.get("/v1/rules/export", headers=ADMIN)
    assert exported.status == 200 and exported.content_type == "application/yaml"
    etag = exported.headers["ETag"]
    text = await exported.text()
    assert "format: bastion.gateway.rules/1" in text and "evil.example" in text
    unchanged = await client.post(
        "/v1/rules/import", data=text, headers={**ADMIN, "If-Match": etag}
    )
    result = await unchanged.json()
    assert (result["version"], result["changed"], result["diff"]) == (2, False, {})

    edited = yaml.safe_load(text)
    edited["rules"] = [r for r in edited["rules"] if r["id"] != "old"]
    edited["rules"][0]["mode"] = "audit"
    edited["rules"].append(
        {
            "id": "weekend",
            "kind": "expr",
            "params": {"expression": 'request.origin == "p.example" && request.weekday >= 6'},
            "expires_at": "2027-03-31",
        }
    )
    document = yaml.safe_dump(edited).replace("'2027-03-31'", "2027-03-31")  # a YAML date
    dry = await client.post(
        "/v1/rules/import?dry_run=true", data=document, headers={**ADMIN, "If-Match": etag}
    )
    result = await dry.json()
    assert dry.status == 200 and result["dry_run"] and result["changed"], result
    assert [r["id"] for r in result["diff"]["added"]] == ["weekend"]
    assert result["diff"]["added"][0]["expires_at"] == "2027-03-31T00:00:00.000Z"
    assert [r["id"] for r in result["diff"]["removed"]] == ["old"]
    assert result["diff"]["changed"][0]["after"]["mode"] == "audit"
    still = await (await client.get("/v1/rules", headers=ADMIN)).json()
    assert [r["id"] for r in still["rules"]] == ["blk", "old"]  # a dry run writes nothing

    bad = document.replace("request.weekday >= 6", "request.weekday >=")
    refused = await client.post("/v1/rules/import", data=bad, headers=ADMIN)
    body = await refused.json()
    assert refused.status == 400 and body["errcode"] == "M_INVALID_PARAM"
    assert "rules[1] (weekend): params.expression: line 1, column" in body["error"]

    stale = await client.post(
        "/v1/rules/import", data=document, headers={**ADMIN, "If-Match": '"1"'}
    )
    assert stale.status == 409
    done = await client.post("/v1/rules/import", data=document, headers={**ADMIN, "If-Match": etag})
    result = await done.json()
    assert done.status == 200 and result["version"] == 3 and not result["dry_run"]
    now = await (await client.get("/v1/rules", headers=ADMIN)).json()
    assert [(r["id"], r["mode"]) for r in now["rules"]] == [
        ("blk", "audit"),
        ("weekend", "enforce"),
    ]
    again = await client.post("/v1/rules/import", data=document, headers=ADMIN)
    assert (await again.json())["changed"] is False  # the same document: no new version
    history = await (await client.get("/v1/rules/history", headers=ADMIN)).json()
    assert history["versions"][0]["reason"] == "import 2 rules"
