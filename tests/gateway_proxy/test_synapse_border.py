"""What real Synapse 1.163 reads where the gateway must read the same: server names in the
X-Matrix header, and request paths with a raw ``#``, ``;``, ``%2F``, ``//`` or other case.

Each case is sent to Synapse directly (what it makes of it) and through the proxy (what the
gateway judged): the two must agree, or the gateway must refuse what Synapse would not
route anyway.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.ports import free_port
from devstack.synapse import Synapse
from dmz_api.gateway.policy import server_names

from .conftest import Gateway, MakeGateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    with Synapse(tmp_path_factory.mktemp("border-synapse"), name="border", federation=True) as hs:
        yield hs


@pytest.fixture(scope="module")
def token(hs: Synapse) -> str:
    return hs.register_user(f"border{secrets.token_hex(3)}", secrets.token_urlsafe(12))


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A loopback port nothing listens on: key fetches from it fail at once."""
    return free_port()


async def exchange(port: int, request: bytes, *, tls: bool = False) -> tuple[int, Any]:
    """(status, JSON body) of one raw request on a fresh connection."""
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test Synapse's self-signed certificate
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
    }
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    else:  # chunked; the connection closes after the answer
        raw = await asyncio.wait_for(reader.read(), 30)
        body = b""
        while raw:
            size, _, raw = raw.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            body, raw = body + raw[:n], raw[n + 2 :]
    writer.close()
    return status, json.loads(body) if body else None


def x_matrix(hs: Synapse, origin: str) -> str:
    return f'X-Matrix origin="{origin}",destination="{hs.server_name}",key="ed25519:a",sig="c2ln"'


def profile_query(hs: Synapse, origin: str) -> bytes:
    return (
        f"GET /_matrix/federation/v1/query/profile?user_id=@nobody:{hs.server_name} HTTP/1.1\r\n"
        f"Host: x\r\nConnection: close\r\nAuthorization: {x_matrix(hs, origin)}\r\n\r\n"
    ).encode()


def spellings(port: int) -> list[str]:
    return [
        f"localhost:{port}",
        f"localhost:00{port}",
        f"localhost:+{port}",
        f"localhost: {port}",
        f"localhost:{str(port)[:2]}_{str(port)[2:]}",
        f"LocalHost:{port}",
    ]


def malformed_spellings(port: int) -> list[str]:
    return [f"localhost:{port:#x}", "localhost.", f"local_host:{port}", f"localhost:{port}:1"]


async def test_synapse_and_the_gateway_read_x_matrix_origins_alike(
    hs: Synapse, closed_port: int
) -> None:
    assert hs.federation_port is not None
    for origin in spellings(closed_port) + malformed_spellings(closed_port):
        status, body = await exchange(hs.federation_port, profile_query(hs, origin), tls=True)
        synapse_malformed = status == 400 and body["error"] == "Malformed Authorization header"
        found = server_names.x_matrix([x_matrix(hs, origin)])
        assert synapse_malformed == (found.problem is not None), (origin, status, body)
        if not synapse_malformed:
            # Synapse took it for that server and went looking for its keys.
            assert status == 401 and "Failed to find any key" in body["error"], body
            assert found.origin == f"localhost:{closed_port}"


@pytest.fixture
async def federation_gateway(make_gateway: MakeGateway, hs: Synapse) -> Gateway:
    return await make_gateway(hs.federation_url, upstream_ca_file=str(Path(hs.workdir) / "tls.crt"))


async def test_a_blocked_server_is_refused_however_its_port_is_spelled(
    federation_gateway: Gateway, hs: Synapse, closed_port: int
) -> None:
    gateway = federation_gateway
    assert gateway.proxy.port is not None
    server = f"localhost:{closed_port}"
    await gateway.add_rule({"id": "evil", "kind": "server_block", "params": {"servers": [server]}})
    for origin in spellings(closed_port):
        status, body = await exchange(gateway.proxy.port, profile_query(hs, origin))
        assert status == 403 and "rule evil" in body["error"], (origin, body)
    rows = await gateway.decisions(len(spellings(closed_port)))
    assert {row["origin"] for row in rows} == {server}
    assert {row["origin_raw"] for row in rows} == set(spellings(closed_port)[1:]) | {None}
    # Unblocked, the very same request reaches Synapse, which reads it as that server.
    await gateway.delete_rule("evil")
    status, body = await exchange(
        gateway.proxy.port, profile_query(hs, f"localhost:00{closed_port}")
    )
    assert status == 401 and "localhost:00" in body["error"], body
    for origin in malformed_spellings(closed_port):
        status, body = await exchange(gateway.proxy.port, profile_query(hs, origin))
        assert status == 403 and "cannot be parsed" in body["error"], (origin, body)


# (path with {sn} for the server name, what Synapse makes of it, the room the gateway judges;
# None: the gateway refuses the path as malformed). Measured on Synapse 1.163.
JOINS: list[tuple[str, str, str | None]] = [
    ("/_matrix/client/v3/join/#nowhere:{sn}", "alias #nowhere:{sn}", "#nowhere:{sn}"),
    ("/_matrix/client/v3/join/%23nowhere%3A{sn}", "alias #nowhere:{sn}", "#nowhere:{sn}"),
    ("/_matrix/client/v3/join/%23nowhere%3a{sn}", "alias #nowhere:{sn}", "#nowhere:{sn}"),
    ("/_matrix/client/v3/join/#nowhere:{sn}?via=x", "alias #nowhere:{sn}", "#nowhere:{sn}"),
    ("/_matrix/client/v3/join/#now;here:{sn}", "alias #now;here:{sn}", "#now;here:{sn}"),
    ("/_matrix/client/v3/join/#no%2Fwhere:{sn}", "alias #no/where:{sn}", "#no/where:{sn}"),
    ("/_matrix/client/v3/join/#no%3Fwhere:{sn}", "alias #no?where:{sn}", "#no?where:{sn}"),
    ("/_matrix/client/v3/join/#no%3fwhere:{sn}?x#y", "alias #no?where:{sn}", "#no?where:{sn}"),
    ("/_matrix/client/v3/join/#nowhere:{sn}#x", "not legal", "#nowhere:{sn}#x"),
    ("/_matrix/client//v3/join/#nowhere:{sn}", "unrecognized", None),
    ("/_matrix/client/v3//join/#nowhere:{sn}", "unrecognized", None),
    ("/_matrix/client/v3/join/./x", "unrecognized", None),
    # Stricter than Synapse (which routes neither): judged as joins all the same.
    ("/_matrix/client/V3/join/#nowhere:{sn}", "unrecognized", "#nowhere:{sn}"),
    ("/_matrix/client/v3/join/#nowhere:{sn}/", "unrecognized", "#nowhere:{sn}"),
]


def join(path: str, token: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()


def synapse_reading(status: int, body: Any) -> str:
    if body["errcode"] == "M_UNRECOGNIZED":
        return "unrecognized"
    if status == 404 and body["error"].startswith("Room alias "):
        return "alias " + body["error"].removeprefix("Room alias ").removesuffix(" not found")
    if "was not legal room ID or room alias" in body["error"]:
        return "not legal"
    return f"{status} {body}"


@pytest.mark.parametrize(("path", "synapse", "room"), JOINS, ids=[j[0] for j in JOINS])
async def test_joins_are_judged_with_the_room_synapse_routes(
    make_gateway: MakeGateway, hs: Synapse, token: str, path: str, synapse: str, room: str | None
) -> None:
    sn = hs.server_name
    path, synapse = path.replace("{sn}", sn), synapse.replace("{sn}", sn)
    status, body = await exchange(hs.port, join(path, token))
    assert synapse_reading(status, body) == synapse

    gateway = await make_gateway(hs.base_url)
    assert gateway.proxy.port is not None
    await gateway.add_rule(
        {"kind": "event_type_block", "params": {"event_types": ["m.room.member"]}, "mode": "audit"}
    )
    status, body = await exchange(gateway.proxy.port, join(path, token))
    [row] = await gateway.decisions(1)
    if room is None:
        assert status == 403 and row["rule"] == "builtin:malformed", body
        return
    assert synapse_reading(status, body) == synapse  # forwarded as it was
    assert row["room"] == room.replace("{sn}", sn)
    assert row["event_type"] == "m.room.member" and row["outcome"] == "would_block"
