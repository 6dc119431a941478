"""The ``gateway:`` config section, validated into a frozen dataclass at start-up."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..config_reader import Section
from .policy import server_names
from .signing.keys import KeyFileError, check_key_file

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LOOPBACK = ("127.0.0.1/32", "::1/128")


@dataclass(frozen=True)
class ListenConfig:
    host: str
    port: int
    # PEM files; with both set the proxy listener speaks TLS (e.g. federation on 8448).
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    # Seconds a request being read may go without a byte arriving (head or body).
    body_timeout: float = 60.0
    # Seconds from a request's first byte to the end of its body.
    request_timeout: float = 600.0


@dataclass(frozen=True)
class StreamConfig:
    """``gateway.decision_log.stream``: JSON lines for the organisation's log engine."""

    to: str  # file | stdout | syslog
    # file: the file appended to; syslog: a unix datagram socket (default /dev/log).
    path: Path | None = None
    # syslog over UDP instead of a socket: host and port.
    host: str | None = None
    port: int = 514


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
    # Allows as one full record each ("full") or per-minute counts per key ("aggregate").
    allow: str = "aggregate"
    # Where decisions are also streamed as JSON lines (None: not streamed).
    stream: StreamConfig | None = None
    # Below this many free bytes (or this percentage) on the log's disk, full allow records
    # stop (aggregates instead) and the log reports itself degraded. 0: no floor.
    min_free_bytes: int = 0
    min_free_percent: float = 0.0
    # The directory whose file system is watched (None: the SQLite database's, else none).
    disk_path: Path | None = None
    # Rows a retention pass deletes per statement, and seconds it pauses between them.
    prune_batch: int = 5000
    prune_pause: float = 0.05


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
class PolicyServerConfig:
    """The MSC4284 policy server (``gateway.policy_server``; absent: not served)."""

    # The ed25519 policy key (Synapse's signing-key format), created at first start.
    key_file: Path
    # Verify the X-Matrix signature of each sign request (keys fetched through key_server).
    verify_origin: bool
    # Where the requesting servers' keys are looked up (/_matrix/key/v2/query): our homeserver.
    key_server: str | None
    # Largest sign request body read (a PDU is at most 64 KiB).
    max_body: int
    # The room version assumed for rooms whose id has a server part (pre-v12 rooms) until
    # their create event is seen: it decides how events are redacted before signing.
    fallback_room_version: str = "10"


@dataclass(frozen=True)
class UserLookupConfig:
    """Which user an access token belongs to, asked of the homeserver (``enforce/users.py``)."""

    # Off by default: it adds a homeserver round trip per new access token and an outbound
    # dependency; deployments whose rules name users, or that want users in the decision
    # log for every client request, turn it on (docs/rules.md, section 12).
    enabled: bool = False
    # Tokens remembered (by their SHA-256, never the token), least recently used dropped.
    cache_size: int = 10_000
    # Seconds an answer is trusted (a logged-out token keeps its user this long at most).
    cache_ttl: float = 300.0
    # Seconds the homeserver has to answer /account/whoami.
    timeout: float = 5.0
    # When the homeserver cannot say: "decide" without a user, or "refuse" the request.
    on_failure: str = "decide"


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
    policy_server: PolicyServerConfig | None = None
    # Our server names besides server_name (protected rooms always allow them in the ACL).
    own_servers: tuple[str, ...] = ()
    # Largest federation transaction (PUT /send/{txnId}) the proxy reads to judge its events.
    max_transaction_body: int = 12 * 1024**2
    # The homeserver's homeserver.yaml, read to warn what would undo compliance-ledger.
    homeserver_config: Path | None = None
    user_lookup: UserLookupConfig = UserLookupConfig()


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
    if server_names.parse(server_name, trailing_dot=False) is None:
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
            body_timeout=listen_section.float("body_timeout", 60.0),
            request_timeout=listen_section.float("request_timeout", 600.0),
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
        allow=log.choice("allow", ("full", "aggregate"), "aggregate"),
        stream=_stream(log),
        min_free_bytes=_size(log, "min_free_bytes"),
        min_free_percent=_percent(log, "min_free_percent"),
        disk_path=log.base_dir / log.str("disk_path") if log.has("disk_path") else None,
        prune_batch=log.int("prune_batch", 5000, low=1, high=1_000_000),
        prune_pause=log.float("prune_pause", 0.05, low=-1e-9),
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
        policy_server=_policy_server(section, upstream),
        own_servers=_own_servers(section, server_name),
        max_transaction_body=section.int(
            "max_transaction_body", 12 * 1024**2, low=64 * 1024, high=64 * 1024**2
        ),
        homeserver_config=(
            section.base_dir / section.str("homeserver_config")
            if section.has("homeserver_config")
            else None
        ),
        user_lookup=_user_lookup(section, upstream),
    )


def _user_lookup(section: Section, upstream: str | None) -> UserLookupConfig:
    lookup = _optional(section, "user_lookup")
    on_failure = lookup.str("on_failure", "decide")
    if on_failure not in ("decide", "refuse"):
        raise lookup.error("on_failure", "must be decide (without a user) or refuse")
    enabled = lookup.bool("enabled", False)
    if enabled and upstream is None:
        raise lookup.error(
            "enabled", "needs gateway.upstream: the homeserver that is asked whose token it is"
        )
    return UserLookupConfig(
        enabled=enabled,
        cache_size=lookup.int("cache_size", 10_000, low=1, high=10_000_000),
        cache_ttl=lookup.float("cache_ttl", 300.0),
        timeout=lookup.float("timeout", 5.0),
        on_failure=on_failure,
    )


def _policy_server(section: Section, upstream: str | None) -> PolicyServerConfig | None:
    policy = section.section("policy_server", required=False)
    if policy is None:
        return None
    key_server = policy.url("key_server") if policy.has("key_server") else upstream
    verify_origin = policy.bool("verify_origin", True)
    if verify_origin and key_server is None:
        raise policy.error(
            "key_server", "is required to verify requests when gateway.upstream is not set"
        )
    key_file = policy.base_dir / policy.str("key_file", "policy_server.key")
    try:
        check_key_file(key_file)
    except KeyFileError as e:
        raise policy.error("key_file", str(e)) from None
    return PolicyServerConfig(
        key_file=key_file,
        verify_origin=verify_origin,
        key_server=key_server,
        max_body=policy.int("max_body", 128 * 1024, low=1024, high=1024**2),
        fallback_room_version=_room_version(policy),
    )


def _room_version(policy: Section) -> str:
    version = str(policy.raw("fallback_room_version", "10"))
    if not version.isdigit() or not 1 <= int(version) <= 11:
        raise policy.error("fallback_room_version", "must be a room version from 1 to 11")
    return version


def _own_servers(section: Section, server_name: str) -> tuple[str, ...]:
    names = [server_names.canonical(server_name) or server_name]
    for item in section.list("own_servers", []):
        name = server_names.canonical(item) if isinstance(item, str) else None
        if name is None:
            raise section.error("own_servers", f"{item!r} is not a server name (corp.example)")
        names.append(name)
    return tuple(dict.fromkeys(names))


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(section: Section, name: str) -> int:
    """Bytes from a whole number or ``512M``-style text (binary units k, M, G, T)."""
    value = section.raw(name, 0)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (
        text[:-1] if text[-1:].isalpha() else text,
        text[-1:] if text[-1:].isalpha() else "",
    )
    if unit not in _UNITS or not number.replace(".", "", 1).isdigit():
        raise section.error(name, "must be a size in bytes such as 2000000000 or 2G")
    return int(float(number) * _UNITS[unit])


def _percent(section: Section, name: str) -> float:
    value = section.raw(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 100:
        raise section.error(name, "must be a percentage from 0 to 99")
    return float(value)


def _stream(log: Section) -> StreamConfig | None:
    stream = log.section("stream", required=False)
    if stream is None:
        return None
    to = stream.choice("to", ("file", "stdout", "syslog"))
    if to == "file":
        path = stream.base_dir / stream.str("path")
        if not path.parent.is_dir():
            raise stream.error("path", f"{path.parent} is not a directory")
        return StreamConfig(to, path=path)
    if to == "syslog":
        if stream.has("host"):
            host = stream.str("host")
            return StreamConfig(to, host=host, port=stream.int("port", 514, low=1, high=65535))
        return StreamConfig(to, path=Path(stream.str("path", "/dev/log")))
    return StreamConfig(to)
