"""The gateway: config section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dmz_api.config_reader import ConfigError, Section
from dmz_api.gateway.config import parse_gateway_config


def parse(data: dict[str, Any], base: Path | None = None) -> Any:
    return parse_gateway_config(Section({"server_name": "corp.example", **data}, "gateway", base))


def test_defaults() -> None:
    config = parse({})
    assert config.server_name == "corp.example"
    assert config.upstream is None and config.listen is None
    assert (config.decision_log.batch_size, config.decision_log.queue_size) == (500, 100_000)
    assert config.decision_log.retention == 90 * 86400
    assert [str(n) for n in config.authz.allowed_peers] == ["127.0.0.1/32", "::1/128"]
    assert config.authz.secret is None and config.trusted_proxies == ()
    assert (config.timeouts.connect, config.timeouts.read) == (5.0, 600.0)


def test_full(tmp_path: Path) -> None:
    (tmp_path / "authz.secret").write_text("s" * 30 + "\n")
    config = parse(
        {
            "upstream": "http://127.0.0.1:8008/",
            "listen": {"host": "0.0.0.0", "port": 8448, "body_timeout": 5, "request_timeout": 90},
            "authz": {"secret_file": "authz.secret", "allowed_peers": ["0.0.0.0/0"]},
            "trusted_proxies": ["10.0.0.1", "fd00::/8"],
            "decision_log": {
                "batch_size": 10,
                "flush_interval": 0.1,
                "queue_size": 100,
                "retention": "7d",
            },
        },
        tmp_path,
    )
    assert config.upstream == "http://127.0.0.1:8008" and config.listen.port == 8448
    assert config.authz.secret == "s" * 30
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.1/32", "fd00::/8"]
    assert config.decision_log.retention == 7 * 86400
    assert config.upstream_ca_file is None
    assert config.listen.body_timeout == 5.0 and config.listen.request_timeout == 90.0


def test_upstream_ca_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = parse({"upstream": "https://hs.example", "upstream_ca_file": "ca.pem"}, tmp_path)
    assert config.upstream_ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"server_name": "not a name"}, "gateway.server_name: must be a server name"),
        ({"listen": {"port": 8448}}, "gateway.upstream: is required when listen is set"),
        ({"upstream": "ftp://x"}, "gateway.upstream: must be an http(s) URL"),
        (
            {"upstream": "http://h", "listen": {"port": 1, "body_timeout": 0}},
            "gateway.listen.body_timeout: must be a number above 0",
        ),
        (
            {"upstream": "http://h", "listen": {"port": 1, "request_timeout": "soon"}},
            "gateway.listen.request_timeout: must be a number above 0",
        ),
        ({"authz": {"secret": "short"}}, "gateway.authz.secret: must be at least 22"),
        ({"authz": {"allowed_peers": ["0.0.0.0/0"]}}, "gateway.authz.allowed_peers: admits every"),
        ({"trusted_proxies": ["nope"]}, "gateway.trusted_proxies: 'nope' is not an IP"),
        ({"decision_log": {"batch_size": 0}}, "gateway.decision_log.batch_size"),
        ({"decision_log": {"retention": "soon"}}, "gateway.decision_log.retention"),
        ({"reload_interval": 0}, "gateway.reload_interval"),
        (
            {"upstream": "http://127.0.0.1:8008", "upstream_ca_file": "ca.pem"},
            "gateway.upstream_ca_file: is only for an https:// upstream",
        ),
        (
            {"upstream": "https://hs.example", "upstream_ca_file": "/nonexistent/ca.pem"},
            "gateway.upstream_ca_file: /nonexistent/ca.pem is not a readable file",
        ),
        (
            {"user_lookup": {"enabled": True}},
            "gateway.user_lookup.enabled: needs gateway.upstream: the homeserver that is asked",
        ),
        (
            {"upstream": "http://h", "user_lookup": {"on_failure": "ignore"}},
            "gateway.user_lookup.on_failure: must be decide (without a user) or refuse",
        ),
    ],
)
def test_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(data)


def test_example_config_parses() -> None:
    from dmz_api.config import load_config

    config = load_config(Path(__file__).parents[2] / "dmz_api" / "example-config.yaml")
    assert config.gateway is not None and config.gateway.listen is not None
    assert config.gateway.listen.body_timeout == 60 and config.gateway.listen.request_timeout == 600
