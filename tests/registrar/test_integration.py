"""The registrar against a real Synapse on loopback, in both adapter modes.

``synapse``: tokens are native Synapse registration tokens. ``matrix``: dmz_api keeps the
tokens and registers with one unlimited Synapse token standing in for a conduwuit-style
static ``registration_token``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from devstack.synapse import Synapse
from dmz_api.app import init_app

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


async def test_mint_register_login_and_reuse_refused(
    kind_client: tuple[str, Client], dmz_synapse: Synapse, unique: str
) -> None:
    kind, client = kind_client
    minted = await mint(client, note="integration")
    resp = await submit(client, minted["token"], unique)
    html = await resp.text()
    assert resp.status == 200, html
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
    if kind == "synapse":
        native = native_token(dmz_synapse, minted["token"])
        assert (native["completed"], native["pending"]) == (1, 0)
    else:
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
    kind, client = kind_client
    minted = await mint(client)
    page = await client.get("/register", params={"token": minted["token"]})
    csrf = csrf_of(await page.text())
    if kind == "synapse":
        assert native_token(dmz_synapse, minted["token"]) is not None
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


async def test_synapse_status_follows_registrations_from_any_client(
    aiohttp_client: Any, tmp_path: Path, dmz_synapse: Synapse, static_token: str, unique: str
) -> None:
    client = await start(aiohttp_client, tmp_path, dmz_synapse, "synapse", static_token)
    minted = await mint(client, uses=2)
    # A guest registers with Element (any client): the raw client-server UIA flow.
    url = "/_matrix/client/v3/register"
    body: dict[str, Any] = {"username": unique, "password": PASSWORD, "inhibit_login": True}
    status, first = dmz_synapse.client("POST", url, "", body)
    session = first["session"]
    auth_stage = {
        "type": "m.login.registration_token",
        "token": minted["token"],
        "session": session,
    }
    dmz_synapse.client("POST", url, "", {**body, "auth": auth_stage})
    shown = await show(client, minted["id"])
    assert (shown["status"], shown["pending"], shown["uses_completed"]) == ("active", 1, 0)
    status, _done = dmz_synapse.client(
        "POST", url, "", {**body, "auth": {"type": "m.login.dummy", "session": session}}
    )
    assert status == 200
    shown = await show(client, minted["id"])
    native = native_token(dmz_synapse, minted["token"])
    assert (shown["uses_completed"], shown["pending"]) == (native["completed"], native["pending"])
    assert (shown["status"], shown["uses_completed"]) == ("active", 1)
    assert (await submit(client, minted["token"], f"{unique}page")).status == 200
    shown = await show(client, minted["id"])
    assert (shown["status"], shown["uses_completed"]) == ("used", 2)
    tokens = await (
        await client.get("/v1/tokens", params={"status": "used"}, headers=auth())
    ).json()
    assert minted["id"] in [t["id"] for t in tokens["tokens"]]


async def test_synapse_token_deleted_by_its_admin_counts_as_revoked(
    aiohttp_client: Any, tmp_path: Path, dmz_synapse: Synapse, static_token: str
) -> None:
    client = await start(aiohttp_client, tmp_path, dmz_synapse, "synapse", static_token)
    minted = await mint(client)
    dmz_synapse.admin("DELETE", f"/_synapse/admin/v1/registration_tokens/{minted['token']}")
    shown = await show(client, minted["id"])
    assert (shown["status"], shown["revoked_by"]) == ("revoked", "homeserver")


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


async def test_homeserver_unreachable(aiohttp_client: Any, tmp_path: Path) -> None:
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
    resp = await client.post("/v1/tokens", json={}, headers=auth())
    body = await resp.json()
    assert (resp.status, body["errcode"]) == (503, "M_UNAVAILABLE")
    assert not re.search(r"127\.0\.0\.1|Connect", body["error"])
