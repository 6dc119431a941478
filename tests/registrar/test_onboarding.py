"""The public onboarding page: states, form handling, CSRF, headers, rate limit."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from dmz_api.app import init_app
from dmz_api.registrar import REGISTRAR
from dmz_api.registrar.onboarding import CSRF_COOKIE, client_key
from dmz_api.registrar.ratelimit import RateLimiter

from .conftest import app_config, auth, csrf_of, registrar_section
from .fakes import FakeHomeserver

Client = TestClient[Any, Any]
PASSWORD = "long enough password"


async def mint(client: Client, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/tokens", json=body, headers=auth())
    assert resp.status == 201
    result: dict[str, Any] = await resp.json()
    return result


async def open_form(client: Client, token: str) -> str:
    page = await client.get("/register", params={"token": token})
    assert page.status == 200
    return csrf_of(await page.text())


def form(token: str, csrf: str, **fields: str) -> dict[str, str]:
    data = {
        "token": token,
        "csrf_token": csrf,
        "username": "guest",
        "password": PASSWORD,
        "password_confirm": PASSWORD,
        "display_name": "",
    }
    data.update(fields)
    return data


def assert_page_headers(resp: Any) -> None:
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp
    assert "style-src 'self'" in csp and "script-src" not in csp
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.content_type == "text/html"


async def test_form_page(client: Client) -> None:
    token = (await mint(client))["token"]
    resp = await client.get("/register", params={"token": token})
    html = await resp.text()
    assert resp.status == 200
    assert_page_headers(resp)
    for name in ("username", "password", "password_confirm", "display_name"):
        assert f'name="{name}"' in html and f'<label for="{name}"' in html
    assert f'type="hidden" name="token" value="{token}"' in html
    assert 'name="csrf_token"' in html
    assert html.count("<h1>") == 1 and "<script" not in html and "style=" not in html
    assert 'name="viewport"' in html
    cookie = resp.cookies[CSRF_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/register"


async def test_css_is_served_with_safe_headers(client: Client) -> None:
    html = await (await client.get("/register", params={"token": "x"})).text()
    href = html.split('rel="stylesheet" href="')[1].split('"')[0]
    resp = await client.get(href.replace("&amp;", "&"))
    assert resp.status == 200 and resp.content_type == "text/css"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("token", ["", "unknown-token", "bad token", "x" * 100])
async def test_unknown_token_is_404_without_form(client: Client, token: str) -> None:
    resp = await client.get("/register", params={"token": token} if token else None)
    html = await resp.text()
    assert resp.status == 404 and "<form" not in html and "not valid" in html
    assert_page_headers(resp)


async def test_used_expired_revoked_are_410(client: Client, fake_hs: FakeHomeserver) -> None:
    used = (await mint(client))["token"]
    resp = await client.post("/register", data=form(used, await open_form(client, used)))
    assert resp.status == 200
    revoked = await mint(client)
    await client.delete(f"/v1/tokens/{revoked['id']}", headers=auth())
    expired = (await mint(client, expires_in=1))["token"]
    client.app[REGISTRAR].clock = lambda: 4_000_000_000.0
    for token, words in [
        (used, "already been used"),
        (revoked["token"], "withdrawn"),
        (expired, "expired"),
    ]:
        resp = await client.get("/register", params={"token": token})
        html = await resp.text()
        assert resp.status == 410 and words in html and "<form" not in html, token
        assert_page_headers(resp)


async def test_successful_registration(client: Client, fake_hs: FakeHomeserver) -> None:
    token = (await mint(client))["token"]
    csrf = await open_form(client, token)
    resp = await client.post(
        "/register", data=form(token, csrf, username="Partner.Ann", display_name="Ann")
    )
    html = await resp.text()
    assert resp.status == 200
    assert_page_headers(resp)
    assert "@partner.ann:dmz.test" in html and "http://127.0.0.1:9" in html
    assert "Sign in" in html and "Element" in html
    assert PASSWORD not in html and token not in html
    assert fake_hs.users == {"partner.ann": PASSWORD}
    again = await client.post("/register", data=form(token, csrf, username="second"))
    assert again.status == 410 and "second" not in fake_hs.users


async def test_a_submission_looks_the_token_up_once(
    client: Client, fake_hs: FakeHomeserver
) -> None:
    token = (await mint(client))["token"]
    csrf = await open_form(client, token)
    store = client.app[REGISTRAR].store
    lookups: list[bytes] = []
    get_token_by_hash = store.get_token_by_hash

    async def counted(token_hash: bytes) -> Any:
        lookups.append(token_hash)
        return await get_token_by_hash(token_hash)

    store.get_token_by_hash = counted  # type: ignore[method-assign]
    resp = await client.post("/register", data=form(token, csrf))
    assert resp.status == 200 and fake_hs.users == {"guest": PASSWORD}
    assert len(lookups) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"password_confirm": "something else!"}, "do not match"),
        ({"password": "short", "password_confirm": "short"}, "at least 10 characters"),
        ({"username": "_bot"}, "may not start with _"),
        ({"username": "has space"}, "lower-case letters"),
        ({"username": ""}, "Choose a username"),
        ({"display_name": "d" * 101}, "at most 100"),
    ],
)
async def test_form_errors_keep_the_token(
    client: Client, fake_hs: FakeHomeserver, fields: dict[str, str], message: str
) -> None:
    token = (await mint(client))["token"]
    csrf = await open_form(client, token)
    resp = await client.post("/register", data=form(token, csrf, **fields))
    html = await resp.text()
    assert resp.status == 400 and message in html and 'role="alert"' in html
    assert 'aria-invalid="true"' in html
    assert fake_hs.users == {}
    resp = await client.post("/register", data=form(token, csrf_of(html)))
    assert resp.status == 200


async def test_homeserver_refusals_show_the_form_again(
    client: Client, fake_hs: FakeHomeserver
) -> None:
    token = (await mint(client))["token"]
    fake_hs.users["taken"] = "x"
    csrf = await open_form(client, token)
    resp = await client.post("/register", data=form(token, csrf, username="taken"))
    html = await resp.text()
    assert resp.status == 400 and "already taken" in html and 'value="taken"' in html
    resp = await client.post(
        "/register",
        data=form(token, csrf, password="weak-password", password_confirm="weak-password"),
    )
    assert resp.status == 400 and "too weak" in await resp.text()
    assert (await client.post("/register", data=form(token, csrf))).status == 200


async def test_csrf_is_required_and_bound_to_the_token(client: Client) -> None:
    token = (await mint(client))["token"]
    other = (await mint(client))["token"]
    csrf = await open_form(client, token)
    for data in (
        form(token, ""),
        form(token, "123.abc"),
        form(token, await open_form(client, other)),
    ):
        resp = await client.post("/register", data=data)
        assert resp.status == 400 and "expired" in await resp.text()
    client.session.cookie_jar.clear()
    resp = await client.post("/register", data=form(token, csrf))
    assert resp.status == 400
    # The form shown with the error carries a fresh pair, so the guest can simply resend.
    resp = await client.post("/register", data=form(token, csrf_of(await resp.text())))
    assert resp.status == 200


async def test_homeserver_down_shows_try_later(client: Client, fake_hs: FakeHomeserver) -> None:
    minted = await mint(client)
    csrf = await open_form(client, minted["token"])
    fake_hs.down = True
    resp = await client.post("/register", data=form(minted["token"], csrf))
    assert resp.status == 503 and "try again later" in (await resp.text()).lower()
    assert resp.headers["Retry-After"]
    fake_hs.down = False
    shown = await (await client.get(f"/v1/tokens/{minted['id']}", headers=auth())).json()
    assert shown["status"] == "active" and shown["uses_completed"] == 0


async def test_no_exception_text_reaches_the_guest(client: Client, fake_hs: FakeHomeserver) -> None:
    token = (await mint(client))["token"]
    csrf = await open_form(client, token)
    fake_hs.crash_with = RuntimeError("secret-internal-detail /_synapse/admin")
    post = await client.post("/register", data=form(token, csrf))
    # A page view calls no homeserver (the token is ours): let the lookup itself fail.
    store = client.app[REGISTRAR].store
    crash = fake_hs.crash_with

    async def broken(token_hash: str) -> None:
        raise crash

    store.get_token_by_hash = broken  # type: ignore[method-assign,assignment]
    get = await client.get("/register", params={"token": token})
    for resp in (post, get):
        html = await resp.text()
        assert resp.status == 503 and "secret-internal-detail" not in html
        assert resp.content_type == "text/html"


async def test_rate_limit_page(aiohttp_client: Any, tmp_path: Path) -> None:
    section = registrar_section(rate_limit={"per_minute": 1, "burst": 2})
    app = init_app(app_config(f"sqlite:{tmp_path / 'rl.db'}", section))
    client: Client = await aiohttp_client(app)
    app[REGISTRAR].adapter = FakeHomeserver()
    statuses = [(await client.get("/register", params={"token": "x"})).status for _ in range(3)]
    assert statuses == [404, 404, 429]
    resp = await client.post("/register", data={"token": "x"})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "Too many attempts" in await resp.text()
    assert_page_headers(resp)
    metrics = await (await client.get("/metrics")).text()
    assert "dmz_api_registrar_rate_limited_total 2.0" in metrics


async def test_secure_cookie_behind_https(aiohttp_client: Any, tmp_path: Path) -> None:
    app = init_app(
        app_config(f"sqlite:{tmp_path / 's.db'}", registrar_section(), "https://dmz.example")
    )
    client: Client = await aiohttp_client(app)
    app[REGISTRAR].adapter = FakeHomeserver()
    token = (await mint(client))["token"]
    resp = await client.get("/register", params={"token": token})
    assert resp.cookies[CSRF_COOKIE]["secure"]


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0], max_clients=2)
    assert [limiter.hit("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.hit("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.hit("a") == 0.0
    assert limiter.hit("b") == 0.0
    limiter.hit("c")  # evicts the least recent address
    assert "a" not in limiter._buckets


def _request(remote: str, forwarded: str | None = None) -> web.Request:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    request = make_mocked_request("GET", "/register", headers=headers)
    return request.clone(remote=remote)


def test_client_key_trusts_only_configured_proxies() -> None:
    proxy = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_key(_request("203.0.113.5", "1.2.3.4"), []) == "203.0.113.5"
    assert client_key(_request("10.0.0.2", "1.2.3.4, 10.0.0.7"), proxy) == "1.2.3.4"
    assert client_key(_request("10.0.0.2", "6.6.6.6, 1.2.3.4"), proxy) == "1.2.3.4"
    assert client_key(_request("10.0.0.2", "garbage"), proxy) == "10.0.0.2"
    assert client_key(_request("2001:db8::1:2"), []) == "2001:db8::/64"


async def test_rate_limited_page_offers_a_way_forward_that_resubmits_nothing(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    section = registrar_section(rate_limit={"per_minute": 1, "burst": 2})
    app = init_app(app_config(f"sqlite:{tmp_path / 'rl2.db'}", section))
    client: Client = await aiohttp_client(app)
    app[REGISTRAR].adapter = FakeHomeserver()
    token = (await mint(client))["token"]
    csrf = await open_form(client, token)
    await client.get("/register", params={"token": token})
    resp = await client.post("/register", data=form(token, csrf))
    html = await resp.text()
    assert resp.status == 429
    assert f'href="/register?token={token}&amp;lang=en"' in html and "Open the form again" in html


async def test_used_page_says_where_to_sign_in(client: Client, fake_hs: FakeHomeserver) -> None:
    token = (await mint(client))["token"]
    csrf = await open_form(client, token)
    assert (await client.post("/register", data=form(token, csrf))).status == 200
    resp = await client.get("/register", params={"token": token})
    html = await resp.text()
    assert resp.status == 410 and "Sign in with your Matrix client on the homeserver" in html
    assert app_homeserver_url(client) in html


def app_homeserver_url(client: Client) -> str:
    return str(client.app[REGISTRAR].config.homeserver.client_url)
