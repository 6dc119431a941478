"""Real components around the gateway: ``python -m dmz_api`` subprocesses, nginx, Synapses.

Each test builds its own gateway (a fresh database, so its rules start empty); the
homeservers come from the session fixtures in ``tests/conftest.py`` or from the test.
``Gateway`` (the admin-API helpers) comes from ``devstack.border``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.border import Gateway, quick_gateway

AUTHZ_SECRET = "gateway-e2e-authz-secret-" + "x" * 8
# What every gateway here is given besides ``quick_gateway()``: the secret nginx and
# Synapse's antispam module present, and INFO logs.
AUTHZ = {"authz": {"secret": AUTHZ_SECRET}}
LOG_LEVEL = "INFO"


def gateway_config(server_name: str, **gateway: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"server_name": server_name, **AUTHZ, **quick_gateway()}
    section.update(gateway)
    return {"log_level": LOG_LEVEL, "gateway": section}


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``start_gateway(server_name, env=..., **gateway_section)`` → a running gateway.

    Every gateway started is stopped at teardown.
    """
    started: list[Gateway] = []

    def start(server_name: str, *, env: dict[str, str] | None = None, **gateway: Any) -> Gateway:
        config = gateway_config(server_name, **gateway)
        gw = Gateway(tmp_path / f"gateway{len(started)}", config, name="dmz_api-gateway", env=env)
        started.append(gw)
        gw.start()
        return gw

    yield start
    for gw in started:
        gw.stop()
