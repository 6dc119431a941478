"""The onboarding page's languages in Debian's Chromium: the browser's own Accept-Language
picks German, the switch picks French (and the form keeps it over the browser's English),
and in each language a reserved username is refused in that language."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import async_playwright

from devstack.synapse import Synapse
from dmz_api.app import init_app

from .conftest import app_config
from .test_page_axe import mint, section

pytestmark = pytest.mark.slow

Client = TestClient[Any, Any]
# (browser locale, link to click or None, expected language, heading, refusal)
CASES = [
    ("en-GB", None, "en", "Create your account", "This username is reserved."),
    ("de-DE", None, "de", "Konto anlegen", "Dieser Benutzername ist reserviert."),
    ("en-US", "Français", "fr", "Créez votre compte", "Ce nom d\u2019utilisateur est réservé."),
]


async def test_a_reserved_username_is_refused_in_each_language(
    aiohttp_client: Any,
    tmp_path: Path,
    dmz_synapse: Synapse,
    chromium: tuple[str, list[str]],
) -> None:
    client: Client = await aiohttp_client(
        init_app(app_config(f"sqlite:{tmp_path / 'langs.db'}", section(dmz_synapse)))
    )
    executable, args = chromium
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=args)
        try:
            for locale, link, lang, heading, refusal in CASES:
                # JavaScript off: the switch and the form work without it.
                context = await browser.new_context(locale=locale, java_script_enabled=False)
                page = await context.new_page()
                token = (await mint(client))["token"]
                await page.goto(str(client.make_url(f"/register?token={token}")))
                if link is not None:
                    await page.get_by_role("link", name=link).click()
                    await page.wait_for_load_state()
                    assert f"token={token}" in page.url
                assert await page.get_attribute("html", "lang") == lang
                assert await page.locator("h1").inner_text() == heading
                await page.locator("#username").fill("Sup.Port")
                await page.locator("#password").fill("a long enough password")
                await page.locator("#password_confirm").fill("a long enough password")
                await page.locator("button[type=submit]").click()
                await page.wait_for_load_state()
                assert await page.get_attribute("html", "lang") == lang
                assert refusal in await page.locator("#username-error").inner_text()
                assert refusal in await page.locator("#form-errors").inner_text()
                # Nothing was created: the same link still opens the form.
                await page.goto(str(client.make_url(f"/register?token={token}&lang={lang}")))
                assert await page.locator("form").count() == 1
                await context.close()
        finally:
            await browser.close()
