"""Fixtures for the registrar: databases, a fake homeserver, the service and the app."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from mautrix.util.async_db import Database

from devstack.postgres import Postgres
from dmz_api.app import init_app
from dmz_api.config import parse_config
from dmz_api.metrics import Metrics
from dmz_api.registrar import REGISTRAR, upgrade_table
from dmz_api.registrar.config import parse_registrar_config
from dmz_api.registrar.crypto import RegistrarKeys
from dmz_api.registrar.service import RegistrarMetrics, RegistrarService
from dmz_api.registrar.store import RegistrarStore

from .fakes import FakeHomeserver

API_KEY = "registrar-test-key-" + "x" * 24
GUESTS_ONLY_KEY = "registrar-guests-key-" + "y" * 24
SPONSOR = "@alice:corp.example"
SECRET = "registrar-test-secret-" + "z" * 24


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def registrar_section(kind: str = "synapse", **extra: Any) -> dict[str, Any]:
    homeserver: dict[str, Any] = {
        "kind": kind,
        "url": "http://127.0.0.1:9",
        "server_name": "dmz.test",
    }
    if kind == "synapse":
        homeserver["admin_token"] = "admin-token"
    else:
        homeserver["registration_token"] = "static-token"
    section: dict[str, Any] = {
        "homeserver": homeserver,
        "secret": SECRET,
        "rate_limit": {"per_minute": 6000, "burst": 1000},
    }
    for key, value in extra.items():
        if key == "homeserver":
            homeserver.update(value)
        else:
            section[key] = value
    return section


def app_config(
    database: str, registrar: dict[str, Any], public_url: str = "http://dmz.test"
) -> Any:
    return parse_config(
        {
            "server": {"public_url": public_url},
            "database": database,
            "api_keys": [
                {"name": "bot", "key": API_KEY, "scopes": ["tokens", "guests"]},
                {"name": "viewer", "key": GUESTS_ONLY_KEY, "scopes": ["guests"]},
            ],
            "registrar": registrar,
        }
    )


def auth(acting: str | None = SPONSOR, key: str = API_KEY, **extra: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", **extra}
    if acting is not None:
        headers["X-Acting-User"] = acting
    return headers


CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.create(
        f"sqlite:{tmp_path / 'registrar.db'}",
        upgrade_table=upgrade_table,
        db_args={"min_size": 4},
    )
    await database.start()
    yield database
    await database.stop()


@pytest.fixture
def store(db: Database) -> RegistrarStore:
    return RegistrarStore(db)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake_hs() -> FakeHomeserver:
    return FakeHomeserver()


def make_service(
    store: RegistrarStore,
    hs: FakeHomeserver,
    clock: Clock,
    *,
    kind: str = "synapse",
    secret: bytes | None = b"s" * 32,
    **extra: Any,
) -> RegistrarService:
    from dmz_api.config_reader import Section

    config = parse_registrar_config(Section(registrar_section(kind, **extra), "registrar"))
    service = RegistrarService(
        config,
        "https://dmz.test",
        store,
        hs,
        RegistrarKeys(secret),
        RegistrarMetrics(Metrics()),
        clock=clock,
    )
    service.legacy_settle_s = 0.0  # the fake counts a use in the same step as its check
    return service


@pytest.fixture
def service(store: RegistrarStore, fake_hs: FakeHomeserver, clock: Clock) -> RegistrarService:
    return make_service(store, fake_hs, clock)


@pytest.fixture
async def client(
    aiohttp_client: Any, tmp_path: Path, fake_hs: FakeHomeserver
) -> TestClient[web.Request, web.Application]:
    """The whole dmz_api app (registrar role) with the fake homeserver behind it."""
    app = init_app(app_config(f"sqlite:{tmp_path / 'app.db'}", registrar_section()))
    test_client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    app[REGISTRAR].adapter = fake_hs
    return test_client


# ---- PostgreSQL (the shared-state engine): ``postgres`` from tests/conftest.py ----


@pytest.fixture(params=["sqlite", "postgres"])
async def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The registrar schema on SQLite and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'registrar.db'}"
    else:
        cluster: Postgres = request.getfixturevalue("postgres")
        url = await cluster.new_database()
    database = Database.create(url, upgrade_table=upgrade_table, db_args={"min_size": 4})
    await database.start()
    yield database
    await database.stop()
