"""Storage (versions, history, decisions) and the service (live swap, fail closed, log)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from dmz_api.config_reader import Section
from dmz_api.errors import Conflict, InvalidParam, NotFound
from dmz_api.gateway.config import parse_gateway_config
from dmz_api.gateway.decisions import GatewayMetrics
from dmz_api.gateway.migrations import upgrade_table
from dmz_api.gateway.policy.matrix_paths import request_info
from dmz_api.gateway.policy.model import Outcome, RequestClass, RequestInfo
from dmz_api.gateway.policy.rules import LEDGER_EVENT_TYPES
from dmz_api.gateway.service import GatewayService
from dmz_api.gateway.store import Change, CorruptRuleset, DecisionQuery, RuleStore
from dmz_api.metrics import Metrics

from .conftest import make_rule

EVIL = 'X-Matrix origin="evil.example",key="k",sig="s"'


def fed(origin: str = "evil.example") -> RequestInfo:
    return request_info(
        "PUT", "/_matrix/federation/v1/send/17?x=1", [f'X-Matrix origin="{origin}",key="k",sig="s"']
    )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.create(f"sqlite:{tmp_path / 'gw.db'}", upgrade_table=upgrade_table)
    await database.start()
    yield database
    await database.stop()


def make_service(db: Database, **options: Any) -> GatewayService:
    section = {
        "server_name": "corp.example",
        "reload_interval": 0.05,
        "decision_log": {"flush_interval": 0.02, "batch_size": 10, "allow": "full"},
    }
    section.update(options)
    config = parse_gateway_config(Section(section))
    return GatewayService(config, RuleStore(db), GatewayMetrics(Metrics()))


@pytest.fixture
async def service(db: Database) -> AsyncIterator[GatewayService]:
    svc = make_service(db)
    await svc.start()
    yield svc
    await svc.stop()


# ---- store


async def test_store_versions_and_history(db: Database) -> None:
    store = RuleStore(db)
    assert await store.load() == (0, [])
    rule = make_rule("a", "server_block", {"servers": ["evil.example"]})
    version, _ = await store.commit(
        0,
        lambda rules: Change(put=[rule], diff={"added": [rule.to_json()]}),
        author="@sec:corp",
        reason="add a",
        now=1000,
    )
    assert version == 1
    assert await store.load() == (1, [rule])
    with pytest.raises(Conflict, match="version 1, not 0"):
        await store.commit(0, lambda rules: Change(delete=["a"]), author=None, reason="x", now=2)
    assert await store.current_version() == 1
    version, change = await store.commit(
        None, lambda rules: Change(), author=None, reason="noop", now=3
    )
    assert version == 1 and change.empty
    history = await store.history(limit=10)
    assert [(v.version, v.author, v.reason) for v in history] == [
        (1, "@sec:corp", "add a"),
        (0, None, "initial empty ruleset"),
    ]
    assert history[0].diff["added"][0]["id"] == "a"
    assert [v.version for v in await store.history(limit=10, before=1)] == [0]


async def test_store_rolls_back_failed_write(db: Database) -> None:
    store = RuleStore(db)

    def broken(rules: dict[str, Any]) -> Change:
        raise InvalidParam("nope")

    with pytest.raises(InvalidParam):
        await store.commit(None, broken, author=None, reason="x", now=1)
    assert await store.load() == (0, [])


async def test_corrupt_rule_is_reported(db: Database) -> None:
    store = RuleStore(db)
    rule = make_rule("a", "server_block", {"servers": ["evil.example"]})
    await store.commit(None, lambda r: Change(put=[rule]), author=None, reason="x", now=1)
    await db.execute("UPDATE gateway_rules SET params=$1", json.dumps({"servers": []}))
    with pytest.raises(CorruptRuleset, match="stored rule 'a' is invalid"):
        await store.load()


async def test_decision_queries(db: Database) -> None:
    store = RuleStore(db)
    rows = [
        (
            1000,
            "proxy",
            "federation",
            "evil.example",
            None,
            "PUT",
            "/p",
            None,
            None,
            "b",
            "enforce",
            "block",
            3,
            1,
            None,
            "$refused",
            None,
        ),
        (
            2000,
            "authz",
            "client",
            None,
            "@a:corp",
            "PUT",
            "/c",
            "m.room.message",
            "!r",
            None,
            None,
            "allow",
            2,
            1,
            None,
            None,
            None,
        ),
        (
            3000,
            "antispam",
            "federation",
            "evil.example",
            None,
            "POST",
            "/a",
            "m.x",
            "!r",
            "b",
            "audit",
            "would_block",
            1,
            2,
            "EVIL.example:08448",
            None,
            "account.erase",
        ),
    ]
    await store.insert_decisions(rows)

    async def ids(**query: Any) -> list[int]:
        return [d["id"] for d in await store.query_decisions(DecisionQuery(**query))]

    assert await ids() == [3, 2, 1]
    assert await ids(outcome="block") == [1]
    assert await ids(origin="evil.example") == [3, 1]
    assert await ids(rule="b", since=1500) == [3]
    assert await ids(event_id="$refused") == [1]
    by_id = {d["id"]: d for d in await store.query_decisions(DecisionQuery())}
    assert by_id[1]["event_id"] == "$refused" and by_id[3]["actions"] == "account.erase"
    assert await ids(user="@a:corp") == [2]
    assert await ids(request_class="client") == [2]
    assert await ids(source="antispam") == [3]
    assert await ids(before_id=3, limit=1) == [2]
    first = (await store.query_decisions(DecisionQuery(limit=1)))[0]
    assert first["time"] == "1970-01-01T00:00:03.000Z" and first["outcome"] == "would_block"
    await store.prune_decisions(2500)
    assert await ids() == [3]


# ---- service


async def test_changes_are_live_for_the_next_request(service: GatewayService) -> None:
    assert service.version == 0
    assert service.decide(fed()).outcome is Outcome.ALLOW
    result = await service.add_rule(
        {"id": "blk", "kind": "server_block", "params": {"servers": ["evil.example"]}},
        author="@sec:corp",
    )
    assert (result.version, result.created, service.version) == (1, True, 1)
    decision = service.decide(fed())
    assert (decision.outcome, decision.rule_id, decision.version) == (Outcome.BLOCK, "blk", 1)
    await service.update_rule("blk", {"enabled": False}, author="@sec:corp")
    assert service.decide(fed()).outcome is Outcome.ALLOW
    await service.delete_rule("blk", author="@sec:corp", expected=2)
    assert service.version == 3


async def test_write_checks(service: GatewayService) -> None:
    spec = {"id": "x", "kind": "server_block", "params": {"servers": ["a.example"]}}
    await service.add_rule(spec, author=None)
    with pytest.raises(Conflict, match="already exists"):
        await service.add_rule(spec, author=None)
    with pytest.raises(Conflict):
        await service.update_rule("x", {"note": "n"}, author=None, expected=0)
    with pytest.raises(NotFound):
        await service.delete_rule("nope", author=None)
    with pytest.raises(NotFound):
        await service.promote("nope", author=None)
    noop = await service.update_rule("x", {"enabled": True}, author=None)
    assert (noop.version, noop.changed) == (1, False)
    generated = await service.add_rule(
        {"kind": "server_block", "params": {"servers": ["b"]}}, author=None
    )
    assert generated.rule is not None and generated.rule.id.startswith("r")


async def test_promote_and_preset(service: GatewayService) -> None:
    await service.add_rule(
        {
            "id": "a",
            "kind": "server_block",
            "params": {"servers": ["evil.example"]},
            "mode": "audit",
        },
        author=None,
    )
    assert service.decide(fed()).outcome is Outcome.WOULD_BLOCK
    promoted = await service.promote("a", author="@sec:corp")
    assert promoted.changed and promoted.rule is not None and promoted.rule.mode.value == "enforce"
    assert service.decide(fed()).outcome is Outcome.BLOCK
    again = await service.promote("a", author="@sec:corp")
    assert (again.changed, again.version) == (False, promoted.version)

    first = await service.apply_preset("compliance-ledger", {}, author="@sec:corp")
    assert first.created and first.rule is not None
    assert first.rule.params == {
        "event_types": list(LEDGER_EVENT_TYPES),
        "actions": ["account.erase", "e2ee.keys", "membership.redact_events"],
        "scope": "both",
    }
    assert {"m.room.encryption", "m.room.encrypted", "m.room.redaction"} <= set(
        first.rule.params["event_types"]
    )
    second = await service.apply_preset("compliance-ledger", {}, author="@sec:corp")
    assert (second.changed, second.version) == (False, first.version)
    await service.update_rule(
        "compliance-ledger", {"params": {"event_types": ["m.x"]}}, author=None
    )
    restored = await service.apply_preset("compliance-ledger", {"mode": "audit"}, author=None)
    assert restored.changed and not restored.created and restored.rule is not None
    assert restored.rule.params == first.rule.params
    assert restored.rule.mode.value == "audit"
    with pytest.raises(NotFound):
        await service.apply_preset("nope", {}, author=None)


async def test_fail_closed_when_store_unreadable_at_start(db: Database) -> None:
    svc = make_service(db)
    store = svc.store

    async def broken() -> tuple[int, list[Any]]:
        raise OSError("disk gone")

    original = store.load
    store.load = broken  # type: ignore[method-assign]
    await svc.start()
    try:
        decision = svc.decide(fed("anyone.example"))
        assert (decision.outcome, decision.status, decision.rule_id) == (
            Outcome.BLOCK,
            503,
            "builtin:unavailable",
        )
        assert svc.failure is not None and "cannot be read" in svc.failure
        assert svc.decide(request_info("GET", "/_matrix/client/versions")).status == 503
        store.load = original  # type: ignore[method-assign]
        await asyncio.sleep(0.2)  # the poll loop retries
        assert svc.failure is None and svc.decide(fed()).outcome is Outcome.ALLOW
    finally:
        await svc.stop()


async def test_fail_closed_on_corrupt_version_and_keep_last_good_on_read_errors(
    service: GatewayService, db: Database
) -> None:
    await service.add_rule(
        {"id": "a", "kind": "server_block", "params": {"servers": ["x.example"]}}, author=None
    )
    store = service.store
    original = store.load

    async def broken() -> tuple[int, list[Any]]:
        raise OSError("disk gone")

    store.load = broken  # type: ignore[method-assign]
    await service.reload()
    assert service.version == 1 and service.decide(fed()).outcome is Outcome.ALLOW
    store.load = original  # type: ignore[method-assign]
    await db.execute("UPDATE gateway_rules SET kind='no_such_kind'")
    await service.reload()
    assert service.version is None
    assert service.decide(fed()).status == 503
    assert service.evaluate(fed())["decision"]["rule"] == "builtin:unavailable"


async def test_restart_keeps_rules_and_replicas_follow(
    db: Database, service: GatewayService
) -> None:
    replica = make_service(db)
    await replica.start()
    try:
        await service.add_rule(
            {"id": "a", "kind": "server_block", "params": {"servers": ["evil.example"]}},
            author=None,
        )
        for _ in range(50):
            if replica.version == 1:
                break
            await asyncio.sleep(0.02)
        assert replica.decide(fed()).rule_id == "a"
    finally:
        await replica.stop()
    restarted = make_service(db)
    await restarted.start()
    try:
        assert restarted.version == 1 and restarted.decide(fed()).outcome is Outcome.BLOCK
    finally:
        await restarted.stop()


async def test_decisions_are_logged_in_batches(service: GatewayService) -> None:
    await service.add_rule(
        {"id": "a", "kind": "server_block", "params": {"servers": ["evil.example"]}}, author=None
    )
    for _ in range(25):
        service.decide(fed())
    service.decide(
        request_info("PUT", "/_matrix/client/v3/rooms/!r:c/send/m.room.message/t1", user_agent="UA")
    )
    assert service.decision_log.pending == 26  # nothing written on the request path
    for _ in range(50):
        if service.decision_log.pending == 0:
            break
        await asyncio.sleep(0.02)
    rows = await service.decisions(DecisionQuery(limit=100))
    assert len(rows) == 26 and service.decision_log.written == 26
    latest, blocked = rows[0], rows[1]
    assert latest["outcome"] == "allow" and latest["event_type"] == "m.room.message"
    assert latest["path"] == "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"
    assert latest["room"] == "!r:c" and latest["class"] == "client"
    assert blocked["rule"] == "a" and blocked["origin"] == "evil.example"
    assert blocked["path"] == "/_matrix/federation/v1/send/{txnId}" and blocked["mode"] == "enforce"
    assert blocked["source"] == "proxy" and blocked["latency_us"] >= 0 and blocked["version"] == 1


async def test_dry_runs_are_not_logged(service: GatewayService) -> None:
    result = service.evaluate(fed())
    assert result["decision"]["outcome"] == "allow" and result["trace"] == []
    assert service.decision_log.pending == 0


async def test_full_buffer_drops_and_counts(db: Database) -> None:
    svc = make_service(
        db, decision_log={"queue_size": 5, "batch_size": 100, "flush_interval": 10, "allow": "full"}
    )
    for _ in range(8):
        svc.decide(fed())
    assert svc.decision_log.pending == 5 and svc.decision_log.dropped == 3
    assert svc.decide(fed()).status == 503  # never started: fails closed
    text = svc.metrics.dropped._value.get()  # type: ignore[attr-defined]
    assert text == 4
    await svc.decision_log.stop()
    assert svc.decision_log.pending == 0 and svc.decision_log.written == 5


async def test_failed_write_is_retried(service: GatewayService) -> None:
    store = service.store
    original = store.insert_decisions
    calls = 0

    async def flaky(records: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("busy")
        await original(records)

    store.insert_decisions = flaky  # type: ignore[method-assign]
    service.decide(fed())
    for _ in range(100):
        if service.decision_log.written == 1:
            break
        await asyncio.sleep(0.02)
    assert calls >= 2 and service.decision_log.written == 1 and service.decision_log.dropped == 0


async def test_class_of_described_requests(service: GatewayService) -> None:
    info = RequestInfo(RequestClass.CLIENT, "POST", "-", user="@a:corp.example")
    assert service.decide(info).allowed
