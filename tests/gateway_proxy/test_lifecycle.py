"""The proxy's config keys and its life with the app: started with ``gateway.listen``,
absent without it, stopped on cleanup."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from devstack.synapse import make_self_signed_cert
from dmz_api.app import init_app
from dmz_api.config_reader import ConfigError, Section
from dmz_api.gateway import GATEWAY_PROXY
from dmz_api.gateway.config import parse_gateway_config

from .conftest import Upstream, gateway_config


def parse_listen(listen: dict[str, Any], base: Path) -> Any:
    section = {"server_name": "corp.example", "upstream": "http://127.0.0.1:8008"}
    return parse_gateway_config(Section({**section, "listen": listen}, "gateway", base)).listen


def test_tls_keys(tmp_path: Path) -> None:
    make_self_signed_cert(tmp_path)
    listen = parse_listen(
        {"port": 8448, "tls_certificate": "tls.crt", "tls_private_key": "tls.key"}, tmp_path
    )
    assert listen.tls_certificate == tmp_path / "tls.crt"
    assert listen.tls_private_key == tmp_path / "tls.key"
    plain = parse_listen({"port": 8448}, tmp_path)
    assert plain.tls_certificate is None and plain.tls_private_key is None


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ({"tls_certificate": "tls.crt"}, "gateway.listen.tls_private_key: is required"),
        ({"tls_private_key": "tls.key"}, "gateway.listen.tls_certificate: is required"),
        (
            {"tls_certificate": "nope.crt", "tls_private_key": "tls.key"},
            "gateway.listen.tls_certificate: .*nope.crt is not a readable file",
        ),
    ],
)
def test_tls_key_errors(tmp_path: Path, listen: dict[str, Any], message: str) -> None:
    make_self_signed_cert(tmp_path)
    with pytest.raises(ConfigError, match=message):
        parse_listen({"port": 8448, **listen}, tmp_path)


async def test_no_listener_without_listen(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(
        init_app(gateway_config(tmp_path, "http://127.0.0.1:8008", listen=None))
    )
    assert GATEWAY_PROXY not in client.app


async def test_listener_stops_with_the_app(upstream: Upstream, tmp_path: Path) -> None:
    app = init_app(gateway_config(tmp_path, upstream.url))
    runner = web.AppRunner(app)
    await runner.setup()
    proxy = app[GATEWAY_PROXY]
    assert proxy.port
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.close()
    await runner.cleanup()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
