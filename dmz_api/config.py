"""The service's YAML config, assembled from the core's keys and each role's section.

``load_config(path)`` reads the file once at start-up into frozen dataclasses (``Config``);
the ``registrar:`` and ``gateway:`` sections are parsed by the roles' own ``config`` modules,
which read through ``dmz_api.config_reader`` and never import this module. An invalid
file stops start-up with one line naming the key and the problem
(``ConfigError("registrar.homeserver.url: must be an http(s) URL")``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from .config_reader import ConfigError, Section
from .keys import ApiKey, hash_api_key
from .logs import LogFormat

if TYPE_CHECKING:
    from .gateway.config import GatewayConfig
    from .registrar.config import RegistrarConfig

SCOPES = frozenset({"tokens", "guests", "rules", "decisions", "audit"})


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    public_url: str
    # Client addresses are taken from X-Forwarded-For only when the peer is one of these.
    trusted_proxies: tuple[str, ...] = ()
    # "uvloop" (libuv: about 1.3x the proxy's throughput) or Python's own "asyncio" loop.
    event_loop: str = "uvloop"
    # Seconds a stop gives the API's requests in flight before it ends them; kept well
    # under the shipped systemd units' TimeoutStopSec (20 s), so a stop always gets to
    # write the decision log and close the database.
    shutdown_timeout: float = 10.0


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    database: str
    api_keys: tuple[ApiKey, ...]
    registrar: RegistrarConfig | None = None
    gateway: GatewayConfig | None = None
    log_level: str = "INFO"
    database_opts: Mapping[str, Any] = field(default_factory=dict)
    # "text" (one line per record) or "json" (one JSON object per line, for a log shipper).
    log_format: LogFormat = "text"


# The whole config, set by init_app; a role is handed its own section by its setup().
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)


def _parse_api_keys(root: Section) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    names: set[str] = set()
    for index, item in enumerate(root.list("api_keys", [])):
        path = f"api_keys[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{path}: must be a mapping with name, key (or key_file), scopes")
        entry = Section(item, path, root.base_dir)
        name = entry.str("name")
        if name in names:
            raise entry.error("name", f"{name!r} is used twice")
        names.add(name)
        if entry.has("key_sha256"):
            try:
                key_hash = bytes.fromhex(entry.str("key_sha256"))
            except ValueError:
                raise entry.error("key_sha256", "must be hex") from None
            if len(key_hash) != 32:
                raise entry.error("key_sha256", "must be 64 hex digits")
        else:
            key = entry.secret("key")
            assert key is not None
            if len(key) < 22:
                raise entry.error("key", "must be at least 22 characters (128 bits of randomness)")
            key_hash = hash_api_key(key)
        scopes = entry.list("scopes")
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise entry.error("scopes", f"must be a non-empty list of {', '.join(sorted(SCOPES))}")
        keys.append(ApiKey(name=name, key_hash=key_hash, scopes=frozenset(scopes)))
    return tuple(keys)


def _log_format(root: Section) -> LogFormat:
    return "json" if root.choice("log_format", ("text", "json"), "text") == "json" else "text"


def parse_config(data: Any, base_dir: Path | None = None) -> Config:
    if not isinstance(data, Mapping):
        raise ConfigError("config: the file must hold a YAML mapping")
    root = Section(data, "", base_dir)
    server = root.section("server")
    assert server is not None
    server_config = ServerConfig(
        host=server.str("host", "127.0.0.1"),
        port=server.int("port", 8450, low=0, high=65535),
        public_url=server.url("public_url"),
        trusted_proxies=tuple(str(p) for p in server.list("trusted_proxies", [])),
        event_loop=server.choice("event_loop", ("uvloop", "asyncio"), "uvloop"),
        shutdown_timeout=server.float("shutdown_timeout", 10.0),
    )
    database = root.str("database", "sqlite:dmz_api.db")
    if not database.startswith(("sqlite:", "sqlite3:", "postgres://", "postgresql://")):
        raise root.error("database", "must be a sqlite:PATH or postgres:// URL")
    registrar = gateway = None
    registrar_section = root.section("registrar", required=False)
    if registrar_section is not None:
        from .registrar.config import parse_registrar_config

        registrar = parse_registrar_config(registrar_section)
    gateway_section = root.section("gateway", required=False)
    if gateway_section is not None:
        from .gateway.config import parse_gateway_config

        gateway = parse_gateway_config(gateway_section)
    if registrar is None and gateway is None:
        raise ConfigError("config: enable at least one role (a registrar: or gateway: section)")
    opts = root.raw("database_opts", {})
    if not isinstance(opts, Mapping):
        raise root.error("database_opts", "must be a mapping")
    return Config(
        server=server_config,
        database=database,
        api_keys=_parse_api_keys(root),
        registrar=registrar,
        gateway=gateway,
        log_level=root.choice("log_level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        database_opts=opts,
        log_format=_log_format(root),
    )


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"config: cannot read {path} ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config: {path} is not valid YAML{where}") from None
    return parse_config(data, path.parent)
