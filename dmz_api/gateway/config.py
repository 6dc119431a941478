"""The ``gateway:`` config section, validated into a frozen dataclass at start-up."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import Section

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:\d{1,5})?$")
_LOOPBACK = ("127.0.0.1/32", "::1/128")


@dataclass(frozen=True)
class ListenConfig:
    host: str
    port: int
    # PEM files; with both set the proxy listener speaks TLS (e.g. federation on 8448).
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None


@dataclass(frozen=True)
class DecisionLogConfig:
    # Records written per INSERT batch.
    batch_size: int
    # Seconds between flushes when a batch is not full.
    flush_interval: float
    # Records held in memory at most; beyond that they are dropped and counted.
    queue_size: int
    # Seconds a decision record is kept.
    retention: int


@dataclass(frozen=True)
class AuthzConfig:
    """Who may call the forward-auth and antispam endpoints."""

    secret: str | None
    allowed_peers: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class TimeoutConfig:
    connect: float
    # The longest an upstream response may take (long-polling /sync asks for up to minutes).
    read: float


@dataclass(frozen=True)
class GatewayConfig:
    # The server name of the homeserver the gateway protects (tells local users from remote).
    server_name: str
    upstream: str | None
    # CA certificates that verify an https upstream (None: the system's trust store).
    upstream_ca_file: Path | None
    listen: ListenConfig | None
    decision_log: DecisionLogConfig
    authz: AuthzConfig
    trusted_proxies: tuple[IPNetwork, ...]
    timeouts: TimeoutConfig
    # Seconds between checks for rule changes made by another replica sharing the database.
    reload_interval: float
    # Largest request body the proxy reads to find event types (createRoom initial_state).
    max_inspect_body: int
    # Largest federation transaction (PUT /send/{txnId}) the proxy reads to judge its events.
    max_transaction_body: int = 12 * 1024**2


def _networks(section: Section, name: str, default: list[str]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in section.list(name, default):
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise section.error(name, f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _optional(section: Section, name: str) -> Section:
    return section.section(name, required=False) or Section({}, section.key(name), section.base_dir)


def parse_gateway_config(section: Section) -> GatewayConfig:
    server_name = section.str("server_name")
    if not _SERVER_NAME.match(server_name):
        raise section.error(
            "server_name", "must be a server name such as corp.example or host:8448"
        )
    listen_section = section.section("listen", required=False)
    listen = None
    if listen_section is not None:
        tls: dict[str, Path] = {}
        for key in ("tls_certificate", "tls_private_key"):
            if listen_section.has(key):
                tls[key] = listen_section.base_dir / listen_section.str(key)
                if not tls[key].is_file():
                    raise listen_section.error(key, f"{tls[key]} is not a readable file")
        if len(tls) == 1:
            missing = "tls_private_key" if "tls_certificate" in tls else "tls_certificate"
            raise listen_section.error(missing, "is required when the other TLS file is set")
        listen = ListenConfig(
            host=listen_section.str("host", "127.0.0.1"),
            port=listen_section.int("port", low=0, high=65535),
            tls_certificate=tls.get("tls_certificate"),
            tls_private_key=tls.get("tls_private_key"),
        )
    upstream = section.url("upstream") if section.has("upstream") else None
    if listen is not None and upstream is None:
        raise section.error("upstream", "is required when listen is set (the proxy forwards to it)")
    upstream_ca_file = None
    if section.has("upstream_ca_file"):
        if upstream is None or not upstream.startswith("https://"):
            raise section.error("upstream_ca_file", "is only for an https:// upstream")
        upstream_ca_file = section.base_dir / section.str("upstream_ca_file")
        if not upstream_ca_file.is_file():
            raise section.error("upstream_ca_file", f"{upstream_ca_file} is not a readable file")

    log = _optional(section, "decision_log")
    decision_log = DecisionLogConfig(
        batch_size=log.int("batch_size", 500, low=1, high=100_000),
        flush_interval=log.float("flush_interval", 0.5),
        queue_size=log.int("queue_size", 100_000, low=1, high=10_000_000),
        retention=log.duration("retention", "90d"),
    )

    authz_section = _optional(section, "authz")
    secret = authz_section.secret("secret", required=False)
    if secret is not None and len(secret) < 22:
        raise authz_section.error("secret", "must be at least 22 characters")
    allowed_peers = _networks(authz_section, "allowed_peers", list(_LOOPBACK))
    if secret is None and any(net.prefixlen == 0 for net in allowed_peers):
        raise authz_section.error(
            "allowed_peers", "admits every address: set a secret as well (secret or secret_file)"
        )

    timeouts = _optional(section, "timeouts")
    return GatewayConfig(
        server_name=server_name,
        upstream=upstream,
        upstream_ca_file=upstream_ca_file,
        listen=listen,
        decision_log=decision_log,
        authz=AuthzConfig(secret=secret, allowed_peers=allowed_peers),
        trusted_proxies=_networks(section, "trusted_proxies", []),
        timeouts=TimeoutConfig(
            connect=timeouts.float("connect", 5.0), read=timeouts.float("read", 600.0)
        ),
        reload_interval=section.float("reload_interval", 1.0),
        max_inspect_body=section.int("max_inspect_body", 1024**2, low=1024, high=64 * 1024**2),
        max_transaction_body=section.int(
            "max_transaction_body", 12 * 1024**2, low=64 * 1024, high=64 * 1024**2
        ),
    )
