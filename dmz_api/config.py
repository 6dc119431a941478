"""The service's YAML config, validated once at start-up into frozen dataclasses.

An invalid file stops start-up with one line naming the key and the problem
(``ConfigError("registrar.homeserver.url: must be an http(s) URL")``).
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yarl import URL

from .durations import parse_duration
from .logs import LogFormat

if TYPE_CHECKING:
    from .gateway.config import GatewayConfig
    from .registrar.config import RegistrarConfig

SCOPES = frozenset({"tokens", "guests", "rules", "decisions", "audit"})


class ConfigError(Exception):
    """One line: ``key.path: what is wrong``."""


_MISSING: Any = object()


class Section:
    """A typed reader over one mapping of the config that knows its own key path."""

    def __init__(
        self, data: Mapping[str, Any], path: builtins.str = "", base_dir: Path | None = None
    ) -> None:
        self.data = data
        self.path = path
        self.base_dir = base_dir or Path.cwd()

    def key(self, name: builtins.str) -> builtins.str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: builtins.str, problem: builtins.str) -> ConfigError:
        return ConfigError(f"{self.key(name)}: {problem}")

    def has(self, name: builtins.str) -> builtins.bool:
        return self.data.get(name) is not None

    def raw(self, name: builtins.str, default: Any = _MISSING) -> Any:
        value = self.data.get(name)
        if value is None:
            if default is _MISSING:
                raise self.error(name, "is required")
            return default
        return value

    def section(self, name: builtins.str, *, required: builtins.bool = True) -> Section | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return None
        if not isinstance(value, Mapping):
            raise self.error(name, "must be a mapping")
        return Section(value, self.key(name), self.base_dir)

    def str(self, name: builtins.str, default: Any = _MISSING) -> builtins.str:
        value = self.raw(name, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, "must be a non-empty string")
        return value

    def int(
        self,
        name: builtins.str,
        default: Any = _MISSING,
        *,
        low: builtins.int = 0,
        high: builtins.int = 2**31,
    ) -> builtins.int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(name, f"must be a whole number from {low} to {high}")
        return value

    def float(
        self, name: builtins.str, default: Any = _MISSING, *, low: builtins.float = 0.0
    ) -> builtins.float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= low:
            raise self.error(name, f"must be a number above {low}")
        return float(value)

    def bool(self, name: builtins.str, default: Any = _MISSING) -> builtins.bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value

    def duration(self, name: builtins.str, default: Any = _MISSING) -> builtins.int:
        try:
            return parse_duration(self.raw(name, default))
        except ValueError as e:
            raise self.error(name, str(e)) from None

    def url(self, name: builtins.str, default: Any = _MISSING) -> builtins.str:
        value = self.str(name, default)
        parsed = URL(value)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise self.error(name, "must be an http(s) URL")
        return value.rstrip("/")

    def list(self, name: builtins.str, default: Any = _MISSING) -> builtins.list[Any]:
        value = self.raw(name, default)
        if not isinstance(value, list):
            raise self.error(name, "must be a list")
        return value

    def choice(
        self, name: builtins.str, options: tuple[builtins.str, ...], default: Any = _MISSING
    ) -> builtins.str:
        value = self.raw(name, default)
        if value not in options:
            raise self.error(name, f"must be one of {', '.join(options)}")
        return str(value)

    def secret(self, name: builtins.str, *, required: builtins.bool = True) -> builtins.str | None:
        """A secret given inline (``name``) or in a file (``name_file``); never echoed back."""
        inline, file_key = self.data.get(name), f"{name}_file"
        if inline is not None and self.data.get(file_key) is not None:
            raise self.error(name, f"give either {name} or {file_key}, not both")
        if inline is not None:
            if not isinstance(inline, str) or not inline.strip():
                raise self.error(name, "must be a non-empty string")
            return inline.strip()
        if self.data.get(file_key) is not None:
            path = self.base_dir / self.str(file_key)
            try:
                value = path.read_text().strip()
            except OSError as e:
                raise self.error(file_key, f"cannot be read ({e.strerror})") from None
            if not value:
                raise self.error(file_key, "is empty")
            return value
        if required:
            raise self.error(name, f"is required ({name} or {file_key})")
        return None


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    public_url: str
    # Client addresses are taken from X-Forwarded-For only when the peer is one of these.
    trusted_proxies: tuple[str, ...] = ()
    # "uvloop" (libuv: about 1.3x the proxy's throughput) or Python's own "asyncio" loop.
    event_loop: str = "uvloop"


@dataclass(frozen=True)
class ApiKey:
    name: str
    key_hash: bytes
    scopes: frozenset[str]


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


def hash_api_key(key: str) -> bytes:
    # API keys are ≥128-bit random strings, so one SHA-256 is enough at rest (no stretching).
    return hashlib.sha256(key.encode()).digest()


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
