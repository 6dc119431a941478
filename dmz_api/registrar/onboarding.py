"""The public guest onboarding page: ``GET``/``POST /register``.

HTML only, no JavaScript. Every response carries a strict CSP and ``no-store``; the form is
protected by a signed double-submit CSRF token bound to the invitation token, and every
address is rate-limited. Guests never see exception or homeserver text. A submission looks
its token up once (``page_token``, before the form is read) and hands that row to
``RegistrarService.register_found``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from .config import RegistrarConfig
from .crypto import NONCE_PATTERN, TOKEN_PATTERN, RegistrarKeys, hash_token, new_nonce
from .ratelimit import Limiter, RateLimiter
from .service import (
    REGISTRAR,
    FormRejected,
    PageState,
    RegistrarService,
    TokenBusy,
    TokenUnusable,
    TryLater,
    validate_localpart,
)
from .store import TokenRow

log = logging.getLogger("dmz_api.registrar.page")

CSRF_COOKIE = "bastion_csrf"
CSRF_MAX_AGE = 2 * 3600
CSS_PATH = "/register/static/registrar.css"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}

REFUSALS = {
    "username_taken": "This username is already taken. Please choose another one.",
    "username_invalid": "The homeserver does not accept this username. Please choose another.",
    "password_weak": "The homeserver considers this password too weak. Please choose a longer one.",
}

# The name of each field, for the error summary's links (a link must say where it leads).
FIELD_LABELS = {
    "username": "Username",
    "password": "Password",
    "password_confirm": "Repeat the password",
    "display_name": "Display name",
}

_STATE_PAGES: dict[str, tuple[int, str, list[str]]] = {
    "unknown": (
        404,
        "This invitation link is not valid",
        [
            "Check that you opened the complete link you received.",
            "If it still does not work, ask the person who invited you for a new link.",
        ],
    ),
    "used": (
        410,
        "This invitation link has already been used",
        [
            "Each link creates one account only. If you created your account already, sign in "
            "with your Matrix client. Otherwise ask the person who invited you for a new link.",
        ],
    ),
    "expired": (
        410,
        "This invitation link has expired",
        ["Ask the person who invited you for a new link."],
    ),
    "revoked": (
        410,
        "This invitation link has been withdrawn",
        ["Ask the person who invited you for a new link if you still need access."],
    ),
}


def _networks(values: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            log.warning("Ignoring server.trusted_proxies entry %r: not an address", value)
    return networks


def client_key(
    request: web.Request, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str:
    """The rate-limit key of the client: its address (IPv6: its /64)."""

    def parse(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address((value or "").strip())
        except ValueError:
            return None

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in net for net in trusted)

    address = parse(request.remote)
    if address is not None and trusted and is_trusted(address):
        hops = request.headers.get("X-Forwarded-For", "").split(",")
        for hop in reversed(hops):
            hop_address = parse(hop)
            if hop_address is None:
                break
            address = hop_address
            if not is_trusted(hop_address):
                break
    if address is None:
        return request.remote or "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class OnboardingPage:
    def __init__(
        self,
        registrar: RegistrarConfig,
        keys: RegistrarKeys,
        *,
        public_url: str,
        trusted_proxies: Sequence[str],
    ) -> None:
        self.registrar = registrar
        self.keys = keys
        self.secure_cookie = public_url.startswith("https://")
        self.trusted = _networks(trusted_proxies)
        # In memory until setup() swaps in the shared buckets (PostgreSQL).
        self.limiter: Limiter = RateLimiter(
            registrar.rate_limit.per_minute, registrar.rate_limit.burst
        )
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("dmz_api.registrar", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.css = resources.files(__package__).joinpath("static/registrar.css").read_bytes()
        self.css_url = f"{CSS_PATH}?v={hashlib.sha256(self.css).hexdigest()[:12]}"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/register", self.get_register, name="register_page")
        app.router.add_post("/register", self.post_register, name="register_submit")
        app.router.add_get(CSS_PATH, self.get_css, name="register_css")

    # ---- responses ----

    def render(
        self,
        template: str,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> web.Response:
        html = self.env.get_template(template).render(
            page_title=self.registrar.page_title,
            server_name=self.registrar.homeserver.server_name,
            css_url=self.css_url,
            **context,
        )
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={**PAGE_HEADERS, **(headers or {})},
        )

    def message(
        self,
        status: int,
        heading: str,
        paragraphs: list[str],
        *,
        retry_url: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        return self.render(
            "message.html",
            status,
            headers,
            heading=heading,
            paragraphs=paragraphs,
            retry_url=retry_url,
            sign_in_url=None,
        )

    def state_page(self, state: PageState) -> web.Response:
        status, heading, paragraphs = _STATE_PAGES[state]
        if state == "used":
            # Whoever used it most likely did so themselves: say where to sign in.
            return self.render(
                "message.html",
                status,
                None,
                heading=heading,
                paragraphs=paragraphs,
                retry_url=None,
                sign_in_url=self.registrar.homeserver.client_url,
            )
        return self.message(status, heading, paragraphs)

    def try_later(self) -> web.Response:
        return self.message(
            503,
            "Please try again later",
            [
                "We could not reach the chat server just now. Your invitation link has not "
                "been used: open it again in a few minutes.",
            ],
            headers={"Retry-After": "60"},
        )

    def form(
        self,
        request: web.Request,
        token: str,
        *,
        status: int = 200,
        errors: Mapping[str, str] | None = None,
        username: str = "",
        display_name: str = "",
    ) -> web.Response:
        nonce = request.cookies.get(CSRF_COOKIE, "")
        fresh = not NONCE_PATTERN.match(nonce)
        if fresh:
            nonce = new_nonce()
        csrf = self.keys.csrf_token(nonce, hash_token(token), int(time.time()))
        response = self.render(
            "form.html",
            status,
            token=token,
            csrf_token=csrf,
            action="/register",
            # Missing fields read as "" in the template (StrictUndefined elsewhere).
            errors=defaultdict(str, errors or {}),
            labels=FIELD_LABELS,
            username=username,
            display_name=display_name,
            password_min_length=self.registrar.password_min_length,
        )
        if fresh:
            response.set_cookie(
                CSRF_COOKIE,
                nonce,
                path="/register",
                httponly=True,
                secure=self.secure_cookie,
                samesite="Strict",
            )
        return response

    async def limited(self, request: web.Request, service: RegistrarService) -> web.Response | None:
        wait = await self.limiter.take(client_key(request, self.trusted))
        if wait <= 0:
            return None
        service.metrics.rate_limited.inc()
        seconds = max(1, int(wait + 0.999))
        # A way forward that is a plain GET: reloading a refused POST would send it again.
        token = request.query.get("token", "")
        if request.method == "POST":
            try:
                token = _field(await request.post(), "token")
            except ValueError:
                token = ""
        retry = f"/register?token={quote(token)}" if TOKEN_PATTERN.match(token) else None
        return self.message(
            429,
            "Too many attempts",
            [
                f"Please wait {seconds} seconds, then open the form again."
                if retry
                else f"Please wait {seconds} seconds, then open your invitation link again."
            ],
            retry_url=retry,
            headers={"Retry-After": str(seconds)},
        )

    # ---- handlers ----

    async def get_css(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.css,
            content_type="text/css",
            charset="utf-8",
            headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"},
        )

    async def get_register(self, request: web.Request) -> web.Response:
        service = request.app[REGISTRAR]
        if (refusal := await self.limited(request, service)) is not None:
            return refusal
        token = request.query.get("token", "").strip()
        try:
            _, state = await service.page_token(token)
            if state != "active":
                return self.state_page(state)
            return self.form(request, token)
        except Exception:
            log.exception("Onboarding page failed")
            return self.try_later()

    async def post_register(self, request: web.Request) -> web.Response:
        service = request.app[REGISTRAR]
        if (refusal := await self.limited(request, service)) is not None:
            return refusal
        try:
            form = await request.post()
        except ValueError:
            return self.state_page("unknown")
        token = _field(form, "token")
        try:
            row, state = await service.page_token(token)
            if row is None or state != "active":
                return self.state_page(state)
            return await self._submit(request, service, form, token, row)
        except Exception:
            log.exception("Onboarding page failed")
            return self.try_later()

    async def _submit(
        self,
        request: web.Request,
        service: RegistrarService,
        form: MultiDictProxy[Any],
        token: str,
        row: TokenRow,
    ) -> web.Response:
        username = _field(form, "username")[:200]
        display_name = _field(form, "display_name")[:200]
        password = _field(form, "password", strip=False)
        confirm = _field(form, "password_confirm", strip=False)

        def again(errors: Mapping[str, str], status: int = 400) -> web.Response:
            return self.form(
                request,
                token,
                status=status,
                errors=errors,
                username=username,
                display_name=display_name,
            )

        if not self.keys.check_csrf(
            _field(form, "csrf_token"),
            request.cookies.get(CSRF_COOKIE, ""),
            hash_token(token),
            int(time.time()),
            CSRF_MAX_AGE,
        ):
            return again({"username": "Your form had expired. Please submit it again."})
        errors: dict[str, str] = {}
        localpart = ""
        try:
            localpart = validate_localpart(username, self.registrar.homeserver.server_name)
        except FormRejected as e:
            errors["username"] = e.reason
        else:
            if reserved := self.registrar.names.check_username(localpart):
                errors["username"] = reserved
        minimum = self.registrar.password_min_length
        if len(password) < minimum:
            errors["password"] = f"Use at least {minimum} characters."
        elif len(password) > 512:
            errors["password"] = "Use at most 512 characters."  # noqa: S105
        if password != confirm:
            errors["password_confirm"] = "The two passwords do not match."  # noqa: S105
        if len(display_name) > 100:
            errors["display_name"] = "Use at most 100 characters."
        elif display_name and (claim := self.registrar.names.check_display_name(display_name)):
            errors["display_name"] = claim
        if errors:
            return again(errors)
        try:
            user_id = await service.register_found(
                row, token, localpart, password, display_name or None
            )
        except FormRejected as e:
            return again({e.field: REFUSALS.get(e.reason, e.reason)})
        except TokenUnusable as e:
            return self.state_page(e.state)
        except TokenBusy:
            return self.message(
                409,
                "This invitation link is being used right now",
                [
                    "Someone is creating an account with this link at this moment. If that was "
                    "you in another window, check there. Otherwise wait a minute and try again.",
                ],
            )
        except TryLater:
            return self.try_later()
        return self.render(
            "success.html",
            user_id=user_id,
            localpart=localpart,
            homeserver_url=self.registrar.homeserver.client_url,
        )


def _field(form: MultiDictProxy[Any], name: str, *, strip: bool = True) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        return ""
    return value.strip() if strip else value
