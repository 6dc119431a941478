"""``GET /audit.jsonl?since=`` on the plugin web app, mounted the way maubot mounts it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from plugin import BastionBot
from plugin.audit import GENESIS, AuditEntry, AuditRecord, Outcome

from .conftest import AUDITOR, EXPORT_KEY, NOBODY, Chat
from .fakes import FakeRegistrar

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def http(bot: BastionBot, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    assert bot.webapp is not None
    plugin_webapp = bot.webapp

    async def dispatch(request: web.Request) -> web.StreamResponse:
        return await plugin_webapp.handle(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return await aiohttp_client(app)


def auth(key: str = EXPORT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def fill(chat: Chat, count: int) -> None:
    for _ in range(count):
        await chat.send("!bastion whoami", sender=NOBODY)


async def lines(response: Any) -> list[dict[str, Any]]:
    text = await response.text()
    return [json.loads(line) for line in text.splitlines()]


async def test_export_everything(chat: Chat, http: TestClient[Any, Any]) -> None:
    await fill(chat, 3)
    response = await http.get("/audit.jsonl", headers=auth())
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Audit-Head-Seq"] == "3"
    entries = await lines(response)
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS
    assert response.headers["X-Audit-Head-Hash"] == entries[-1]["hash"]
    # The receiving side can recompute every hash from the exported fields.
    for item in entries:
        assert AuditEntry(**item).expected_hash() == item["hash"]


async def test_export_since_a_sequence_number(chat: Chat, http: TestClient[Any, Any]) -> None:
    await fill(chat, 4)
    response = await http.get("/audit.jsonl", params={"since": "2"}, headers=auth())
    assert [e["seq"] for e in await lines(response)] == [3, 4]


async def test_export_since_a_duration(chat: Chat, http: TestClient[Any, Any]) -> None:
    await fill(chat, 2)
    response = await http.get("/audit.jsonl", params={"since": "1h"}, headers=auth())
    assert len(await lines(response)) == 2


async def test_export_pages_through_long_trails(
    chat: Chat, http: TestClient[Any, Any], bot: BastionBot
) -> None:
    for n in range(1001):
        await bot.services.audit.append(
            AuditRecord(
                room_id="!r:x",
                event_id=f"$e{n}",
                sender=AUDITOR,
                command="audit",
                args={},
                outcome=Outcome.OK,
                detail="",
                request_id="r",
            )
        )
    response = await http.get("/audit.jsonl", headers=auth())
    assert [e["seq"] for e in await lines(response)] == list(range(1, 1002))


async def test_export_bad_since(http: TestClient[Any, Any]) -> None:
    response = await http.get("/audit.jsonl", params={"since": "yesterday"}, headers=auth())
    assert response.status == 400
    assert (await response.json())["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong-key"), {"Authorization": EXPORT_KEY}, {"Authorization": "Basic eDp5"}],
)
async def test_export_needs_the_key(
    chat: Chat, http: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    await fill(chat, 1)
    response = await http.get("/audit.jsonl", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_export_off_without_a_key(
    http: TestClient[Any, Any], maubot_plugin_config: Any
) -> None:
    maubot_plugin_config["audit.export_key"] = ""
    response = await http.get("/audit.jsonl", headers=auth(""))
    assert response.status == 404


def gauges(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition (no labels in these)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            found[name] = float(value)
    return found


async def test_metrics_show_when_the_sweep_last_went_through(
    bot: BastionBot, registrar: FakeRegistrar, http: TestClient[Any, Any]
) -> None:
    assert await bot.revoker.sweep() == 0
    response = await http.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    first = gauges(await response.text())
    assert set(first) == {
        "bastion_bot_sweep_last_success_timestamp_seconds",
        "bastion_bot_sweep_last_attempt_timestamp_seconds",
        "bastion_bot_sweep_interval_seconds",
    }
    assert first["bastion_bot_sweep_interval_seconds"] == bot.config.sweep_interval
    succeeded = first["bastion_bot_sweep_last_success_timestamp_seconds"]
    assert succeeded >= first["bastion_bot_sweep_last_attempt_timestamp_seconds"] > 0
    # With the registrar down the sweep is tried but does not go through.
    registrar.fail = (500, "down")
    assert await bot.revoker.sweep() == 0
    failed = gauges(await (await http.get("/metrics")).text())
    assert failed["bastion_bot_sweep_last_success_timestamp_seconds"] == succeeded
    assert failed["bastion_bot_sweep_last_attempt_timestamp_seconds"] > succeeded
