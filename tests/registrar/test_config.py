"""The registrar section: defaults, validation errors (one line naming the key), secrets."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from dmz_api.config import load_config
from dmz_api.config_reader import ConfigError, Section
from dmz_api.registrar.config import parse_registrar_config

from .conftest import registrar_section


def parse(data: dict[str, Any], base_dir: Path | None = None) -> Any:
    return parse_registrar_config(Section(data, "registrar", base_dir))


def error_of(data: dict[str, Any], base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data, base_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_minimal_synapse_section_and_defaults() -> None:
    config = parse(
        {
            "homeserver": {
                "kind": "synapse",
                "url": "http://127.0.0.1:8008/",
                "server_name": "partners.example.com",
                "admin_token": "syt_secret_admin",
            }
        }
    )
    hs = config.homeserver
    assert (hs.kind, hs.url, hs.client_url) == ("synapse", "http://127.0.0.1:8008", hs.url)
    assert (config.default_uses, config.default_expires_in) == (1, 86400)
    assert (config.max_uses, config.max_expires_in) == (100, 30 * 86400)
    assert (config.rate_limit.per_minute, config.rate_limit.burst) == (30, 10)
    assert config.secret is None and config.password_min_length == 10
    assert "syt_secret_admin" not in repr(config)


def test_matrix_section_with_token_file(tmp_path: Path) -> None:
    (tmp_path / "static").write_text("static-registration-token\n")
    config = parse(
        {
            "homeserver": {
                "kind": "matrix",
                "url": "https://hs.internal",
                "server_name": "partners.example.com",
                "client_url": "https://partners.example.com",
                "registration_token_file": "static",
            },
            "token_defaults": {"uses": 2, "expires_in": "7d"},
            "secret": "s" * 30,
        },
        tmp_path,
    )
    assert config.homeserver.registration_token == "static-registration-token"
    assert config.homeserver.admin_token is None and not config.has_deactivation
    assert (config.default_uses, config.default_expires_in) == (2, 7 * 86400)
    assert config.secret is not None and "static-registration-token" not in repr(config)


def _with(path: str, value: Any, kind: str = "synapse") -> dict[str, Any]:
    data = registrar_section(kind)
    target = data
    *parents, last = path.split(".")
    for name in parents:
        target = target.setdefault(name, {})
    if value is None:
        target.pop(last, None)
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "kind", "expected"),
    [
        ("homeserver", None, "synapse", "registrar.homeserver: is required"),
        ("homeserver.kind", "dendrite", "synapse", "registrar.homeserver.kind: must be one of"),
        ("homeserver.url", "ftp://x", "synapse", "registrar.homeserver.url: must be an http(s)"),
        ("homeserver.server_name", "@x/y", "synapse", "registrar.homeserver.server_name: must be"),
        ("homeserver.admin_token", None, "synapse",
         "registrar.homeserver.admin_token: is required"),
        ("homeserver.registration_token", None, "matrix",
         "registrar.homeserver.registration_token: is required"),
        ("homeserver.registration_token", "x", "synapse",
         "registrar.homeserver.registration_token: is only used with kind: matrix"),
        ("homeserver.registration_token_file", "/nonexistent/file", "matrix",
         "registrar.homeserver.registration_token"),
        ("homeserver.timeout", 0, "synapse", "registrar.homeserver.timeout: must be a number"),
        ("token_defaults.uses", 0, "synapse", "registrar.token_defaults.uses: must be a whole"),
        ("token_defaults.uses", 500, "synapse", "registrar.token_defaults.uses: must be a whole"),
        ("token_defaults.expires_in", "soon", "synapse",
         "registrar.token_defaults.expires_in: must be a duration"),
        ("token_defaults.expires_in", "90d", "synapse",
         "registrar.token_defaults.expires_in: must not exceed max_expires_in"),
        ("token_defaults", "1h", "synapse", "registrar.token_defaults: must be a mapping"),
        ("max_uses", -1, "synapse", "registrar.max_uses: must be a whole number"),
        ("rate_limit.per_minute", "many", "synapse", "registrar.rate_limit.per_minute: must be"),
        ("rate_limit.burst", 0, "synapse", "registrar.rate_limit.burst: must be"),
        ("secret", "short", "synapse", "registrar.secret: must be at least 22 characters"),
        ("password_min_length", 4, "synapse", "registrar.password_min_length: must be"),
        ("idempotency_ttl", "forever", "synapse", "registrar.idempotency_ttl: must be a duration"),
        ("page_title", "", "synapse", "registrar.page_title: must be a non-empty string"),
        ("onboarding.show_sponsor", "yes", "synapse", "registrar.onboarding.show_sponsor: must"),
        ("onboarding", "on", "synapse", "registrar.onboarding: must be a mapping"),
    ],
)  # fmt: skip
def test_errors_name_the_key(path: str, value: Any, kind: str, expected: str) -> None:
    data = _with(path, value, kind)
    if path == "homeserver.registration_token_file":
        data["homeserver"].pop("registration_token")
    assert error_of(data).startswith(expected)


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "dmz_api" / "example-config.yaml"
    config = load_config(example)
    assert config.registrar is not None
    assert config.registrar.homeserver.kind == "synapse"
    text = example.read_text()
    section = text[text.index("\nregistrar:") :]
    section = section[: section.index("# ---- gateway")]
    # Every key of the section has a comment right above it.
    lines = [line for line in section.splitlines() if line.strip()]
    for previous, line in itertools.pairwise(lines):
        if re.match(r"^\s*[a-z_]+:", line):
            assert previous.strip().startswith("#"), f"no comment above {line.strip()!r}"
