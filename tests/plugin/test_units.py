"""Pieces without a bot: argument words, markdown escaping, durations, config checks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from maubot.handlers.command import ArgumentSyntaxError
from maubot.matrix import parse_formatted
from mautrix.util.config import RecursiveDict
from ruamel.yaml import YAML

from plugin import fmt
from plugin.config import Config
from plugin.durations import format_duration, parse_duration, parse_timestamp
from plugin.syntax import Words

from .conftest import ROOT


def test_words_options_flags_and_text() -> None:
    words = Words('--note Onboarding "ACME Ltd" --uses=3 --dm')
    assert words.flag("--dm") is True
    assert words.option("--uses", int) == 3
    assert words.text("--note") == "Onboarding ACME Ltd"
    words.finish()


def test_words_keep_apostrophes_and_hashes() -> None:
    assert Words("--note Bob's #1 partner").text("--note") == "Bob's #1 partner"


def test_words_errors() -> None:
    with pytest.raises(ArgumentSyntaxError, match="needs a value"):
        Words("--uses --dm").option("--uses", int)
    with pytest.raises(ArgumentSyntaxError, match="missing"):
        Words("--x").positional("The id", str)


@pytest.mark.parametrize(
    "text",
    ["<script>alert(1)</script>", "*bold* _it_ `code`", "[x](https://evil.example)", "# h1",
     "a\\b", "&amp; &lt;", "1. list", "> quote", "~~s~~", "![i](mxc://x/y)"],
)  # fmt: skip
async def test_md_shows_text_literally(text: str) -> None:
    plain, html = await parse_formatted(f"note: {fmt.md(text)}")
    assert plain == f"note: {text}"
    for tag in ("<script", "<strong", "<em", "<a ", "<h1", "<ol", "<blockquote", "<del", "<img"):
        assert tag not in html


async def test_user_links_through_matrix_to() -> None:
    _, html = await parse_formatted(fmt.user("@a_b:corp.example"))
    assert html.strip() == (
        '<p><a href="https://matrix.to/#/@a_b:corp.example">@a_b:corp.example</a></p>'
    )


def test_link_refuses_odd_urls() -> None:
    assert fmt.link("https://x.example/register?token=a_b-c") == (
        "<https://x.example/register?token=a_b-c>"
    )
    assert fmt.link("javascript:alert(1)").startswith("javascript\\:")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600), ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), (60.0, 60)],
)
def test_parse_duration(value: Any, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [0, -5, "0m", "soon", True, None, 1.5, "5y"])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="must be"):
        parse_duration(value)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42, 5400, 86400, 90061)] == [
        "0s",
        "42s",
        "1h 30m",
        "1d",
        "1d 1h",
    ]


def test_parse_timestamp() -> None:
    moment = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_timestamp("2025-01-02T03:04:05Z") == moment
    assert parse_timestamp(int(moment.timestamp())) == moment
    assert parse_timestamp(int(moment.timestamp() * 1000)) == moment
    assert parse_timestamp("garbage") is None and parse_timestamp(None) is None


def load_config(values: dict[str, Any]) -> Config:
    with (Path(ROOT) / "base-config.yaml").open() as fh:
        base = RecursiveDict(YAML().load(fh))
    config = Config(load=lambda: values, load_base=lambda: base, save=lambda _: None)
    config.load_and_update()
    return config


def test_base_config_defaults_and_problems() -> None:
    config = load_config({})
    assert config.identity_mode == "synapse_admin"
    assert (config.token_uses, config.token_expires) == (1, 86400)
    assert config.dmz_timeout == 10.0 and config.sweep_interval == 300
    assert config.guests_on_deactivation == "keep" and config.revoke_tokens_on_deactivation
    assert config.problems() == [
        "control_rooms is empty, so every command is refused",
        "dmz.api_key is empty, so every call to dmz_api will be refused",
    ]


def test_config_problems_name_the_key() -> None:
    config = load_config(
        {
            "control_rooms": ["!a:b"],
            "identity": {"mode": "ldap", "timeout": "x"},
            "dmz": {"api_key": "k", "timeout": "0s"},
            "token_defaults": {"uses": 0},
            "on_staff_deactivated": {"guests": "delete"},
            "sweep_interval": 0,
        }
    )
    assert config.sweep_interval == 0
    problems = config.problems()
    assert problems == [
        "identity.timeout must be a duration such as 3600, 90s, 15m, 24h or 7d",
        "dmz.timeout must be longer than zero",
        "identity.mode must be one of synapse_admin, membership",
        "on_staff_deactivated.guests must be one of keep, deactivate",
        "token_defaults.uses must be a whole number of at least 1",
    ]


def test_every_base_config_key_is_commented() -> None:
    lines = (Path(ROOT) / "base-config.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            assert lines[index - 1].strip().startswith("#"), f"no comment above {stripped!r}"
