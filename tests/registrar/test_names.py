"""Names that cannot impersonate: reserved usernames and patterns, display names that
claim the internal side — the policy alone, its config, and on the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from dmz_api.app import init_app
from dmz_api.config_reader import ConfigError, Section
from dmz_api.registrar import REGISTRAR
from dmz_api.registrar.config import parse_registrar_config
from dmz_api.registrar.names import NamePolicy

from .conftest import app_config, auth, csrf_of, registrar_section
from .fakes import FakeHomeserver

POLICY = NamePolicy.build(["admin", "support"], [r"^it[-._]", "helpdesk"], ["corp.example"])


@pytest.mark.parametrize(
    "name", ["admin", "ad.min", "a_d-m_i_n", "support", "it-alice", "it.bob", "mega-helpdesk"]
)
def test_reserved_usernames_are_refused(name: str) -> None:
    assert POLICY.check_username(name) == "This username is reserved. Please choose another one."


@pytest.mark.parametrize("name", ["alice", "admins", "italo", "supporter", "bit-admin"])
def test_other_usernames_pass(name: str) -> None:
    assert POLICY.check_username(name) is None


@pytest.mark.parametrize(
    ("display", "says"),
    [
        ("Alice (corp.example)", "domain"),
        ("alice@CORP.EXAMPLE", "domain"),
        ("Alice corp . example", "domain"),
        ("\uff43\uff4f\uff52\uff50.example staff", "domain"),  # full-width letters
        ("@boss:corp.example", "domain"),
        ("@boss:elsewhere.example", "Matrix ID"),
        ("Admin", "reserved"),
        ("S U P P O R T", "reserved"),
        ("\U0001d41a\U0001d41d\U0001d426\U0001d422\U0001d427", "reserved"),  # bold "admin"
    ],
)
def test_display_names_that_claim_too_much(display: str, says: str) -> None:
    message = POLICY.check_display_name(display)
    assert message is not None and says in message


@pytest.mark.parametrize("display", ["Alice Example", "Bob from ACME", "Zoë Ådmiral"])
def test_ordinary_display_names_pass(display: str) -> None:
    assert POLICY.check_display_name(display) is None


def test_the_defaults_reserve_the_usual_names() -> None:
    config = parse_registrar_config(Section(registrar_section(), "registrar"))
    assert config.names.check_username("administrator") is not None
    assert config.names.check_display_name("Alice (corp.example)") is None  # no domains set


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"reserved_patterns": ["("]}, "reserved_patterns"),
        ({"reserved_usernames": "admin"}, "reserved_usernames"),
        ({"internal_domains": [""]}, "internal_domains"),
    ],
)
def test_bad_name_config_names_the_key(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_registrar_config(Section(registrar_section(**extra), "registrar"))
    assert key in str(caught.value)


async def test_the_page_refuses_them_with_a_clear_message(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    section = registrar_section(reserved_usernames=["admin"], internal_domains=["corp.example"])
    app = init_app(app_config(f"sqlite:{tmp_path / 'n.db'}", section))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    fake_hs = FakeHomeserver()
    app[REGISTRAR].adapter = fake_hs
    resp = await client.post("/v1/tokens", json={}, headers=auth())
    token = (await resp.json())["token"]
    page = await client.get("/register", params={"token": token})
    csrf = csrf_of(await page.text())
    password = "long enough password"
    base = {"token": token, "csrf_token": csrf, "password": password, "password_confirm": password}
    resp = await client.post("/register", data=base | {"username": "Ad.Min", "display_name": ""})
    html = await resp.text()
    assert resp.status == 400 and "This username is reserved" in html
    resp = await client.post(
        "/register", data=base | {"username": "alice", "display_name": "Alice (corp.example)"}
    )
    html = await resp.text()
    assert resp.status == 400 and "may not name our organisation" in html
    assert fake_hs.users == {}
    resp = await client.post(
        "/register", data=base | {"username": "alice", "display_name": "Alice"}
    )
    assert resp.status == 200
