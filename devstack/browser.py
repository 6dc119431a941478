"""Debian's Chromium, driven by Playwright, as a guest uses the onboarding page.

    with ChromiumGuests() as guests:
        done = guests.register(url, "alice", "a long password")   # types, presses the button
        done.submitted            # monotonic time of the "Create account" click
        done.heading              # "Your account is ready"

Each registration is a new browser context (cookies, CSRF token and language of its own),
with JavaScript off as the page is built to work without it. The flags keep Chromium off
the network it would otherwise probe at start (closed here) and out of a sandbox it cannot
have as root.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from playwright.sync_api import Browser, Playwright, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@dataclass(frozen=True)
class PageAnswer:
    """What the page showed after "Create account" was pressed."""

    status: int
    heading: str
    text: str
    submitted: float  # time.monotonic() of the click
    answered: float  # time.monotonic() once the answer page had loaded


class ChromiumGuests:
    """One headless Chromium; each ``register`` is a fresh guest in a context of their own."""

    def __init__(self, executable: str = CHROMIUM) -> None:
        if not Path(executable).exists():
            raise FileNotFoundError(
                f"{executable} is missing: `make system-deps` installs Debian's chromium"
            )
        self.executable = executable
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    def start(self) -> ChromiumGuests:
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=self.executable, args=list(CHROMIUM_ARGS)
        )
        return self

    def stop(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None

    def __enter__(self) -> ChromiumGuests:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def register(
        self,
        url: str,
        username: str,
        password: str,
        *,
        display_name: str = "",
        locale: str = "en-GB",
        timeout: float = 30.0,
    ) -> PageAnswer:
        """Open ``url``, fill the form by its labels, press "Create account", read the answer.

        The labels are the English ones: pass another ``locale`` only to see that page's
        language, not to register through it.
        """
        assert self._browser is not None, "start() first"
        context = self._browser.new_context(locale=locale, java_script_enabled=False)
        context.set_default_timeout(timeout * 1000)
        try:
            page = context.new_page()
            opened = page.goto(url)
            if opened is None or opened.status != 200:
                raise AssertionError(f"the onboarding page answered {opened and opened.status}")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password", exact=True).fill(password)
            page.get_by_label("Repeat the password").fill(password)
            if display_name:
                page.get_by_label("Display name (optional)").fill(display_name)
            with page.expect_navigation() as navigation:
                submitted = time.monotonic()
                page.get_by_role("button", name="Create account").click()
            answer = navigation.value
            answered = time.monotonic()
            return PageAnswer(
                status=answer.status if answer is not None else 0,
                heading=page.locator("h1").inner_text(),
                text=page.locator("main").inner_text(),
                submitted=submitted,
                answered=answered,
            )
        finally:
            context.close()
