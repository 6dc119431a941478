"""The onboarding page in Debian's Chromium, with JavaScript off: form, success, used link."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import ConsoleMessage, async_playwright

from devstack.synapse import Synapse
from dmz_api.app import init_app

from .conftest import app_config, auth

pytestmark = pytest.mark.slow

PASSWORD = "browser guest password"


async def test_guest_signs_up_in_a_browser(
    aiohttp_client: Any,
    tmp_path: Path,
    dmz_synapse: Synapse,
    chromium: tuple[str, list[str]],
    artifacts_dir: Path,
    unique: str,
) -> None:
    section = {
        "homeserver": {
            "kind": "synapse",
            "url": dmz_synapse.base_url,
            "server_name": dmz_synapse.server_name,
            "admin_token": dmz_synapse.admin_token,
        },
        "secret": "browser-test-secret-" + "b" * 20,
        "page_title": "ACME partner access",
    }
    client: TestClient[Any, Any] = await aiohttp_client(
        init_app(app_config(f"sqlite:{tmp_path / 'browser.db'}", section))
    )
    resp = await client.post("/v1/tokens", json={"note": "browser"}, headers=auth())
    token = (await resp.json())["token"]
    url = str(client.make_url(f"/register?token={token}"))
    executable, args = chromium
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(message.text)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=args)
        try:
            context = await browser.new_context(
                java_script_enabled=False, viewport={"width": 390, "height": 844}
            )
            page = await context.new_page()
            page.on("console", on_console)
            await page.goto(url)
            assert await page.title() == f"Create your account · {dmz_synapse.server_name}"
            assert await page.locator("h1").inner_text() == "Create your account"
            await page.screenshot(path=str(artifacts_dir / "registrar-form.png"), full_page=True)

            await page.get_by_label("Username").fill(unique)
            await page.get_by_label("Password", exact=True).fill(PASSWORD)
            await page.get_by_label("Repeat the password").fill("not the same password")
            await page.get_by_role("button", name="Create account").click()
            assert "The two passwords do not match." in await page.content()
            await page.screenshot(
                path=str(artifacts_dir / "registrar-form-error.png"), full_page=True
            )

            await page.get_by_label("Password", exact=True).fill(PASSWORD)
            await page.get_by_label("Repeat the password").fill(PASSWORD)
            await page.get_by_label("Display name (optional)").fill("Browser Guest")
            await page.get_by_role("button", name="Create account").click()
            await page.wait_for_load_state()
            assert await page.locator("h1").inner_text() == "Your account is ready"
            body = await page.locator("main").inner_text()
            assert dmz_synapse.user_id(unique) in body and dmz_synapse.base_url in body
            assert token not in page.url
            await page.screenshot(path=str(artifacts_dir / "registrar-success.png"), full_page=True)

            used = await context.new_page()
            response = await used.goto(url)
            assert response is not None and response.status == 410
            assert "already been used" in await used.locator("h1").inner_text()
            assert await used.locator("form").count() == 0
            await used.screenshot(path=str(artifacts_dir / "registrar-used.png"), full_page=True)

            desktop = await browser.new_context(
                java_script_enabled=False, viewport={"width": 1280, "height": 800}
            )
            wide = await desktop.new_page()
            wide.on("console", on_console)
            second = await client.post("/v1/tokens", json={}, headers=auth())
            await wide.goto(
                str(client.make_url(f"/register?token={(await second.json())['token']}"))
            )
            await wide.screenshot(path=str(artifacts_dir / "registrar-form-desktop.png"))
        finally:
            await browser.close()
    assert not [p for p in problems if "Content Security Policy" in p], problems
    assert dmz_synapse.login(unique, PASSWORD)[0] == 200
