"""A homeserver behind the gateway on loopback: its federation reaches dmz_api's proxy first.

    border = GatewayedSynapse(tmp / "corp", name="corp")
    partner = Synapse(tmp / "dmz", name="dmz", federation=True)
    with border.started(also=(partner.start,)):   # the three start side by side
        border.synapse.server_name                # "localhost:<gateway proxy port>"
        border.gateway.add_rule({"id": "p", "kind": "server_allow", "params": {...}})
        border.gateway.wait_decisions(bool, origin=partner.server_name)

The Synapse is named ``localhost:<proxy port>``, so every other server that federates with
it connects to the gateway's TLS listener (the certificate Synapse itself serves, SAN
``localhost`` and ``127.0.0.1``); the gateway forwards what its rules allow to the Synapse's
own federation listener and verifies that hop against the same certificate. What the
Synapse sends out goes straight to the other server: the border judges what comes in.

``Gateway`` is any gateway-only ``dmz_api`` with helpers for its admin API (rules and the
decision log), called as ``Gateway.actor``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .dmz import DmzApi
from .matrix import MatrixUser
from .ports import free_port
from .process import start_side_by_side
from .synapse import Synapse, make_self_signed_cert

ACTOR = "@sec:corp.example"


def quick_gateway() -> dict[str, Any]:
    """Gateway-section keys for tests: rules reload quickly and every allow is recorded in
    full, so a test can read a decision right after the request."""
    return {
        "reload_interval": 0.2,
        "decision_log": {"flush_interval": 0.05, "batch_size": 50, "allow": "full"},
    }


class Gateway(DmzApi):
    """A ``dmz_api`` gateway with helpers for the admin API, each call made as ``actor``."""

    actor = ACTOR

    def rules_call(self, method: str, path: str, body: Any = None) -> Any:
        status, result = self.call(method, path, body, acting_user=self.actor)
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


def wait_consulted(
    gateway: Gateway,
    member: MatrixUser,
    room: str,
    *,
    timeout: float = 30.0,
    probe: str = "probe",
) -> int:
    """Send ``member``'s messages (``"{probe} {n}"``) into ``room`` until its homeserver asks
    ``gateway``'s policy server before it sends; how many it took.

    Right after a (partial-state, "faster") join, Synapse does not see the policy server's
    member in the room yet and sends without asking; the window closes within seconds. Each
    message is recorded by the gateway once the homeserver asks about it.
    """
    deadline = time.monotonic() + timeout
    probes = 0
    while time.monotonic() < deadline:
        member.send(room, f"{probe} {probes}")
        probes += 1
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            if gateway.decisions(source="policy_server", origin=member.hs.server_name, limit="1"):
                return probes
            time.sleep(0.05)
    raise AssertionError(
        f"{member.hs.server_name} never asked the policy server in {timeout:.0f} s"
    )


def endpoint(decision: Mapping[str, Any]) -> str:
    """``make_join`` for a decision on ``/_matrix/federation/v1/make_join/{roomId}/{userId}``."""
    return str(decision["path"]).split("/")[4]


class GatewayedSynapse:
    """A federating Synapse and the ``dmz_api`` gateway in front of it.

    ``gateway`` is merged into the gateway section (over ``quick_gateway()``); ``api_key``
    lets the gateway share the key of a registrar the same bot talks to; ``synapse_config``
    is deep-merged into the Synapse's homeserver.yaml. ``admin_port`` fixes the gateway's
    own HTTP port (admin API, ``/v1/antispam``) when the Synapse's config must name it
    before the gateway exists; ``log_level`` and ``env`` are the gateway process's.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        name: str,
        gateway: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        synapse_config: Mapping[str, Any] | None = None,
        admin_port: int | None = None,
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.proxy_port = free_port()
        self.synapse = Synapse(
            self.workdir / name,
            name=name,
            federation=True,
            server_name=f"localhost:{self.proxy_port}",
            extra_config=synapse_config,
        )
        self.synapse.workdir.mkdir(parents=True, exist_ok=True)
        # Synapse finds this certificate in its directory and serves it too.
        self.cert, self.key = make_self_signed_cert(self.synapse.workdir)
        section: dict[str, Any] = {
            "server_name": self.synapse.server_name,
            "listen": {
                "host": "127.0.0.1",
                "port": self.proxy_port,
                "tls_certificate": str(self.cert),
                "tls_private_key": str(self.key),
            },
            "upstream": self.synapse.federation_url,
            "upstream_ca_file": str(self.cert),
            **quick_gateway(),
            **(gateway or {}),
        }
        config: dict[str, Any] = {"log_level": log_level, "gateway": section}
        if admin_port is not None:
            config["server"] = {"port": admin_port}
        self.gateway = Gateway(
            self.workdir / f"{name}-gateway",
            config,
            name=f"gateway-{name}",
            env=env,
            api_key=api_key,
        )

    def start(self, also: Sequence[Callable[[], object]] = ()) -> GatewayedSynapse:
        """Start the Synapse, the gateway and ``also`` side by side."""
        start_side_by_side(self.synapse.start, self.gateway.start, *also)
        return self

    def stop(self) -> None:
        self.gateway.stop()
        self.synapse.stop()

    @contextlib.contextmanager
    def started(self, also: Sequence[Callable[[], object]] = ()) -> Iterator[GatewayedSynapse]:
        try:
            yield self.start(also)
        finally:
            self.stop()
