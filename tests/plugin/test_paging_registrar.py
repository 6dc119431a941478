"""The plugin's registrar client follows the real registrar's pages to the end.

The sweep's listing (``Registrar.all_tokens``/``all_guests``) runs against dmz_api's real
registrar routes in-process, so the cursors it follows are the ones the service hands out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from dmz_api.app import init_app
from dmz_api.registrar import REGISTRAR
from plugin.dmz import Acting, DmzTransport, Registrar
from tests.registrar.conftest import API_KEY, app_config, registrar_section
from tests.registrar.fakes import FakeHomeserver


class ClientConfig:
    """The three settings DmzTransport reads from the plugin's config."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dmz_api_key = API_KEY
        self.dmz_timeout = 10.0

    def dmz_url(self, role: str) -> str:
        return self.url


async def test_every_page_of_open_tokens(tmp_path: Path) -> None:
    app = init_app(app_config(f"sqlite:{tmp_path / 'registrar.db'}", registrar_section()))
    server = TestServer(app)
    await server.start_server()
    app[REGISTRAR].adapter = FakeHomeserver()
    base = str(server.make_url("")).rstrip("/")
    acting = Acting("@bot:corp.example", "req-paging")
    try:
        async with aiohttp.ClientSession() as http:
            config: Any = ClientConfig(base)
            registrar = Registrar(DmzTransport(http, config, logging.getLogger("t")))
            minted = []
            for i in range(7):
                headers = {"Authorization": f"Bearer {API_KEY}", "X-Acting-User": f"@s{i}:corp"}
                async with http.post(f"{base}/v1/tokens", json={}, headers=headers) as resp:
                    assert resp.status == 201
                    minted.append((await resp.json())["id"])
            first = await registrar.tokens(acting, status="active", limit=3)
            every = await registrar.all_tokens(acting, status="active", page_size=3)
    finally:
        await server.close()
    assert len(first) == 3
    assert sorted(token.id for token in every) == sorted(minted)
    assert {token.sponsor for token in every} == {f"@s{i}:corp" for i in range(7)}
