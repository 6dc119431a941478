"""The public guest onboarding page: ``GET``/``POST /register``.

HTML only, no JavaScript. Every response carries a strict CSP and ``no-store``; the form is
protected by a signed double-submit CSRF token bound to the invitation token, and every
address is rate-limited. Guests never see exception or homeserver text. Every text is a
gettext msgid (English), shown in the request's language (``i18n.choose``: ``lang`` from the
switch or the form, else ``Accept-Language``): the templates' messages are translated when
each language's templates compile (``templating``), messages from Python when rendered. A
submission looks its token up once (``page_token``, before the form is read) and hands that
row to ``RegistrarService.register_found``.
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

from . import i18n
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
from .templating import TranslatedEnvironment

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

N_ = i18n.N_

REFUSALS = {
    "username_taken": N_("This username is already taken. Please choose another one."),
    "username_invalid": N_("The homeserver does not accept this username. Please choose another."),
    "password_weak": N_(
        "The homeserver considers this password too weak. Please choose a longer one."
    ),
}

# The name of each field, for the error summary's links (a link must say where it leads).
FIELD_LABELS = {
    "username": N_("Username"),
    "password": N_("Password"),
    "password_confirm": N_("Repeat the password"),
    "display_name": N_("Display name"),
}

_STATE_PAGES: dict[str, tuple[int, str, list[str]]] = {
    "unknown": (
        404,
        N_("This invitation link is not valid"),
        [
            N_("Check that you opened the complete link you received."),
            N_("If it still does not work, ask the person who invited you for a new link."),
        ],
    ),
    "used": (
        410,
        N_("This invitation link has already been used"),
        [
            N_(
                "Each link creates one account only. If you created your account already, sign in "
                "with your Matrix client. Otherwise ask the person who invited you for a new link."
            ),
        ],
    ),
    "expired": (
        410,
        N_("This invitation link has expired"),
        [N_("Ask the person who invited you for a new link.")],
    ),
    "revoked": (
        410,
        N_("This invitation link has been withdrawn"),
        [N_("Ask the person who invited you for a new link if you still need access.")],
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


Message = str | tuple[str, Mapping[str, object]]
"""A msgid, or a msgid with ``%(name)s`` parameters; translated when the page is rendered."""


def translate(lang: str, message: Message) -> str:
    tr = i18n.translations(lang)
    if isinstance(message, str):
        return tr.gettext(message)
    msgid, params = message
    return tr.gettext(msgid) % params


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
        # One environment per language: its templates are compiled with its translations.
        self.envs = {lang: self._environment(lang) for lang in i18n.LANGUAGES}
        self.css = resources.files(__package__).joinpath("static/registrar.css").read_bytes()
        self.css_url = f"{CSS_PATH}?v={hashlib.sha256(self.css).hexdigest()[:12]}"

    @staticmethod
    def _environment(lang: str) -> jinja2.Environment:
        return TranslatedEnvironment(
            i18n.translations(lang), jinja2.PackageLoader("dmz_api.registrar", "templates")
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/register", self.get_register, name="register_page")
        app.router.add_post("/register", self.post_register, name="register_submit")
        app.router.add_get(CSS_PATH, self.get_css, name="register_css")

    @staticmethod
    def language(request: web.Request, form: MultiDictProxy[Any] | None = None) -> str:
        explicit = _field(form, "lang") if form is not None else request.query.get("lang")
        return i18n.choose(explicit, request.headers.get("Accept-Language"))

    # ---- responses ----

    def render(
        self,
        lang: str,
        template: str,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        switch_token: str | None = None,
        **context: Any,
    ) -> web.Response:
        def switch_url(code: str) -> str:
            token = f"token={quote(switch_token)}&" if switch_token else ""
            return f"/register?{token}lang={code}"

        html = (
            self.envs[lang]
            .get_template(template)
            .render(
                page_title=self.registrar.page_title,
                server_name=self.registrar.homeserver.server_name,
                css_url=self.css_url,
                lang=lang,
                languages=i18n.LANGUAGES,
                switch_url=switch_url if switch_token is not None else None,
                **context,
            )
        )
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={**PAGE_HEADERS, "Content-Language": lang, **(headers or {})},
        )

    def message(
        self,
        lang: str,
        status: int,
        heading: Message,
        paragraphs: Sequence[Message],
        *,
        retry_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        sign_in_url: str | None = None,
        switch_token: str | None = "",
    ) -> web.Response:
        return self.render(
            lang,
            "message.html",
            status,
            headers,
            switch_token=switch_token,
            heading=translate(lang, heading),
            paragraphs=[translate(lang, p) for p in paragraphs],
            retry_url=retry_url,
            sign_in_url=sign_in_url,
        )

    def state_page(self, lang: str, state: PageState, token: str = "") -> web.Response:
        status, heading, paragraphs = _STATE_PAGES[state]
        # The switch reloads the same link: only a well-formed token is echoed back.
        switch = token if TOKEN_PATTERN.match(token) else ""
        # Whoever used it most likely did so themselves: say where to sign in.
        sign_in = self.registrar.homeserver.client_url if state == "used" else None
        return self.message(
            lang, status, heading, paragraphs, sign_in_url=sign_in, switch_token=switch
        )

    def try_later(self, lang: str) -> web.Response:
        return self.message(
            lang,
            503,
            N_("Please try again later"),
            [
                N_(
                    "We could not reach the chat server just now. Your invitation link has not "
                    "been used: open it again in a few minutes."
                ),
            ],
            headers={"Retry-After": "60"},
        )

    def form(
        self,
        request: web.Request,
        lang: str,
        token: str,
        row: TokenRow,
        *,
        status: int = 200,
        errors: Mapping[str, Message] | None = None,
        username: str = "",
        display_name: str = "",
    ) -> web.Response:
        nonce = request.cookies.get(CSRF_COOKIE, "")
        fresh = not NONCE_PATTERN.match(nonce)
        if fresh:
            nonce = new_nonce()
        csrf = self.keys.csrf_token(nonce, hash_token(token), int(time.time()))
        response = self.render(
            lang,
            "form.html",
            status,
            switch_token=token,
            token=token,
            csrf_token=csrf,
            action="/register",
            # Missing fields read as "" in the template (StrictUndefined elsewhere).
            errors=defaultdict(
                str, {field: translate(lang, m) for field, m in (errors or {}).items()}
            ),
            labels={field: translate(lang, label) for field, label in FIELD_LABELS.items()},
            username=username,
            display_name=display_name,
            password_min_length=self.registrar.password_min_length,
            expires=i18n.format_expiry(lang, row.expires_at / 1000),
            sponsor=row.sponsor if self.registrar.show_sponsor else "",
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
        lang = self.language(request)
        if request.method == "POST":
            try:
                form = await request.post()
                token = _field(form, "token")
                lang = self.language(request, form)
            except ValueError:
                token = ""
        ok = TOKEN_PATTERN.match(token) is not None
        retry = f"/register?token={quote(token)}&lang={lang}" if ok else None
        tr = i18n.translations(lang)
        text = (
            tr.ngettext(
                "Please wait %(seconds)s second, then open the form again.",
                "Please wait %(seconds)s seconds, then open the form again.",
                seconds,
            )
            if retry
            else tr.ngettext(
                "Please wait %(seconds)s second, then open your invitation link again.",
                "Please wait %(seconds)s seconds, then open your invitation link again.",
                seconds,
            )
        )
        return self.message(
            lang,
            429,
            N_("Too many attempts"),
            [text % {"seconds": seconds}],
            retry_url=retry,
            headers={"Retry-After": str(seconds)},
            switch_token=token if ok else "",
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
        lang = self.language(request)
        token = request.query.get("token", "").strip()
        try:
            row, state = await service.page_token(token)
            if row is None or state != "active":
                return self.state_page(lang, state, token)
            return self.form(request, lang, token, row)
        except Exception:
            log.exception("Onboarding page failed")
            return self.try_later(lang)

    async def post_register(self, request: web.Request) -> web.Response:
        service = request.app[REGISTRAR]
        if (refusal := await self.limited(request, service)) is not None:
            return refusal
        try:
            form = await request.post()
        except ValueError:
            return self.state_page(self.language(request), "unknown")
        lang = self.language(request, form)
        token = _field(form, "token")
        try:
            row, state = await service.page_token(token)
            if row is None or state != "active":
                return self.state_page(lang, state, token)
            return await self._submit(request, lang, service, form, token, row)
        except Exception:
            log.exception("Onboarding page failed")
            return self.try_later(lang)

    async def _submit(
        self,
        request: web.Request,
        lang: str,
        service: RegistrarService,
        form: MultiDictProxy[Any],
        token: str,
        row: TokenRow,
    ) -> web.Response:
        username = _field(form, "username")[:200]
        display_name = _field(form, "display_name")[:200]
        password = _field(form, "password", strip=False)
        confirm = _field(form, "password_confirm", strip=False)

        def again(errors: Mapping[str, Message], status: int = 400) -> web.Response:
            return self.form(
                request,
                lang,
                token,
                row,
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
            return again({"username": N_("Your form had expired. Please submit it again.")})
        errors: dict[str, Message] = {}
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
            errors["password"] = (N_("Use at least %(count)s characters."), {"count": minimum})
        elif len(password) > 512:
            errors["password"] = (N_("Use at most %(count)s characters."), {"count": 512})
        if password != confirm:
            errors["password_confirm"] = N_("The two passwords do not match.")
        if len(display_name) > 100:
            errors["display_name"] = (N_("Use at most %(count)s characters."), {"count": 100})
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
            return self.state_page(lang, e.state, token)
        except TokenBusy:
            return self.message(
                lang,
                409,
                N_("This invitation link is being used right now"),
                [
                    N_(
                        "Someone is creating an account with this link at this moment. If that "
                        "was you in another window, check there. Otherwise wait a minute and try "
                        "again."
                    ),
                ],
            )
        except TryLater:
            return self.try_later(lang)
        return self.render(
            lang,
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
