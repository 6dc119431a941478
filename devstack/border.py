"""A homeserver behind the gateway on loopback: its federation reaches dmz_api's proxy first.

    border = GatewayedSynapse(tmp / "corp", name="corp")
    partner = Synapse(tmp / "dmz", name="dmz", federation=True)
    with border.started(also=(partner.start,)):   # the three start side by side
        border.synapse.server_name                # "localhost:<gateway proxy port>"
        border.gateway.call("GET", "/v1/decisions", acting_user="@sec:corp")

The Synapse is named ``localhost:<proxy port>``, so every other server that federates with
it connects to the gateway's TLS listener (the certificate Synapse itself serves, SAN
``localhost`` and ``127.0.0.1``); the gateway forwards what its rules allow to the Synapse's
own federation listener and verifies that hop against the same certificate. What the
Synapse sends out goes straight to the other server: the border judges what comes in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .dmz import DmzApi
from .ports import free_port
from .process import start_side_by_side
from .synapse import Synapse, make_self_signed_cert


class GatewayedSynapse:
    """A federating Synapse and the ``dmz_api`` gateway in front of it.

    ``gateway`` is merged into the gateway section (rules reload quickly and every allow is
    recorded in full, so a test can read a decision right after the request); ``api_key``
    lets the gateway share the key of a registrar the same bot talks to.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        name: str,
        gateway: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        synapse_config: Mapping[str, Any] | None = None,
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
            "reload_interval": 0.2,
            "decision_log": {"flush_interval": 0.05, "batch_size": 50, "allow": "full"},
            **(gateway or {}),
        }
        self.gateway = DmzApi(
            self.workdir / f"{name}-gateway",
            {"log_level": "WARNING", "gateway": section},
            name=f"gateway-{name}",
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
