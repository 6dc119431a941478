"""Real components around the gateway: ``python -m dmz_api`` subprocesses, nginx, Synapses.

Each test builds its own gateway (a fresh database, so its rules start empty); the
homeservers come from the session fixtures in ``tests/conftest.py`` or from the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from devstack.dmz import DmzApi

AUTHZ_SECRET = "gateway-e2e-authz-secret-" + "x" * 8
ACTOR = "@sec:corp.example"


class Gateway(DmzApi):
    """A gateway-only ``dmz_api`` with helpers for the admin API."""

    def rules_call(self, method: str, path: str, body: Any = None) -> Any:
        status, result = self.call(method, path, body, acting_user=ACTOR)
        if status not in (200, 201):
            raise AssertionError(f"{method} {path} -> {status} {result}")
        return result

    def add_rule(self, rule: dict[str, Any]) -> Any:
        return self.rules_call("POST", "/v1/rules", rule)

    def delete_rule(self, rule_id: str) -> Any:
        return self.rules_call("DELETE", f"/v1/rules/{rule_id}")

    def decisions(self, **query: str) -> list[dict[str, Any]]:
        query.setdefault("limit", "500")
        result = self.rules_call("GET", f"/v1/decisions?{urlencode(query)}")
        return list(result["decisions"])

    def wait_decisions(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0, **query: str
    ) -> list[dict[str, Any]]:
        """The recorded decisions matching ``query`` once ``done(rows)`` (written in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.decisions(**query)
            if done(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"decisions for {query} in {timeout} s: {rows}")
            time.sleep(0.05)


def gateway_config(server_name: str, **gateway: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "server_name": server_name,
        "authz": {"secret": AUTHZ_SECRET},
        "decision_log": {"flush_interval": 0.05, "batch_size": 50, "allow": "full"},
        "reload_interval": 0.2,
    }
    section.update(gateway)
    return {"log_level": "INFO", "gateway": section}


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
