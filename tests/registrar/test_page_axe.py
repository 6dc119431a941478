"""axe-core in Debian's Chromium against every state of the onboarding page, in each language:
form, form with errors, used, expired, revoked, not valid, rate-limited, success.

WCAG 2.x A and AA rules plus the AAA contrast rule (``color-contrast-enhanced``, 7:1); any
violation fails the test with a readable list. axe is vendored (vendor/axe-core/README.md)
and run through playwright's evaluate, which the page's CSP does not govern; the page itself
has no scripts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, async_playwright

from devstack.synapse import Synapse
from dmz_api.app import init_app
from dmz_api.registrar import REGISTRAR, i18n

from .conftest import app_config, auth

pytestmark = pytest.mark.slow

AXE = (Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js").read_text()
AXE_OPTIONS = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa"],
    },
    "rules": {"color-contrast-enhanced": {"enabled": True}},
    "resultTypes": ["violations"],
}
PASSWORD = "axe guest password"
Client = TestClient[Any, Any]


def section(synapse: Synapse, **extra: Any) -> dict[str, Any]:
    return {
        "homeserver": {
            "kind": "synapse",
            "url": synapse.base_url,
            "server_name": synapse.server_name,
            "admin_token": synapse.admin_token,
            "client_url": "https://partners.example.com",
        },
        "secret": "axe-test-secret-" + "d" * 24,
        "rate_limit": {"per_minute": 60000, "burst": 1000},
        "onboarding": {"show_sponsor": True},
        **extra,
    }


async def mint(client: Client, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/tokens", json=body, headers=auth())
    assert resp.status == 201
    result: dict[str, Any] = await resp.json()
    return result


def readable(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']}")
        for node in v["nodes"][:5]:
            lines.append(f"    {' '.join(node['target'])}: {node['failureSummary']}")
    return "\n".join(lines)


async def audit(page: Page, name: str, found: dict[str, str]) -> None:
    """Run axe on the page as it is; note violations under ``name``."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE)
    result = await page.evaluate("options => axe.run(document, options)", AXE_OPTIONS)
    # The AAA rule really ran and judged text (it is not among the tags above).
    judged = {rule["id"] for kind in ("passes", "violations") for rule in result[kind]}
    assert "color-contrast-enhanced" in judged and "color-contrast" in judged, name
    if result["violations"]:
        found[name] = readable(result["violations"])


@pytest.fixture
async def browser(chromium: tuple[str, list[str]]) -> AsyncIterator[Browser]:
    executable, args = chromium
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=executable, args=args)
        try:
            yield launched
        finally:
            await launched.close()


async def test_axe_finds_nothing_on_any_page_state(
    aiohttp_client: Any,
    tmp_path: Path,
    dmz_synapse: Synapse,
    browser: Browser,
    artifacts_dir: Path,
    unique: str,
) -> None:
    client: Client = await aiohttp_client(
        init_app(app_config(f"sqlite:{tmp_path / 'axe.db'}", section(dmz_synapse)))
    )
    tight: Client = await aiohttp_client(
        init_app(
            app_config(
                f"sqlite:{tmp_path / 'axe-tight.db'}",
                section(dmz_synapse, rate_limit={"per_minute": 1, "burst": 1}),
            )
        )
    )
    found: dict[str, str] = {}
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    for n, lang in enumerate(i18n.LANGUAGES):
        headers = {"Accept-Language": lang}
        await context.set_extra_http_headers(headers)
        token = (await mint(client))["token"]
        url = str(client.make_url(f"/register?token={token}"))

        await page.goto(url)
        assert await page.get_attribute("html", "lang") == lang
        await audit(page, f"{lang} form", found)

        # Every field in error at once: reserved name, short password, mismatch, claim.
        await page.locator("#username").fill("Ad.Min")
        await page.locator("#password").fill("short")
        await page.locator("#password_confirm").fill("other")
        await page.locator("#display_name").fill("S U P P O R T")
        await page.locator("button[type=submit]").click()
        await page.wait_for_load_state()
        assert await page.locator("#form-errors li").count() == 4
        await audit(page, f"{lang} form with errors", found)
        await page.screenshot(path=str(artifacts_dir / f"registrar-axe-errors-{lang}.png"))

        await page.locator("#username").fill(f"{unique}{lang}")
        await page.locator("#display_name").fill("")
        await page.locator("#password").fill(PASSWORD)
        await page.locator("#password_confirm").fill(PASSWORD)
        await page.locator("button[type=submit]").click()
        await page.wait_for_load_state()
        assert await page.locator("#form-errors").count() == 0
        await audit(page, f"{lang} success", found)

        await page.goto(url)
        assert (await page.evaluate("document.title")).startswith(
            i18n.translations(lang).gettext("This invitation link has already been used")
        )
        await audit(page, f"{lang} used", found)

        revoked = await mint(client)
        await client.delete(f"/v1/tokens/{revoked['id']}", headers=auth())
        await page.goto(str(client.make_url(f"/register?token={revoked['token']}")))
        await audit(page, f"{lang} revoked", found)

        await page.goto(str(client.make_url("/register?token=not-a-real-token")))
        await audit(page, f"{lang} not valid", found)

        expired = (await mint(client, expires_in=1))["token"]
        service = client.app[REGISTRAR]
        service.clock = lambda: time.time() + 3600
        try:
            await page.goto(str(client.make_url(f"/register?token={expired}")))
            await audit(page, f"{lang} expired", found)
        finally:
            service.clock = time.time

        # The tight app lets one request through per minute: the next is refused.
        tight_token = (await mint(tight))["token"]
        tight_url = str(tight.make_url(f"/register?token={tight_token}&lang={lang}"))
        response = await page.goto(tight_url)
        if n == 0:
            assert response is not None and response.status == 200
            response = await page.goto(tight_url)
        assert response is not None and response.status == 429
        await audit(page, f"{lang} rate-limited", found)
    await context.close()
    assert found == {}, "axe found:\n" + "\n".join(
        f"== {name}\n{text}" for name, text in found.items()
    )
