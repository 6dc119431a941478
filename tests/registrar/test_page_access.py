"""What a guest stumbles on, measured in Debian's Chromium: after an error, at 320 px, the
focus ring, and the pages that end the way (used link, rate limit).

The page has no scripts; JavaScript is on in this context only so the test can read
computed styles and geometry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, async_playwright

from devstack.synapse import Synapse
from dmz_api.app import init_app

from .conftest import app_config, auth

pytestmark = pytest.mark.slow

PASSWORD = "browser guest password"
CARD, ERROR_BOX = (255, 255, 255), (254, 242, 242)


def luminance(rgb: tuple[int, ...]) -> float:
    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    low, high = sorted((luminance(a), luminance(b)))
    return (high + 0.05) / (low + 0.05)


async def rgb(page: Page, selector: str, prop: str) -> tuple[int, ...]:
    value: str = await page.eval_on_selector(selector, f"e => getComputedStyle(e).{prop}")
    return tuple(int(part) for part in value[value.index("(") + 1 : value.index(")")].split(","))


@pytest.fixture
async def page_url(
    aiohttp_client: Any, tmp_path: Path, dmz_synapse: Synapse
) -> tuple[TestClient[Any, Any], str]:
    section = {
        "homeserver": {
            "kind": "synapse",
            "url": dmz_synapse.base_url,
            "server_name": dmz_synapse.server_name,
            "admin_token": dmz_synapse.admin_token,
            "client_url": "https://partners.example.com",
        },
        "secret": "browser-test-secret-" + "c" * 20,
        "rate_limit": {"per_minute": 60000, "burst": 1000},
    }
    client: TestClient[Any, Any] = await aiohttp_client(
        init_app(app_config(f"sqlite:{tmp_path / 'access.db'}", section))
    )
    resp = await client.post("/v1/tokens", json={}, headers=auth())
    token = (await resp.json())["token"]
    return client, str(client.make_url(f"/register?token={token}"))


async def test_what_a_guest_meets_after_an_error_and_on_a_small_screen(
    page_url: tuple[TestClient[Any, Any], str],
    chromium: tuple[str, list[str]],
    artifacts_dir: Path,
    unique: str,
) -> None:
    _client, url = page_url
    executable, args = chromium
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=args)
        try:
            context = await browser.new_context(viewport={"width": 320, "height": 720})
            page = await context.new_page()
            await page.goto(url)
            # At 320 px nothing leaves the card, the Matrix ID included.
            overflow = await page.eval_on_selector("main", "m => m.scrollWidth - m.clientWidth")
            assert overflow <= 0
            card = await page.locator("main").bounding_box()
            intro = await page.locator("main > p").nth(1).bounding_box()
            assert card and intro and intro["x"] + intro["width"] <= card["x"] + card["width"]

            # The focus ring stands out 3:1 against the card and the error box.
            await page.get_by_label("Username").focus()
            ring = await rgb(page, "#username", "outlineColor")
            assert contrast(ring, CARD) >= 3 and contrast(ring, ERROR_BOX) >= 3

            await page.get_by_label("Username").fill(unique)
            await page.get_by_label("Password", exact=True).fill(PASSWORD)
            await page.get_by_label("Repeat the password").fill("not the same password")
            await page.get_by_role("button", name="Create account").click()
            await page.wait_for_load_state()
            assert (await page.title()).startswith("Error: Create your account")
            focused = await page.evaluate("document.activeElement.id")
            assert focused == "form-errors"
            links = await page.locator("#form-errors a").all_inner_texts()
            assert links == ["Repeat the password: The two passwords do not match."]
            assert "both password fields were emptied" in await page.inner_text("#form-errors")
            assert await page.get_by_label("Password", exact=True).input_value() == ""
            # AAA (7:1) for the error text on the card and in the error box.
            for selector, background in ((".error", CARD), ("#form-errors a", ERROR_BOX)):
                assert contrast(await rgb(page, selector, "color"), background) >= 7
            assert contrast((255, 255, 255), await rgb(page, "button", "backgroundColor")) >= 7
            await page.screenshot(
                path=str(artifacts_dir / "registrar-320-error.png"), full_page=True
            )

            await page.get_by_label("Password", exact=True).fill(PASSWORD)
            await page.get_by_label("Repeat the password").fill(PASSWORD)
            await page.get_by_role("button", name="Create account").click()
            await page.wait_for_load_state()
            assert await page.locator("h1").inner_text() == "Your account is ready"

            await page.goto(url)
            assert "already been used" in await page.locator("h1").inner_text()
            assert "https://partners.example.com" in await page.inner_text("main")
        finally:
            await browser.close()
