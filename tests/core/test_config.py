"""Config validation: one line naming the key and the problem."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import uvloop

from dmz_api.__main__ import main, new_event_loop
from dmz_api.config import load_config, parse_config
from dmz_api.config_reader import ConfigError
from dmz_api.durations import parse_duration
from dmz_api.keys import hash_api_key

KEY = "k" * 32


def base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8450, "public_url": "https://partners.example"},
        "database": "sqlite::memory:",
        "api_keys": [{"name": "bot", "key": KEY, "scopes": ["tokens", "guests"]}],
        "registrar": {
            "homeserver": {
                "kind": "synapse",
                "url": "http://127.0.0.1:8008",
                "server_name": "partners.example",
                "admin_token": "syt_admin",
            }
        },
    }
    data.update(overrides)
    return data


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_config_parses_and_hashes_keys() -> None:
    config = parse_config(base())
    assert config.server.public_url == "https://partners.example"
    assert config.api_keys[0].key_hash == hash_api_key(KEY)
    assert KEY not in repr(config)
    assert config.registrar is not None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"server": None}, "server: is required"),
        ({"server": {"public_url": "ftp://x"}}, "server.public_url: must be an http(s) URL"),
        ({"server": {"public_url": "https://a", "port": 70000}}, "server.port: must be a whole"),
        ({"database": "mysql://x"}, "database: must be a sqlite:PATH or postgres:// URL"),
        ({"api_keys": [{"name": "a", "key": "short", "scopes": ["tokens"]}]}, "api_keys[0].key"),
        ({"api_keys": [{"name": "a", "key": KEY, "scopes": ["root"]}]}, "api_keys[0].scopes"),
        ({"api_keys": [{"name": "a", "scopes": ["tokens"]}]}, "api_keys[0].key: is required"),
        (
            {
                "api_keys": [
                    {"name": "a", "key": KEY, "scopes": ["tokens"]},
                    {"name": "a", "key": KEY, "scopes": ["tokens"]},
                ]
            },
            "api_keys[1].name: 'a' is used twice",
        ),
        ({"registrar": None}, "enable at least one role"),
        ({"log_level": "LOUD"}, "log_level: must be one of"),
        ({"log_format": "xml"}, "log_format: must be one of text, json"),
        (
            {"server": {"public_url": "https://a", "event_loop": "tokio"}},
            "server.event_loop: must be one of uvloop, asyncio",
        ),
        (
            {"server": {"public_url": "https://a", "shutdown_timeout": 0}},
            "server.shutdown_timeout: must be a number above 0",
        ),
    ],
)
def test_invalid_config_names_the_key(change: dict[str, Any], expected: str) -> None:
    assert expected in error_of(base(**change))


def test_event_loop_defaults_to_uvloop_and_asyncio_can_be_chosen() -> None:
    assert parse_config(base()).server.event_loop == "uvloop"
    chosen = base(server={"public_url": "https://a", "event_loop": "asyncio"})
    assert parse_config(chosen).server.event_loop == "asyncio"
    for kind, loop_type in (("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        loop = new_event_loop(kind)
        try:
            assert isinstance(loop, loop_type)
            assert isinstance(loop, uvloop.Loop) == (kind == "uvloop")
        finally:
            loop.close()


def test_a_stop_gives_requests_ten_seconds_unless_told() -> None:
    assert parse_config(base()).server.shutdown_timeout == 10.0
    quick = base(server={"public_url": "https://a", "shutdown_timeout": 2.5})
    assert parse_config(quick).server.shutdown_timeout == 2.5


def test_not_a_mapping() -> None:
    assert "YAML mapping" in error_of(["a"])


def test_key_file_and_sha256(tmp_path: Path) -> None:
    (tmp_path / "bot.key").write_text(KEY + "\n")
    config = parse_config(
        base(
            api_keys=[
                {"name": "a", "key_file": "bot.key", "scopes": ["tokens"]},
                {"name": "b", "key_sha256": hash_api_key(KEY).hex(), "scopes": ["rules"]},
            ]
        ),
        tmp_path,
    )
    assert config.api_keys[0].key_hash == config.api_keys[1].key_hash
    message = error_of(base(api_keys=[{"name": "a", "key_file": "nope", "scopes": ["tokens"]}]))
    assert message.startswith("api_keys[0].key_file: cannot be read")


def test_cli_reports_one_line_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server: {public_url: nope}\n")
    assert main(["--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dmz_api: invalid config: server.public_url: must be an http(s) URL"
    path.write_text("server: [unclosed\n")
    assert main(["--config", str(path)]) == 2
    assert "not valid YAML at line" in capsys.readouterr().err


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(3600, 3600), ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), (" 2w ", 1209600)],
)
def test_durations(given: object, seconds: int) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("given", [0, -5, "0h", "1y", "", "abc", True, 1.5, None])
def test_bad_durations(given: object) -> None:
    with pytest.raises(ValueError, match=r"duration|positive|longer"):
        parse_duration(given)
