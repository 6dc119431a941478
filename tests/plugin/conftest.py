"""Fixtures for the plugin's handler tests, on top of ``maubot.testing``'s.

The bot runs in-process (maubot's ``TestBot``: replies are recorded, not sent) against
fake HTTP services: the registrar (``fake_dmz``) and the internal homeserver
(``fake_hs``: admin user API, member state, room creation).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from maubot.loader import PluginMeta
from maubot.matrix import MaubotMessageEvent
from maubot.plugin_server import PluginWebApp
from maubot.standalone.loader import FileSystemLoader
from maubot.testing import TestBot
from mautrix.types import (
    EventID,
    EventType,
    MessageEvent,
    MessageType,
    ReactionEvent,
    ReactionEventContent,
    RelatesTo,
    RelationType,
    RoomID,
    TextMessageEventContent,
    UserID,
)
from mautrix.util.async_db import Database, UpgradeTable
from mautrix.util.logging import TraceLogger

from plugin import BastionBot
from plugin.audit import AuditEntry
from plugin.config import Config
from plugin.migrations import upgrade_table

from .fake_gateway import GatewayDouble
from .fakes import ADMIN_TOKEN, REGISTRAR_KEY, FakeHomeserver, FakeRegistrar, serve

ROOT = Path(__file__).resolve().parents[2]
CONTROL = RoomID("!control:corp.example")
OTHER_ROOM = RoomID("!elsewhere:corp.example")
BOT = UserID("@bastion:corp.example")
STAFF = UserID("@alice:corp.example")
AUDITOR = UserID("@carol:corp.example")
# The gateway admin of the ``!sbg`` tests (``gateway_admin_config``).
SECURITY = UserID("@sec:corp.example")
NOBODY = UserID("@mallory:corp.example")
WEBAPP_URL = "https://bot.corp.example/_matrix/maubot/plugin/bastion"
EXPORT_KEY = "export-key-0123456789abcdef"

_event_ids = itertools.count(1)


class RecordingBot(TestBot):
    """maubot's TestBot whose sent events get ids (confirmation prompts are keyed by them)."""

    def __init__(self, mxurl: str) -> None:
        super().__init__(mxid=BOT, mxurl=mxurl)
        self.client.mxid = BOT
        self.sent_ids: list[EventID] = []

    async def _mock_send_message_event(
        self, room_id: RoomID, event_type: EventType, content: Any, txn_id: Any = None, **kw: Any
    ) -> EventID:
        await super()._mock_send_message_event(room_id, event_type, content, txn_id, **kw)
        self.sent_ids.append(EventID(f"$sent{next(_event_ids)}"))
        return self.sent_ids[-1]


@pytest.fixture
async def fake_dmz() -> AsyncIterator[tuple[FakeRegistrar, str]]:
    registrar = FakeRegistrar()
    async with serve(registrar.app()) as server:
        yield registrar, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def fake_hs() -> AsyncIterator[tuple[FakeHomeserver, str]]:
    homeserver = FakeHomeserver()
    for user in (STAFF, AUDITOR, NOBODY):
        homeserver.add_user(user)
        homeserver.members[(CONTROL, user)] = "join"
    async with serve(homeserver.app()) as server:
        yield homeserver, str(server.make_url("")).rstrip("/")


@pytest.fixture
def registrar(fake_dmz: tuple[FakeRegistrar, str]) -> FakeRegistrar:
    return fake_dmz[0]


@pytest.fixture
def homeserver(fake_hs: tuple[FakeHomeserver, str]) -> FakeHomeserver:
    return fake_hs[0]


@pytest.fixture
def maubot_plugin_path() -> Path:
    return ROOT


@pytest.fixture
def maubot_plugin_class() -> type[BastionBot]:
    return BastionBot


@pytest.fixture
def maubot_plugin_config_class() -> type[Config]:
    return Config


@pytest.fixture
def maubot_upgrade_table() -> UpgradeTable:
    return upgrade_table


@pytest.fixture
async def maubot_test_bot(fake_hs: tuple[FakeHomeserver, str]) -> AsyncIterator[RecordingBot]:
    test_bot = RecordingBot(fake_hs[1])
    yield test_bot
    await test_bot.client.api.session.close()


@pytest.fixture
def maubot_plugin_config_dict(
    fake_dmz: tuple[FakeRegistrar, str], fake_hs: tuple[FakeHomeserver, str]
) -> dict[str, Any]:
    return {
        "control_rooms": [CONTROL],
        "roles": {
            "operator": [STAFF, "@ops-*:corp.example"],
            "gateway_admin": [],
            "auditor": [AUDITOR],
        },
        "identity": {
            "mode": "synapse_admin",
            "homeserver_url": fake_hs[1],
            "admin_token": ADMIN_TOKEN,
            "timeout": "2s",
        },
        "dmz": {
            "registrar_url": fake_dmz[1],
            "gateway_url": fake_dmz[1],
            "api_key": REGISTRAR_KEY,
            "timeout": "10s",
        },
        "token_defaults": {"uses": 1, "expires": "24h"},
        "on_staff_deactivated": {"revoke_tokens": True, "guests": "keep"},
        "sweep_interval": 0,
        "registrations": {"poll_interval": 0},
        "audit": {"export_key": EXPORT_KEY},
    }


@pytest.fixture
async def maubot_plugin(
    maubot_test_bot: RecordingBot,
    maubot_plugin_db: Database,
    maubot_plugin_path: Path,
    maubot_plugin_config: Config,
    maubot_plugin_meta: PluginMeta,
) -> AsyncIterator[BastionBot]:
    """maubot.testing's fixture, plus the web app (it passes none) and a stop at the end."""
    async with aiohttp.ClientSession() as http:
        instance = BastionBot(
            client=maubot_test_bot.client,
            loop=asyncio.get_running_loop(),
            http=http,
            instance_id="tests",
            log=TraceLogger("test"),
            config=maubot_plugin_config,
            database=maubot_plugin_db,
            webapp=PluginWebApp(),
            webapp_url=WEBAPP_URL,
            loader=FileSystemLoader(str(maubot_plugin_path), maubot_plugin_meta),
        )
        await instance.internal_start()
        yield instance
        await instance.internal_stop()


@pytest.fixture
def bot(maubot_plugin: BastionBot) -> BastionBot:
    return maubot_plugin


class Chat:
    """Sends commands as staff and reads what the bot answered."""

    def __init__(self, test_bot: RecordingBot, plugin: BastionBot) -> None:
        self.test_bot = test_bot
        self.plugin = plugin

    async def send(
        self,
        body: str,
        *,
        sender: UserID = STAFF,
        room: RoomID = CONTROL,
        event_id: str = "",
        thread: EventID | None = None,
    ) -> EventID:
        event_id = EventID(event_id or f"$cmd{next(_event_ids)}")
        content = TextMessageEventContent(msgtype=MessageType.TEXT, body=body)
        if thread:
            content.set_thread_parent(thread)
        event = MessageEvent(
            type=EventType.ROOM_MESSAGE,
            room_id=room,
            event_id=event_id,
            sender=sender,
            timestamp=0,
            content=content,
        )
        await self.test_bot.dispatch(
            EventType.ROOM_MESSAGE, MaubotMessageEvent(event, self.test_bot.client)
        )
        return event_id

    async def react(
        self, target: EventID, key: str = "✅", *, sender: UserID = STAFF, room: RoomID = CONTROL
    ) -> None:
        content = ReactionEventContent(
            relates_to=RelatesTo(rel_type=RelationType.ANNOTATION, event_id=target, key=key)
        )
        event = ReactionEvent(
            type=EventType.REACTION,
            room_id=room,
            event_id=EventID(f"$react{next(_event_ids)}"),
            sender=sender,
            timestamp=0,
            content=content,
        )
        await self.test_bot.dispatch(EventType.REACTION, event)

    async def ask(self, body: str, **kwargs: Any) -> str:
        """Send ``body`` and return the text of the single reply."""
        before = len(self.test_bot.responded)
        await self.send(body, **kwargs)
        replies = self.test_bot.responded[before:]
        assert len(replies) == 1, [r.content.body for r in replies]
        return str(replies[0].content.body)

    @property
    def last(self) -> Any:
        return self.test_bot.responded[-1].content

    async def audit(self) -> list[AuditEntry]:
        return await self.plugin.services.audit.recent(limit=100)


@pytest.fixture
def chat(maubot_test_bot: RecordingBot, bot: BastionBot) -> Chat:
    return Chat(maubot_test_bot, bot)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayDouble]:
    """dmz_api's gateway role in-process (``fake_gateway``), served on a local port."""
    double = GatewayDouble.create(tmp_path)
    async with serve(double.app) as server:
        double.url = str(server.make_url("")).rstrip("/")
        yield double


def gateway_admin_config(
    config: dict[str, Any], gateway: GatewayDouble, homeserver: FakeHomeserver
) -> dict[str, Any]:
    """``config`` with ``SECURITY`` a gateway admin in the control room, on ``gateway``."""
    homeserver.add_user(SECURITY)
    homeserver.members[(CONTROL, SECURITY)] = "join"
    config = dict(config)
    config["roles"] = {**config["roles"], "gateway_admin": [SECURITY]}
    config["dmz"] = {**config["dmz"], "gateway_url": gateway.url}
    return config
