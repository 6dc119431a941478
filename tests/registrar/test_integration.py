"""The registrar against a real Synapse on loopback, in both adapter modes.

In both, the URL token is the registrar's own and Synapse never knows it. ``synapse``:
each registration uses a one-use native token minted just in time and deleted.
``matrix``: dmz_api registers with one unlimited Synapse token standing in for a
conduwuit-style static ``registration_token``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from devstack.synapse import Synapse
from dmz_api.app import init_app
from dmz_api.registrar import REGISTRAR
from dmz_api.registrar.crypto import hash_token
from dmz_api.registrar.homeserver import TOKEN_STAGE
from dmz_api.registrar.store import TokenRow

from .conftest import app_config, auth, csrf_of

pytestmark = pytest.mark.slow

Client = TestClient[Any, Any]
PASSWORD = "a long guest password"


@pytest.fixture(scope="session")
def static_token(dmz_synapse: Synapse) -> Iterator[str]:
    yield dmz_synapse.create_registration_token(None)


def section(hs: Synapse, kind: str, static: str, *, admin: bool = True) -> dict[str, Any]:
    homeserver: dict[str, Any] = {
        "kind": kind,
        "url": hs.base_url,
        "server_name": hs.server_name,
        "timeout": 10,
    }
    if kind == "synapse" or admin:
        homeserver["admin_token"] = hs.admin_token
    if kind == "matrix":
        homeserver["registration_token"] = static
    return {
        "homeserver": homeserver,
        "secret": "integration-secret-" + "q" * 20,
        "rate_limit": {"per_minute": 60000, "burst": 1000},
    }


async def start(
    aiohttp_client: Any, tmp_path: Path, hs: Synapse, kind: str, static: str, **kw: Any
) -> Client:
    config = app_config(f"sqlite:{tmp_path / f'{kind}.db'}", section(hs, kind, static, **kw))
    client: Client = await aiohttp_client(init_app(config))
    return client


@pytest.fixture(params=["synapse", "matrix"])
async def kind_client(
    request: pytest.FixtureRequest,
    aiohttp_client: Any,
    tmp_path: Path,
    dmz_synapse: Synapse,
    static_token: str,
) -> tuple[str, Client]:
    kind: str = request.param
    return kind, await start(aiohttp_client, tmp_path, dmz_synapse, kind, static_token)


async def mint(client: Client, sponsor: str = "@alice:corp.example", **body: Any) -> Any:
    resp = await client.post("/v1/tokens", json=body, headers=auth(acting=sponsor))
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def submit(client: Client, token: str, username: str, csrf: str | None = None) -> Any:
    if csrf is None:
        page = await client.get("/register", params={"token": token})
        assert page.status == 200, page.status
        csrf = csrf_of(await page.text())
    return await client.post(
        "/register",
        data={
            "token": token,
            "csrf_token": csrf,
            "username": username,
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "display_name": f"Guest {username}",
        },
    )


async def show(client: Client, token_id: str) -> Any:
    return await (await client.get(f"/v1/tokens/{token_id}", headers=auth())).json()


def exists(hs: Synapse, localpart: str) -> bool:
    status, _body = hs.admin("GET", f"/_synapse/admin/v2/users/{hs.user_id(localpart)}")
    return status == 200


def native_token(hs: Synapse, token: str) -> Any:
    status, body = hs.admin("GET", f"/_synapse/admin/v1/registration_tokens/{token}")
    return body if status == 200 else None


def native_tokens(hs: Synapse) -> set[str]:
    status, body = hs.admin("GET", "/_synapse/admin/v1/registration_tokens")
    assert status == 200, body
    return {item["token"] for item in body["registration_tokens"]}


@dataclass
class Attempt:
    """How one direct sign-up (any Matrix client, not the page) ended."""

    # Synapse accepted the token stage (it counted the token as valid).
    token_accepted: bool = False
    # Synapse refused it as "Invalid registration token" (401, stage not completed).
    token_refused: bool = False
    registered: bool = False


async def direct_signups(hs: Synapse, token: str, names: list[str]) -> list[Attempt]:
    """Sign-ups straight on Synapse, each UIA stage for all sessions at once (as racing
    clients would), so Synapse's check-then-count window is as wide as it gets."""
    url = f"{hs.base_url}/_matrix/client/v3/register"
    attempts = [Attempt() for _ in names]
    bodies = [{"username": n, "password": PASSWORD, "inhibit_login": True} for n in names]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def post(body: dict[str, Any]) -> tuple[int, Any]:
            async with http.post(url, json=body) as resp:
                return resp.status, await resp.json(content_type=None)

        opened = await asyncio.gather(*(post(body) for body in bodies))
        sessions = [data.get("session") for _status, data in opened]
        assert all(isinstance(sid, str) for sid in sessions), opened[:3]
        staged = await asyncio.gather(
            *(
                post({**body, "auth": {"type": TOKEN_STAGE, "token": token, "session": sid}})
                for body, sid in zip(bodies, sessions, strict=True)
            )
        )
        for attempt, (status, data) in zip(attempts, staged, strict=True):
            attempt.token_accepted = status == 401 and TOKEN_STAGE in data.get("completed", [])
            attempt.token_refused = status == 401 and not attempt.token_accepted
            attempt.registered = status == 200
        accepted = [
            (body, sid, attempt)
            for body, sid, attempt in zip(bodies, sessions, attempts, strict=True)
            if attempt.token_accepted
        ]
        finished = await asyncio.gather(
            *(post({**body, "auth": {"type": "m.login.dummy", "session": sid}})
              for body, sid, _ in accepted)
        )  # fmt: skip
        for (_body, _sid, attempt), (status, _data) in zip(accepted, finished, strict=True):
            attempt.registered = status == 200
    return attempts


async def test_mint_register_login_and_reuse_refused(
    kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str
) -> None:
    _kind, client = kind_client
    minted = await mint(client, note="integration")
    before = native_tokens(dmz_synapse)
    resp = await submit(client, minted["token"], unique)
    html = await resp.text()
    assert resp.status == 200, html
    assert native_tokens(dmz_synapse) == before  # the one-use token (synapse) is gone again
    user_id = dmz_synapse.user_id(unique)
    assert user_id in html and dmz_synapse.base_url in html
    status, login = dmz_synapse.login(unique, PASSWORD)
    assert status == 200 and login["user_id"] == user_id
    _profile_status, profile = dmz_synapse.client(
        "GET", f"/_matrix/client/v3/profile/{user_id}/displayname", login["access_token"]
    )
    assert profile == {"displayname": f"Guest {unique}"}
    shown = await show(client, minted["id"])
    assert (shown["status"], shown["uses_completed"], shown["used_by"]) == ("used", 1, [user_id])
    assert native_token(dmz_synapse, minted["token"]) is None  # Synapse never saw it
    # Reuse is refused, and no second account appears.
    page = await client.get("/register", params={"token": minted["token"]})
    assert page.status == 410 and "already been used" in await page.text()
    again = await client.post(
        "/register",
        data={"token": minted["token"], "csrf_token": "x", "username": f"{unique}b",
              "password": PASSWORD, "password_confirm": PASSWORD},
    )  # fmt: skip
    assert again.status == 410 and not exists(dmz_synapse, f"{unique}b")


async def test_existing_account_is_never_touched(
    kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str
) -> None:
    _, client = kind_client
    dmz_synapse.register_user(unique, "the owner's password")
    minted = await mint(client)
    resp = await submit(client, minted["token"], unique)
    assert resp.status == 400 and "already taken" in await resp.text()
    assert dmz_synapse.login(unique, "the owner's password")[0] == 200
    assert dmz_synapse.login(unique, PASSWORD)[0] == 403
    assert (await show(client, minted["id"]))["status"] == "active"
    assert (await submit(client, minted["token"], f"{unique}new")).status == 200


async def test_one_name_raced_with_two_tokens(
    kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str
) -> None:
    # The loser fails late (M_USER_IN_USE at the last stage, or at the first): its token is
    # not used, and no one-use token is left on Synapse either way.
    _kind, client = kind_client
    first, second = await mint(client), await mint(client)
    before = native_tokens(dmz_synapse)
    responses = await asyncio.gather(
        submit(client, first["token"], unique), submit(client, second["token"], unique)
    )
    assert sorted(r.status for r in responses) == [200, 400]
    loser = second if responses[0].status == 200 else first
    assert "already taken" in await responses[[first, second].index(loser)].text()
    shown = await show(client, loser["id"])
    assert (shown["status"], shown["uses_completed"]) == ("active", 0)
    assert native_tokens(dmz_synapse) == before


async def test_expiry(kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str) -> None:
    _kind, client = kind_client
    minted = await mint(client, expires_in=1)
    page = await client.get("/register", params={"token": minted["token"]})
    csrf = csrf_of(await page.text())
    await asyncio.sleep(1.2)
    page = await client.get("/register", params={"token": minted["token"]})
    assert page.status == 410 and "expired" in await page.text()
    resp = await submit(client, minted["token"], unique, csrf)
    assert resp.status == 410 and not exists(dmz_synapse, unique)
    assert (await show(client, minted["id"]))["status"] == "expired"


async def test_revoke(kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str) -> None:
    _kind, client = kind_client
    minted = await mint(client)
    page = await client.get("/register", params={"token": minted["token"]})
    csrf = csrf_of(await page.text())
    resp = await client.delete(f"/v1/tokens/{minted['id']}", headers=auth(acting="@it:corp"))
    assert resp.status == 200 and (await resp.json())["status"] == "revoked"
    assert native_token(dmz_synapse, minted["token"]) is None
    page = await client.get("/register", params={"token": minted["token"]})
    assert page.status == 410 and "withdrawn" in await page.text()
    resp = await submit(client, minted["token"], unique, csrf)
    assert resp.status == 410 and not exists(dmz_synapse, unique)


async def test_sponsor_revoke_deactivates_guests(
    kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str
) -> None:
    _, client = kind_client
    sponsor = f"@{unique}:corp.example"
    used = await mint(client, sponsor)
    spare = await mint(client, sponsor)
    assert (await submit(client, used["token"], unique)).status == 200
    assert dmz_synapse.login(unique, PASSWORD)[0] == 200
    resp = await client.post(
        f"/v1/sponsors/{sponsor}/revoke", json={"guests": "deactivate"}, headers=auth()
    )
    assert await resp.json() == {"tokens_revoked": 1, "guests_deactivated": 1}
    status, body = dmz_synapse.login(unique, PASSWORD)
    assert status in (401, 403) and "access_token" not in body
    status, user = dmz_synapse.admin(
        "GET", f"/_synapse/admin/v2/users/{dmz_synapse.user_id(unique)}"
    )
    assert user["deactivated"] is True
    page = await client.get("/register", params={"token": spare["token"]})
    assert page.status == 410
    resp = await client.post(
        f"/v1/sponsors/{sponsor}/revoke", json={"guests": "deactivate"}, headers=auth()
    )
    assert await resp.json() == {"tokens_revoked": 0, "guests_deactivated": 0}


async def test_fifty_concurrent_posts_create_exactly_one_account(
    kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str
) -> None:
    _kind, client = kind_client
    minted = await mint(client)
    page = await client.get("/register", params={"token": minted["token"]})
    csrf = csrf_of(await page.text())
    names = [f"{unique}r{i}" for i in range(50)]
    responses = await asyncio.gather(*(submit(client, minted["token"], n, csrf) for n in names))
    statuses = [r.status for r in responses]
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 409, 410}
    created = [n for n in names if exists(dmz_synapse, n)]
    assert len(created) == 1
    shown = await show(client, minted["id"])
    assert (shown["status"], shown["uses_completed"]) == ("used", 1)
    assert shown["used_by"] == [dmz_synapse.user_id(created[0])]


async def test_url_token_is_unknown_to_synapse(
    kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str
) -> None:
    _kind, client = kind_client
    minted = await mint(client)
    validity = "/_matrix/client/v1/register/m.login.registration_token/validity"
    status, body = dmz_synapse.client("GET", f"{validity}?token={minted['token']}", "")
    assert (status, body) == (200, {"valid": False})
    [attempt] = await direct_signups(dmz_synapse, minted["token"], [unique])
    assert attempt.token_refused and not exists(dmz_synapse, unique)
    # The same sign-up with a native token works: the refusal is the token's, not the flow's.
    native = dmz_synapse.create_registration_token(1)
    [control] = await direct_signups(dmz_synapse, native, [f"{unique}ctl"])
    assert control.registered and exists(dmz_synapse, f"{unique}ctl")
    # Nor does a direct attempt use the token up: the page still works with it.
    assert (await submit(client, minted["token"], f"{unique}page")).status == 200


@pytest.mark.parametrize("uses", [1, 3])
async def test_fifty_direct_signups_and_fifty_page_posts_at_once_make_at_most_n_accounts(
    aiohttp_client: Any,
    tmp_path: Path,
    dmz_synapse: Synapse,
    static_token: str,
    unique: str,
    uses: int,
) -> None:
    client = await start(aiohttp_client, tmp_path, dmz_synapse, "synapse", static_token)
    for round_ in range(3):  # the race is a timing window: several rounds
        minted = await mint(client, uses=uses)
        page = await client.get("/register", params={"token": minted["token"]})
        csrf = csrf_of(await page.text())
        direct = [f"{unique}d{round_}x{i}" for i in range(50)]
        posted = [f"{unique}p{round_}x{i}" for i in range(50)]
        attempts, responses = await asyncio.gather(
            direct_signups(dmz_synapse, minted["token"], direct),
            asyncio.gather(*(submit(client, minted["token"], n, csrf) for n in posted)),
        )
        # Every direct attempt reached Synapse's token check, and was refused there.
        assert all(a.token_refused for a in attempts), attempts
        accounts = [n for n in direct + posted if exists(dmz_synapse, n)]
        statuses = [r.status for r in responses]
        assert len(accounts) == statuses.count(200) == uses, (accounts, statuses)
        assert set(statuses) <= {200, 409, 410}
        shown = await show(client, minted["id"])
        assert (shown["status"], shown["uses_completed"]) == ("used", uses)
        assert sorted(shown["used_by"]) == sorted(dmz_synapse.user_id(n) for n in accounts)


async def legacy_token(client: Client, hs: Synapse, uses: int) -> tuple[str, str]:
    """A token as registrars of the old design minted it: native on Synapse, hs_state live."""
    token = hs.create_registration_token(uses)
    now = int(time.time() * 1000)
    row = TokenRow(
        id=secrets.token_hex(6),
        token_hash=hash_token(token),
        sponsor="@alice:corp.example",
        note="legacy",
        api_client="bot",
        homeserver_kind="synapse",
        uses_allowed=uses,
        uses_completed=0,
        pending=0,
        in_flight=0,
        claim_expires_at=0,
        created_at=now,
        expires_at=now + 3_600_000,
        revoked_at=None,
        revoked_by=None,
        hs_state="live",
    )
    await client.app[REGISTRAR].store.insert_token(row)
    return row.id, token


async def test_legacy_native_tokens_are_adopted(
    aiohttp_client: Any, tmp_path: Path, dmz_synapse: Synapse, static_token: str, unique: str
) -> None:
    client = await start(aiohttp_client, tmp_path, dmz_synapse, "synapse", static_token)
    token_id, token = await legacy_token(client, dmz_synapse, 2)
    gone_id, gone = await legacy_token(client, dmz_synapse, 1)
    # Before the adoption a guest used it from a Matrix client (the old design allowed it).
    [before] = await direct_signups(dmz_synapse, token, [f"{unique}old"])
    assert before.registered
    dmz_synapse.admin("DELETE", f"/_synapse/admin/v1/registration_tokens/{gone}")
    shown = await show(client, token_id)  # an admin read adopts
    assert (shown["status"], shown["uses_completed"], shown["pending"]) == ("active", 1, 0)
    assert native_token(dmz_synapse, token) is None
    gone_shown = await show(client, gone_id)
    assert (gone_shown["status"], gone_shown["revoked_by"]) == ("revoked", "homeserver")
    # From now on the URL works on the page only.
    [after] = await direct_signups(dmz_synapse, token, [f"{unique}new"])
    assert after.token_refused and not exists(dmz_synapse, f"{unique}new")
    assert (await submit(client, token, f"{unique}page")).status == 200
    shown = await show(client, token_id)
    assert (shown["status"], shown["uses_completed"]) == ("used", 2)


async def test_synapse_expires_a_legacy_token_when_asked(
    aiohttp_client: Any, tmp_path: Path, dmz_synapse: Synapse, static_token: str, unique: str
) -> None:
    client = await start(aiohttp_client, tmp_path, dmz_synapse, "synapse", static_token)
    adapter = client.app[REGISTRAR].adapter
    token = dmz_synapse.create_registration_token(5)
    at = int(time.time() * 1000) + 200
    assert await adapter.expire_token(token, at)
    assert native_token(dmz_synapse, token)["expiry_time"] == at
    assert not await adapter.expire_token(token, at - 60_000)  # "must not be in the past"
    await asyncio.sleep(0.3)
    [late] = await direct_signups(dmz_synapse, token, [unique])
    assert late.token_refused


async def test_legacy_native_tokens_are_adopted_at_start(
    aiohttp_client: Any, tmp_path: Path, dmz_synapse: Synapse, static_token: str
) -> None:
    first = await start(aiohttp_client, tmp_path, dmz_synapse, "synapse", static_token)
    _token_id, token = await legacy_token(first, dmz_synapse, 1)
    await first.close()
    assert native_token(dmz_synapse, token) is not None
    # The restart after the upgrade, with no request at all: the start-up adoption.
    await start(aiohttp_client, tmp_path, dmz_synapse, "synapse", static_token)
    for _ in range(200):  # the adoption runs in the background of this event loop
        if native_token(dmz_synapse, token) is None:
            break
        await asyncio.sleep(0.05)
    assert native_token(dmz_synapse, token) is None


async def test_matrix_without_admin_token_cannot_deactivate(
    aiohttp_client: Any, tmp_path: Path, dmz_synapse: Synapse, static_token: str, unique: str
) -> None:
    client = await start(aiohttp_client, tmp_path, dmz_synapse, "matrix", static_token, admin=False)
    minted = await mint(client)
    assert (await submit(client, minted["token"], unique)).status == 200
    resp = await client.post(f"/v1/guests/{dmz_synapse.user_id(unique)}/deactivate", headers=auth())
    body = await resp.json()
    assert (resp.status, body["errcode"]) == (501, "M_UNRECOGNIZED")
    assert "admin_token" in body["error"]
    assert dmz_synapse.login(unique, PASSWORD)[0] == 200


async def test_homeserver_unreachable(aiohttp_client: Any, tmp_path: Path, unique: str) -> None:
    from devstack.ports import free_port

    dead = {
        "homeserver": {
            "kind": "synapse",
            "url": f"http://127.0.0.1:{free_port()}",
            "server_name": "gone.test",
            "admin_token": "x",
            "timeout": 2,
        }
    }
    client: Client = await aiohttp_client(
        init_app(app_config(f"sqlite:{tmp_path / 'dead.db'}", dead))
    )
    # Minting needs no homeserver (the token is ours); registering does, and says so.
    resp = await client.post("/v1/tokens", json={}, headers=auth())
    assert resp.status == 201
    token = (await resp.json())["token"]
    resp = await submit(client, token, unique)
    html = await resp.text()
    assert resp.status == 503 and "try again later" in html.lower()
    assert not re.search(r"127\.0\.0\.1|Connect", html)
    resp = await client.get("/v1/tokens", headers=auth())
    [shown] = (await resp.json())["tokens"]
    assert (shown["status"], shown["uses_completed"]) == ("active", 0)


@pytest.mark.parametrize(
    "settings",
    [
        {"enable_registration": False},
        {"registration_requires_token": False, "enable_registration_without_verification": True},
    ],
    ids=["registration-disabled", "token-not-required"],
)
async def test_misconfigured_synapse_registers_nobody_and_uses_nothing(
    aiohttp_client: Any, tmp_path: Path, settings: dict[str, Any], unique: str
) -> None:
    # Without registration the page cannot register; with open registration it must not
    # (it would count accounts anyone can make anyway). Either way the token is kept.
    with Synapse(tmp_path / "hs", name="misconfigured", extra_config=settings) as hs:
        client = await start(aiohttp_client, tmp_path, hs, "synapse", "")
        minted = await mint(client)
        resp = await submit(client, minted["token"], unique)
        assert resp.status == 503 and "try again later" in (await resp.text()).lower()
        assert not exists(hs, unique)
        shown = await show(client, minted["id"])
        assert (shown["status"], shown["uses_completed"]) == ("active", 0)
        await client.close()
