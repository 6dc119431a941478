"""The decision log at volume, on a real SQLite file: allow aggregates, the free-space
floor (a fake free-space function), batched retention and the export hold, the JSON-lines
stream read back (file, stdout, syslog over UDP and a unix socket), the upgrade keeping
existing records, and the API (``kind=aggregate``, ``GET /v1/status``)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.async_db import Database

from dmz_api.config_reader import ConfigError, Section
from dmz_api.gateway.config import DecisionLogConfig, parse_gateway_config
from dmz_api.gateway.decisions import DecisionLog, GatewayMetrics
from dmz_api.gateway.migrations import upgrade_table
from dmz_api.gateway.store import DecisionQuery, DecisionRecord, RuleStore
from dmz_api.metrics import Metrics

from .conftest import ADMIN, READER, GatewayClient
from .test_routes import schema_validator

NOW = 1_800_000_000.0  # a fixed clock (s)
DAY_MS = 86_400_000


def rec(
    n: int, outcome: str = "allow", *, ts: int | None = None, user: str = "@a:corp.example"
) -> DecisionRecord:
    return (
        int(NOW * 1000) + n if ts is None else ts,
        "proxy",
        "client",
        None,
        user,
        "PUT",
        f"/_matrix/client/v3/rooms/!r:corp.example/send/m.room.message/{n}",
        "m.room.message",
        "!r:corp.example",
        "r1" if outcome != "allow" else None,
        "enforce" if outcome != "allow" else None,
        outcome,
        3,
        7,
        None,
        None,
        None,
    )


def log_config(**options: Any) -> DecisionLogConfig:
    section = parse_gateway_config(
        Section({"server_name": "corp.example", "decision_log": options})
    )
    return section.decision_log


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RuleStore]:
    database = Database.create(f"sqlite:{tmp_path / 'gw.db'}", upgrade_table=upgrade_table)
    await database.start()
    yield RuleStore(database)
    await database.stop()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_log(store: RuleStore, clock: Clock | None = None, free: list[int] | None = None,
             **options: Any) -> tuple[DecisionLog, Metrics]:  # fmt: skip
    metrics = Metrics()
    space = free if free is not None else [10**12]
    log = DecisionLog(
        store,
        log_config(**options),
        GatewayMetrics(metrics),
        clock=clock or Clock(),
        free_space=lambda _path: (space[0], 10**12),
    )
    return log, metrics


def metric(metrics: Metrics, line_start: str) -> float:
    text = metrics.render().decode()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {line_start} in the metrics")


async def test_allows_are_counted_per_minute_and_blocks_kept_whole(store: RuleStore) -> None:
    clock = Clock()
    log, _ = make_log(store, clock)
    assert log.allow_mode == "aggregate"
    for n in range(300):
        log.record(rec(n, user=f"@u{n % 3}:corp.example"), "client_send")
    for n in range(20):
        log.record(rec(n, "block"), "client_send")
        log.record(rec(n, "would_block"), "client_send")
    assert log.pending == 40  # only blocks and would-blocks are queued as records
    await log.flush()
    # The minute has not passed: nothing aggregated is written yet; then it has.
    await log.flush_allows()
    assert await store.query_allows(DecisionQuery()) == []
    clock.now += 60
    await log.flush_allows()
    allows = await store.query_allows(DecisionQuery(limit=100))
    assert sorted(a["user"] for a in allows) == [f"@u{i}:corp.example" for i in range(3)]
    assert sum(a["count"] for a in allows) == 300
    assert {a["endpoint"] for a in allows} == {"client_send"}
    assert {a["room"] for a in allows} == {"!r:corp.example"}
    records = await store.query_decisions(DecisionQuery(limit=100))
    assert len(records) == 40 and {r["outcome"] for r in records} == {"block", "would_block"}
    only_u1 = await store.query_allows(DecisionQuery(user="@u1:corp.example"))
    assert [a["count"] for a in only_u1] == [100]


async def test_full_mode_writes_every_allow(store: RuleStore) -> None:
    log, _ = make_log(store, allow="full")
    for n in range(50):
        log.record(rec(n), "client_send")
    assert log.pending == 50
    await log.stop()
    assert len(await store.query_decisions(DecisionQuery(limit=100))) == 50
    assert await store.query_allows(DecisionQuery()) == []


async def test_below_the_floor_allows_fall_back_to_aggregates_and_blocks_stay(
    store: RuleStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dmz_api.gateway.decisions")
    free = [10**9]
    log, metrics = make_log(store, free=free, allow="full", min_free_bytes="512M",
                            disk_path=str(tmp_path))  # fmt: skip
    assert log.check_disk() is False and log.allow_mode == "full"
    free[0] = 100 * 1024**2
    assert log.check_disk() is True
    assert log.allow_mode == "aggregate" and log.status()["degraded"] is True
    assert metric(metrics, "dmz_api_gateway_decision_log_degraded") == 1
    assert f"Decision log degraded: {100 * 1024**2} bytes free on {tmp_path}" in caplog.text
    for n in range(10):
        log.record(rec(n), "client_send")
        log.record(rec(n, "block"), "client_send")
    assert log.pending == 10  # every block, no allow record
    await log.stop()
    assert sum(a["count"] for a in await store.query_allows(DecisionQuery())) == 10
    free[0] = 10**9
    assert log.check_disk() is False and log.allow_mode == "full"
    assert metric(metrics, "dmz_api_gateway_decision_log_degraded") == 0
    assert "Decision log recovered" in caplog.text


async def test_a_percentage_floor(store: RuleStore, tmp_path: Path) -> None:
    free = [6 * 10**10]  # 6 % of 10**12
    log, _ = make_log(store, free=free, min_free_percent=5, disk_path=str(tmp_path))
    assert log.check_disk() is False
    free[0] = 4 * 10**10
    assert log.check_disk() is True


async def test_the_floor_on_the_real_disk(store: RuleStore) -> None:
    # A floor above the real free space of the test's file system forces degraded mode.
    metrics = Metrics()
    log = DecisionLog(store, log_config(min_free_percent=99.99), GatewayMetrics(metrics))
    assert log.disk_path is not None and log.check_disk() is True
    assert log.free_bytes is not None and log.free_bytes > 0


async def test_retention_deletes_in_bounded_batches_and_counts(
    store: RuleStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dmz_api.gateway.decisions")
    old = int(NOW * 1000) - 100 * DAY_MS
    await store.insert_decisions([rec(n, "block", ts=old + n) for n in range(12_001)])
    await store.insert_decisions([rec(n, "block") for n in range(5)])
    await store.insert_allows(
        [(old, "proxy", "client", None, "@a:corp.example", "PUT", "client_send", None, 7, 9)]
    )
    log, metrics = make_log(store, prune_batch=5000, prune_pause=0.001)
    result = await log.prune()
    assert result is not None
    assert (result["decisions"], result["allows"]) == (12_001, 1)
    assert len(await store.query_decisions(DecisionQuery(limit=100))) == 5
    assert metric(metrics, 'dmz_api_gateway_decisions_pruned_total{table="decisions"}') == 12_001
    assert "Decision log retention removed 12001 records, 1 allow aggregates and 0 day" in (
        caplog.text
    )


async def test_retention_never_passes_the_export_hold(store: RuleStore) -> None:
    old = int(NOW * 1000) - 100 * DAY_MS
    await store.insert_decisions([rec(n, "block", ts=old + n * 1000) for n in range(10)])
    await store.hold_export(old + 5000)
    await store.hold_export(old + 8000)  # a later hold never loosens an earlier one
    log, _ = make_log(store)
    result = await log.prune()
    assert result is not None and result["decisions"] == 5
    assert result["cutoff_ms"] == old + 5000


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_stream_to_a_file_carries_blocks_and_aggregates(
    store: RuleStore, tmp_path: Path
) -> None:
    out = tmp_path / "decisions.jsonl"
    clock = Clock()
    log, metrics = make_log(store, clock, stream={"to": "file", "path": str(out)})
    for n in range(7):
        log.record(rec(n), "client_send")
    log.record(rec(1, "block"), "client_send")
    await log.flush()
    await log.flush_allows(everything=True)
    objects = read_lines(out)
    assert [o["kind"] for o in objects] == ["decision", "aggregate"]
    block, aggregate = objects
    assert block["schema"] == 1 and block["outcome"] == "block" and block["rule"] == "r1"
    assert block["user"] == "@a:corp.example" and block["time"].endswith("Z")
    assert set(block) >= {"ts", "source", "class", "origin", "method", "path", "room", "version"}
    assert aggregate["count"] == 7 and aggregate["outcome"] == "allow"
    assert aggregate["interval_s"] == 60 and aggregate["endpoint"] == "client_send"
    # logrotate moves the file away: the next lines go to a new file at the same path.
    out.rename(tmp_path / "decisions.jsonl.1")
    log.record(rec(2, "block"), "client_send")
    await log.flush()
    assert [o["kind"] for o in read_lines(out)] == ["decision"]
    assert metric(metrics, "dmz_api_gateway_decision_stream_lines_total") == 3


async def test_stream_to_stdout(store: RuleStore, capsys: pytest.CaptureFixture[str]) -> None:
    log, _ = make_log(store, allow="full", stream={"to": "stdout"})
    log.record(rec(1), "client_send")
    await log.flush()
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["kind"] == "decision" and json.loads(line)["outcome"] == "allow"


def syslog_json(datagram: bytes) -> dict[str, Any]:
    text = datagram.decode()
    assert text.startswith("<134>1 ")  # local0.info, RFC 5424
    assert " dmz_api-gateway " in text and " decision - " in text
    return json.loads(text.split(" decision - ", 1)[1])  # type: ignore[no-any-return]


async def test_stream_to_syslog_over_udp(store: RuleStore) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    try:
        port = listener.getsockname()[1]
        log, _ = make_log(store, stream={"to": "syslog", "host": "127.0.0.1", "port": port})
        log.record(rec(1, "block"), "client_send")
        log.record(rec(2, "would_block"), "client_send")
        await log.flush()
        got = [syslog_json(listener.recv(65536)) for _ in range(2)]
        assert [g["outcome"] for g in got] == ["block", "would_block"]
    finally:
        listener.close()


async def test_stream_to_syslog_on_a_unix_socket(store: RuleStore, tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(5)
    try:
        log, _ = make_log(store, stream={"to": "syslog", "path": str(path)})
        log.record(rec(1, "block"), "client_send")
        await log.flush()
        assert syslog_json(listener.recv(65536))["outcome"] == "block"
    finally:
        listener.close()


async def test_a_failing_stream_holds_retention_back(store: RuleStore, tmp_path: Path) -> None:
    # A syslog socket nobody listens on: every write fails, lines wait in the backlog.
    path = tmp_path / "nobody.sock"
    old = int(NOW * 1000) - 100 * DAY_MS
    log, metrics = make_log(store, queue_size=3, stream={"to": "syslog", "path": str(path)})
    for n in range(2):
        log.record(rec(n, "block", ts=old + n), "client_send")
    await log.flush()
    assert log.status()["stream_backlog"] == 2
    result = await log.prune()
    assert result is not None and result["decisions"] == 0  # held at the backlog's first ts
    for n in range(2, 4):
        log.record(rec(n, "block", ts=old + n), "client_send")
    await log.flush()  # backlog 4 > queue_size 3: the oldest line is lost from the stream
    assert metric(metrics, "dmz_api_gateway_decision_stream_lost_total") == 1
    await log.prune()  # stores the export hold, then prunes nothing
    assert await store.export_hold() == old
    assert len(await store.query_decisions(DecisionQuery(limit=10))) == 4


async def test_upgrade_keeps_existing_records(tmp_path: Path) -> None:
    from dmz_api.db import role_upgrade_table

    v3 = role_upgrade_table("gateway")
    v3.upgrades = upgrade_table.upgrades[:4]  # up to the step before day partitions
    url = f"sqlite:{tmp_path / 'old.db'}"
    old = Database.create(url, upgrade_table=v3)
    await old.start()
    await RuleStore(old).insert_decisions([rec(n, "block") for n in range(25)])
    await old.stop()
    new = Database.create(url, upgrade_table=upgrade_table)
    await new.start()
    try:
        store = RuleStore(new)
        rows = await store.query_decisions(DecisionQuery(limit=100))
        assert len(rows) == 25 and rows[0]["path"].endswith("/24")
        await store.insert_allows(
            [(0, "proxy", "client", None, None, "GET", "client_sync", None, 1, 5)]
        )
        assert (await store.query_allows(DecisionQuery()))[0]["count"] == 5
    finally:
        await new.stop()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"allow": "some"}, "decision_log.allow"),
        ({"min_free_bytes": "lots"}, "decision_log.min_free_bytes"),
        ({"min_free_percent": 100}, "decision_log.min_free_percent"),
        ({"stream": {"to": "kafka"}}, "decision_log.stream.to"),
        ({"stream": {"to": "file"}}, "decision_log.stream.path"),
        ({"stream": {"to": "file", "path": "/no/such/dir/x"}}, "decision_log.stream.path"),
    ],
)
def test_bad_decision_log_config_is_refused(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        log_config(**options)


def test_sizes_in_config() -> None:
    assert log_config(min_free_bytes="2G").min_free_bytes == 2 * 1024**3
    assert log_config(min_free_bytes=1000).min_free_bytes == 1000
    assert log_config().allow == "aggregate" and log_config().stream is None


async def test_api_reads_aggregates_and_status(make_client: Any) -> None:
    client: GatewayClient = await make_client(
        decision_log={"flush_interval": 0.05, "min_free_percent": 99.99}
    )
    for _ in range(3):
        await client.get("/v1/authz", headers={"X-Original-URI": "/", "X-Original-Method": "GET"})
    resp = await client.get("/v1/status", headers=READER)
    assert resp.status == 200
    status = await resp.json()
    schema_validator("GatewayStatus").validate(status)
    log = status["decision_log"]
    assert (log["allow"], log["allow_now"], log["degraded"]) == ("aggregate", "aggregate", True)
    assert status["version"] == 0 and log["dropped"] == 0
    # The service writes a minute's counts once it has passed; stop-time flush covers it.
    from dmz_api.gateway.service import GATEWAY

    await client.app[GATEWAY].decision_log.flush_allows(everything=True)
    resp = await client.get("/v1/decisions?kind=aggregate", headers=READER)
    body = await resp.json()
    assert sum(a["count"] for a in body["decisions"]) >= 3
    for aggregate in body["decisions"]:
        schema_validator("AllowAggregate").validate(aggregate)
    resp = await client.get("/v1/decisions?kind=aggregate&rule=r1", headers=ADMIN)
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_PARAM"
    resp = await client.get("/v1/decisions?kind=everything", headers=ADMIN)
    assert resp.status == 400
    resp = await client.get("/v1/status")
    assert resp.status == 401
    await asyncio.sleep(0)


def test_sqlite_batches_use_few_statement_sizes() -> None:
    # Each distinct size is a prepared statement cached per connection: keep them few.
    from dmz_api.gateway.store import _sqlite_parts

    sizes: set[int] = set()
    for count in range(1, 2600):
        parts = _sqlite_parts(count)
        assert sum(parts) == count and len(parts) <= 12
        sizes.update(parts)
    assert sizes == {1000, *(2**k for k in range(10))}
