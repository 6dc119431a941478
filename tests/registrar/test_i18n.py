"""The onboarding page's languages: catalogues current and complete, the choice of language,
dates, and the page answering in the chosen language (form, errors, switch, POST)."""

from __future__ import annotations

import io
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from dmz_api.app import init_app
from dmz_api.registrar import REGISTRAR, i18n

from .conftest import SPONSOR, app_config, csrf_of, registrar_section
from .fakes import FakeHomeserver
from .test_onboarding import form, mint

Client = TestClient[Any, Any]
ROOT = Path(__file__).resolve().parents[2]
LOCALE = ROOT / "dmz_api" / "registrar" / "locale"
TRANSLATED = [lang for lang in i18n.LANGUAGES if lang != i18n.DEFAULT]


def source_messages() -> set[str | tuple[str, str]]:
    """Every msgid in the page's templates and Python code, as `pybabel extract` finds it."""
    found: set[str | tuple[str, str]] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT),
        method_map=[
            ("dmz_api/registrar/**.py", "python"),
            ("dmz_api/registrar/templates/**.html", "jinja2"),
        ],
        options_map={"dmz_api/registrar/templates/**.html": {"trimmed": "true"}},
        keywords={"N_": None, "_": None, "gettext": None, "ngettext": (1, 2)},
    ):
        found.add(message if isinstance(message, str) else (message[0], message[1]))
    return found


def catalogue(lang: str) -> Any:
    with (LOCALE / lang / "LC_MESSAGES" / "onboarding.po").open("rb") as f:
        return read_po(f, locale=lang)


def test_the_source_has_the_messages_the_page_shows() -> None:
    messages = source_messages()
    # Messages written in Python, templates, and the plural of the rate-limit page.
    assert "This username is reserved. Please choose another one." in messages
    assert "Create your account" in messages
    assert any(isinstance(m, tuple) and "%(seconds)s seconds" in m[1] for m in messages)
    assert len(messages) > 60


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_message_is_translated(lang: str) -> None:
    cat = catalogue(lang)
    untranslated = []
    for message in source_messages():
        msgid = message if isinstance(message, str) else message[0]
        entry = cat.get(msgid)
        strings = [] if entry is None else entry.string
        strings = [strings] if isinstance(strings, str) else list(strings)
        if entry is None or entry.fuzzy or not strings or not all(strings):
            untranslated.append(msgid)
    assert untranslated == [], f"{lang}: untranslated: {untranslated}"
    # Placeholders and formats agree with the msgids (Babel's own checkers).
    problems = [(m.id, [str(e) for e in errors]) for m, errors in cat.check()]
    assert problems == []


@pytest.mark.parametrize("lang", TRANSLATED)
def test_the_shipped_mo_is_compiled_from_the_po(lang: str) -> None:
    compiled = io.BytesIO()
    write_mo(compiled, catalogue(lang))
    shipped = resources.files("dmz_api.registrar").joinpath(
        f"locale/{lang}/LC_MESSAGES/onboarding.mo"
    )
    assert shipped.read_bytes() == compiled.getvalue(), (
        f"run: pybabel compile -d dmz_api/registrar/locale -D onboarding -l {lang}"
    )


@pytest.mark.parametrize(
    ("explicit", "header", "expected"),
    [
        (None, None, "en"),
        (None, "de-DE,de;q=0.9,en;q=0.8", "de"),
        (None, "en;q=0.5, fr;q=0.9", "fr"),
        (None, "fr-CA;q=0.2, de;q=0.3", "de"),
        (None, "es, it;q=0.9, fr;q=0.1", "fr"),
        (None, "es, it", "en"),
        (None, "de;q=0, fr;q=0.4", "fr"),
        (None, "de;q=nonsense, fr;q=0.4", "fr"),
        (None, "*, de;q=0.5", "en"),
        ("fr", "de", "fr"),
        ("xx", "de", "de"),
        ("", "fr", "fr"),
    ],
)
def test_choose_honours_quality_values_and_the_switch(
    explicit: str | None, header: str | None, expected: str
) -> None:
    assert i18n.choose(explicit, header) == expected


def test_expiry_is_written_as_each_language_writes_dates() -> None:
    moment = datetime(2026, 3, 4, 17, 5, tzinfo=i18n.UTC).timestamp()
    assert i18n.format_expiry("en", moment) == "March 4, 2026, 17:05 UTC"
    assert i18n.format_expiry("de", moment) == "4. März 2026, 17:05 Uhr UTC"
    assert i18n.format_expiry("fr", moment) == "4 mars 2026 à 17:05 UTC"


async def test_the_page_answers_in_the_accepted_language(client: Client) -> None:
    token = (await mint(client))["token"]
    resp = await client.get(
        "/register", params={"token": token}, headers={"Accept-Language": "de;q=0.9, en;q=0.5"}
    )
    html = await resp.text()
    assert '<html lang="de">' in html and resp.headers["Content-Language"] == "de"
    assert "<h1>Konto anlegen</h1>" in html and "Benutzername" in html
    assert 'name="lang" value="de"' in html
    # The switch: plain links that keep the token, the current one marked.
    for code in i18n.LANGUAGES:
        assert f'href="/register?token={token}&amp;lang={code}"' in html
    assert 'lang="de" hreflang="de" aria-current="true"' in html
    switched = await (
        await client.get(
            "/register", params={"token": token, "lang": "fr"}, headers={"Accept-Language": "de"}
        )
    ).text()
    assert '<html lang="fr">' in switched and "Créez votre compte" in switched


@pytest.mark.parametrize(
    ("lang", "reserved", "display_claim"),
    [
        ("en", "This username is reserved.", "This display name is reserved"),
        ("de", "Dieser Benutzername ist reserviert.", "Dieser Anzeigename ist reserviert"),
        ("fr", "Ce nom d\u2019utilisateur est réservé.", "Ce nom d\u2019affichage est réservé"),
    ],
)
async def test_a_post_answers_in_the_language_of_its_form(
    client: Client, lang: str, reserved: str, display_claim: str
) -> None:
    token = (await mint(client))["token"]
    page = await client.get("/register", params={"token": token, "lang": lang})
    csrf = csrf_of(await page.text())
    # The hidden field wins over a browser that asks for another language.
    resp = await client.post(
        "/register",
        data={**form(token, csrf, username="Ad.Min", display_name="S U P P O R T"), "lang": lang},
        headers={"Accept-Language": "en" if lang != "en" else "de"},
    )
    html = await resp.text()
    assert resp.status == 400 and f'<html lang="{lang}">' in html
    assert reserved in html and display_claim in html
    # The summary's "field: message" follows the language's punctuation too.
    label = {"en": "Username: ", "de": "Benutzername: ", "fr": "Nom d\u2019utilisateur\u00a0: "}
    assert f'<a href="#username">{label[lang]}{reserved}' in html


async def test_state_pages_are_translated(client: Client) -> None:
    html = await (
        await client.get(
            "/register", params={"token": "<not a token>"}, headers={"Accept-Language": "fr"}
        )
    ).text()
    assert '<html lang="fr">' in html and "Ce lien d\u2019invitation n\u2019est pas valide" in html
    # Only a well-formed token is echoed into the switch.
    assert 'href="/register?lang=de"' in html and "not a token" not in html


async def test_the_page_says_until_when_the_link_works(client: Client) -> None:
    minted = await mint(client)
    expires = datetime.fromisoformat(minted["expires_at"].replace("Z", "+00:00"))
    html = await (
        await client.get(
            "/register", params={"token": minted["token"]}, headers={"Accept-Language": "de"}
        )
    ).text()
    assert f"gültig bis <strong>{i18n.format_expiry('de', expires.timestamp())}</strong>" in html
    # The sponsor is not named unless the config says so.
    assert SPONSOR not in html


async def test_the_sponsor_is_named_when_configured(aiohttp_client: Any, tmp_path: Path) -> None:
    section = registrar_section(onboarding={"show_sponsor": True})
    app = init_app(app_config(f"sqlite:{tmp_path / 'sponsor.db'}", section))
    client: Client = await aiohttp_client(app)
    app[REGISTRAR].adapter = FakeHomeserver()
    token = (await mint(client))["token"]
    html = await (await client.get("/register", params={"token": token})).text()
    assert f"You were invited by <code>{SPONSOR}</code>." in html
