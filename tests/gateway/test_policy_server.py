"""The policy server: what it signs is what Synapse verifies, what it refuses the rules
refused, and every judgement is in the decision log.

Synapse's own event code (``make_event_from_dict``, ``prune_event``, ``event_id``, run in a
child process by ``synapse_reference``) is the reference for the redaction, the event ids
and the signature check; the HTTP answers come from the real app.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from unpaddedbase64 import encode_base64

from dmz_api.gateway.signing.events import RoomVersions, event_id, redact
from dmz_api.gateway.signing.keys import KEY_ID, KeyFileError, load_or_create
from dmz_api.gateway.signing.origin import NotAuthenticated, RequestVerifier, ServerKeys

from .conftest import ADMIN, SERVER_NAME, GatewayClient
from .synapse_reference import ask

PARTNER = "partner.example"
SIGN = "/_matrix/policy/v1/sign"
AUTH = {"Authorization": f'X-Matrix origin="{PARTNER}",key="ed25519:a",sig="unverified"'}


def pdu(event_type: str, content: dict[str, Any], **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": event_type,
        "room_id": "!room:corp.example",
        "sender": f"@bob:{PARTNER}",
        "content": content,
        "depth": 5,
        "prev_events": ["$prev"],
        "auth_events": ["$create", "$pl"],
        "origin_server_ts": 1_700_000_000_000,
        "hashes": {"sha256": "aGFzaA"},
        "signatures": {PARTNER: {"ed25519:a": "c2ln"}},
        "unsigned": {"age_ts": 1_700_000_000_000},
    }
    event.update(fields)
    return event


POWER_LEVELS = {"users": {"@bob:partner.example": 100}, "invite": 0, "ban": 50, "extra": 1}
MEMBER = {
    "membership": "join",
    "displayname": "Bob",
    "join_authorised_via_users_server": "@alice:corp.example",
    "third_party_invite": {"signed": {"mxid": "@bob:partner.example"}, "display_name": "b"},
}
EVENTS = [
    pdu("m.room.message", {"msgtype": "m.text", "body": "hi"}),
    pdu("m.room.power_levels", POWER_LEVELS, state_key=""),
    pdu("m.room.member", MEMBER, state_key="@bob:partner.example"),
    pdu("m.room.join_rules", {"join_rule": "restricted", "allow": []}, state_key=""),
    pdu("m.room.create", {"creator": "@a:corp.example", "room_version": "11"}, state_key=""),
    pdu("m.room.redaction", {"redacts": "$x", "reason": "r"}, redacts="$x"),
    pdu("m.room.aliases", {"aliases": ["#a:corp.example"]}, state_key="corp.example"),
    pdu("m.room.history_visibility", {"history_visibility": "shared", "x": 1}, state_key=""),
    pdu("m.room.message", {"body": "x"}, origin="partner.example", membership="join"),
]


VERSIONS = ["3", "4", "5", "6", "8", "9", "10", "11", "12"]


def case(version: str, event: dict[str, Any]) -> dict[str, Any]:
    if version == "12" and event["type"] == "m.room.create":
        return {k: v for k, v in event.items() if k != "room_id"}  # v12 create: no room id
    return event


@pytest.fixture(scope="module")
def synapse_redactions() -> dict[tuple[str, int], tuple[dict[str, Any], str]]:
    cases = [(v, i) for v in VERSIONS for i in range(len(EVENTS))]
    answer = ask({"redact": [[v, case(v, EVENTS[i])] for v, i in cases]})
    return {c: (pruned, eid) for c, (pruned, eid) in zip(cases, answer["redact"], strict=True)}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("index", range(len(EVENTS)), ids=lambda i: str(EVENTS[i]["type"]))
def test_redaction_and_event_id_match_synapse(
    synapse_redactions: dict[tuple[str, int], tuple[dict[str, Any], str]], version: str, index: int
) -> None:
    event = case(version, EVENTS[index])
    expected, expected_id = synapse_redactions[(version, index)]
    assert redact(event, version) == expected
    assert event_id(event, version) == expected_id


def policy_section(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"key_file": str(tmp_path / "policy.key"), "verify_origin": False, **extra}


async def started(make_client: Callable[..., Any], tmp_path: Path, **extra: Any) -> GatewayClient:
    client: GatewayClient = await make_client(policy_server=policy_section(tmp_path, **extra))
    return client


def synapse_verifies(
    checks: list[tuple[dict[str, Any], dict[str, Any]]], public_key: str
) -> list[bool]:
    """Synapse's own check of each (event, our answer): the room's policy key over
    ``redact_event(event)``."""
    verify = [
        ["12" if ":" not in e["room_id"] else "10", e, SERVER_NAME, sig[SERVER_NAME], public_key]
        for e, sig in checks
    ]
    return list(ask({"verify": verify})["verify"])


async def decisions(client: GatewayClient, count: int, **query: str) -> list[dict[str, Any]]:
    for _ in range(100):
        response = await client.get("/v1/decisions", params=query, headers=ADMIN)
        rows: list[dict[str, Any]] = (await response.json())["decisions"]
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} decisions for {query}: {rows}")


async def test_not_a_policy_server_without_the_config(client: GatewayClient) -> None:
    response = await client.post(SIGN, json=EVENTS[0], headers=AUTH)
    assert response.status == 404
    assert (await response.json())["errcode"] == "M_UNRECOGNIZED"
    response = await client.get("/.well-known/matrix/policy_server")
    assert response.status == 404


async def test_the_key_is_created_once_and_published(
    make_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await started(make_client, tmp_path)
    key_file = tmp_path / "policy.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    published = await (await client.get("/.well-known/matrix/policy_server")).json()
    assert set(published) == {"public_keys"}
    assert published["public_keys"]["ed25519"] == load_or_create(key_file).public_key
    # The secret itself never appears in what is served.
    assert key_file.read_text().split()[2] not in str(published)


def test_replicas_sharing_the_file_agree_on_one_key(tmp_path: Path) -> None:
    """Replicas starting together on one shared file: one creates it, all load that key."""
    key_file = tmp_path / "shared.key"
    script = (
        "import sys; from pathlib import Path;"
        "from dmz_api.gateway.signing.keys import load_or_create;"
        "print(load_or_create(Path(sys.argv[1])).public_key)"
    )
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(key_file)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    keys = {replica.communicate(timeout=60)[0].strip() for replica in replicas}
    assert len(keys) == 1 and "" not in keys
    assert keys == {load_or_create(key_file).public_key}


def test_a_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    key_file = tmp_path / "policy.key"
    key_file.write_text("ed25519 policy_server not-base64!\n")
    with pytest.raises(KeyFileError, match="not a valid ed25519 key"):
        load_or_create(key_file)


@pytest.mark.parametrize("room", ["!room:corp.example", "!Hydra12RoomIdHash"])
async def test_an_allowed_event_is_signed_as_synapse_verifies(
    make_client: Callable[..., Any], tmp_path: Path, room: str
) -> None:
    client = await started(make_client, tmp_path)
    public = (await (await client.get("/.well-known/matrix/policy_server")).json())["public_keys"]
    signed, altered = [], []
    for event in (EVENTS[0], EVENTS[1], EVENTS[2]):
        event = {**event, "room_id": room}
        response = await client.post(SIGN, json=event, headers=AUTH)
        assert response.status == 200, await response.text()
        signature = await response.json()
        assert list(signature) == [SERVER_NAME] and list(signature[SERVER_NAME]) == [KEY_ID]
        signed.append((event, signature))
        # The signature binds the event: another type does not verify with it.
        altered.append(({**event, "type": "m.room.encrypted"}, signature))
    assert synapse_verifies(signed + altered, public["ed25519"]) == [True] * 3 + [False] * 3


async def test_a_refused_event_gets_the_rule_and_is_logged(
    make_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await started(make_client, tmp_path)
    response = await client.post("/v1/rules/preset/compliance-ledger", headers=ADMIN)
    assert response.status in (200, 201), await response.text()
    encryption = pdu("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"}, state_key="")
    response = await client.post(SIGN, json=encryption, headers=AUTH)
    assert response.status == 400
    body = await response.json()
    assert body["errcode"] == "M_FORBIDDEN" and "compliance-ledger" in body["error"]
    message = EVENTS[0]
    assert (await client.post(SIGN, json=message, headers=AUTH)).status == 200

    rows = await decisions(client, 2, source="policy_server")
    by_outcome = {row["outcome"]: row for row in rows}
    refused, allowed = by_outcome["block"], by_outcome["allow"]
    assert refused["rule"] == "compliance-ledger" and refused["event_type"] == "m.room.encryption"
    assert refused["room"] == "!room:corp.example" and refused["origin"] == PARTNER
    assert refused["class"] == "federation"
    assert refused["path"] == f"{SIGN}?event_id={event_id(encryption, '10')}"
    assert allowed["event_type"] == "m.room.message"


async def test_a_protected_room_is_held_against_a_partner_at_the_top_level(
    make_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await started(make_client, tmp_path)
    room = "!room:corp.example"
    response = await client.put(f"/v1/rooms/{room}", json={}, headers=ADMIN)
    assert response.status == 201, await response.text()
    desired = await (await client.get(f"/v1/rooms/{room}/desired", headers=ADMIN)).json()
    levels = {
        "users": {"@bastion:corp.example": 100, f"@bob:{PARTNER}": 100},
        "events": dict.fromkeys(desired["power_levels"]["top_level_events"], 100),
        "redact": 100,
    }
    loosened = {**levels, "events": {**levels["events"], "m.room.encryption": 0}}
    refused = [
        pdu("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"}, state_key=""),
        pdu("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}),
        pdu("m.room.redaction", {"redacts": "$mine"}, redacts="$mine"),
        pdu("m.room.power_levels", loosened, state_key=""),
        pdu("m.room.server_acl", {"allow": ["*"], "deny": ["corp.example"]}, state_key=""),
        pdu("m.room.tombstone", {"replacement_room": "!new:partner.example"}, state_key=""),
    ]
    for event in refused:
        response = await client.post(SIGN, json=event, headers=AUTH)
        assert response.status == 400, (event["type"], await response.text())
        body = await response.json()
        assert body["errcode"] == "M_FORBIDDEN"
        assert body["error"].startswith(
            f"Refused by the gateway's policy server: {room} is a protected room and "
        ), body
    # Keeping the protection (or lowering oneself), chatting: signed.
    lowered_self = {**levels, "users": {"@bastion:corp.example": 100, f"@bob:{PARTNER}": 0}}
    signed = [
        pdu("m.room.power_levels", lowered_self, state_key=""),
        pdu("m.room.message", {"msgtype": "m.text", "body": "hi"}),
        # Our own users' events were judged at our border when written.
        pdu("m.room.redaction", {"redacts": "$x"}, redacts="$x", sender="@sec:corp.example"),
        # An unprotected room is signed as the rules say, as before.
        pdu("m.room.encryption", {"algorithm": "x"}, state_key="", room_id="!free:corp.example"),
    ]
    for event in signed:
        response = await client.post(SIGN, json=event, headers=AUTH)
        assert response.status == 200, (event["type"], await response.text())

    rows = await decisions(client, len(refused), source="policy_server", rule="protected-room")
    assert sorted((r["event_type"], r["rule"], r["room"]) for r in rows) == sorted(
        (e["type"], "protected-room", room) for e in refused
    )
    assert all(
        r["outcome"] == "block"
        and r["origin"] == PARTNER
        and r["path"].startswith(f"{SIGN}?event_id=$")
        for r in rows
    )


async def test_audit_rules_only_record(make_client: Callable[..., Any], tmp_path: Path) -> None:
    client = await started(make_client, tmp_path)
    rule = {
        "id": "no-crypto",
        "kind": "event_type_block",
        "mode": "audit",
        "params": {"event_types": ["m.room.encrypted"]},
    }
    assert (await client.post("/v1/rules", json=rule, headers=ADMIN)).status == 201
    encrypted = pdu("m.room.encrypted", {"ciphertext": "x"})
    assert (await client.post(SIGN, json=encrypted, headers=AUTH)).status == 200
    rows = await decisions(client, 1, source="policy_server")
    assert [(r["outcome"], r["rule"]) for r in rows] == [("would_block", "no-crypto")]


async def test_a_blocked_asking_server_is_refused_with_403(
    make_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await started(make_client, tmp_path)
    rule = {"id": "evil", "kind": "server_block", "params": {"servers": ["evil.example"]}}
    assert (await client.post("/v1/rules", json=rule, headers=ADMIN)).status == 201
    asking = {"Authorization": 'X-Matrix origin="evil.example",key="ed25519:a",sig="s"'}
    response = await client.post(SIGN, json=EVENTS[0], headers=asking)
    assert response.status == 403
    assert "evil" in (await response.json())["error"]
    # Our own users' events, re-checked by a partner, are judged as our users' (client).
    local = {**EVENTS[0], "sender": "@alice:corp.example"}
    assert (await client.post(SIGN, json=local, headers=AUTH)).status == 200
    rows = await decisions(client, 3, source="policy_server")
    assert {(r["class"], r["origin"], r["outcome"]) for r in rows} == {
        ("federation", "evil.example", "block"),
        ("client", None, "allow"),
        ("federation", PARTNER, "allow"),
    }


@pytest.mark.parametrize(
    ("body", "status", "errcode"),
    [
        (b"not json", 400, "M_NOT_JSON"),
        (b"[1, 2]", 400, "M_BAD_JSON"),
        (b'{"type": "m.room.message", "room_id": "!r:x", "content": {}}', 400, "M_BAD_JSON"),
        (b'{"type": "m.room.message", "sender": "bob", "room_id": "!r:x"}', 400, "M_BAD_JSON"),
        (b'{"type": "m.room.message", "sender": "@b:x", "room_id": "!r:x"}', 400, "M_BAD_JSON"),
        (b"{" + b" " * 200_000 + b"}", 413, "M_TOO_LARGE"),
        (
            b'{"type": "m.room.message", "sender": "@b:x", "room_id": "!r:x",'
            b' "content": {}, "depth": NaN}',
            400,
            "M_BAD_JSON",
        ),
    ],
)
async def test_malformed_requests_get_clear_errors(
    make_client: Callable[..., Any], tmp_path: Path, body: bytes, status: int, errcode: str
) -> None:
    client = await started(make_client, tmp_path)
    headers = {**AUTH, "Content-Type": "application/json"}
    response = await client.post(SIGN, data=body, headers=headers)
    assert response.status == status
    answer = await response.json()
    assert answer["errcode"] == errcode and answer["error"]


async def test_a_request_without_x_matrix_is_unauthorized(
    make_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await started(make_client, tmp_path)
    response = await client.post(SIGN, json=EVENTS[0])
    assert response.status == 401
    assert (await response.json())["errcode"] == "M_UNAUTHORIZED"


# ---- X-Matrix verification against a notary (a stand-in for our homeserver) --------------


async def test_x_matrix_signatures_are_verified(aiohttp_server: Any) -> None:
    partner_key = generate_signing_key("a")
    key_object = sign_json(
        {
            "server_name": PARTNER,
            "verify_keys": {
                "ed25519:a": {"key": encode_base64(get_verify_key(partner_key).encode())}
            },
            "old_verify_keys": {},
            "valid_until_ts": 4_000_000_000_000,
        },
        PARTNER,
        partner_key,
    )
    lookups: list[str] = []

    async def query(request: web.Request) -> web.Response:
        lookups.append(request.match_info["server"])
        if request.match_info["server"] != PARTNER:
            return web.json_response({"server_keys": []})
        return web.json_response({"server_keys": [key_object]})

    app = web.Application()
    app.router.add_get("/_matrix/key/v2/query/{server}", query)
    notary = await aiohttp_server(app)
    keys = ServerKeys(str(notary.make_url("")), ca_file=None, timeout=5)
    await keys.start()
    try:
        verifier = RequestVerifier(SERVER_NAME, keys)
        content = {"type": "m.room.message"}
        signed = sign_json(
            {
                "method": "POST",
                "uri": SIGN,
                "origin": PARTNER,
                "destination": SERVER_NAME,
                "content": content,
            },
            PARTNER,
            partner_key,
        )
        sig = signed["signatures"][PARTNER]["ed25519:a"]
        header = (
            f'X-Matrix origin="{PARTNER}",destination="{SERVER_NAME}",key="ed25519:a",sig="{sig}"'
        )
        assert await verifier.origin("POST", SIGN, [header], content) == PARTNER
        assert await verifier.origin("POST", SIGN, [header], content) == PARTNER
        assert lookups == [PARTNER]  # cached
        with pytest.raises(NotAuthenticated, match="does not verify"):
            await verifier.origin("POST", SIGN, [header], {"type": "m.room.encrypted"})
        # Signed with the destination as the sender spelled it (case-insensitive names).
        upper = sign_json(
            {"method": "POST", "uri": SIGN, "origin": PARTNER, "destination": "CORP.example"},
            PARTNER,
            partner_key,
        )["signatures"][PARTNER]["ed25519:a"]
        spelled = f'X-Matrix origin={PARTNER},destination=CORP.example,key="ed25519:a",sig={upper}'
        assert await verifier.origin("POST", SIGN, [spelled], None) == PARTNER
        elsewhere = header.replace(SERVER_NAME, "other.example")
        with pytest.raises(NotAuthenticated, match="another server"):
            await verifier.origin("POST", SIGN, [elsewhere], content)
        unknown = header.replace(PARTNER, "unknown.example")
        for _ in range(3):
            with pytest.raises(NotAuthenticated, match=r"unknown\.example"):
                await verifier.origin("POST", SIGN, [unknown], content)
        assert lookups == [PARTNER, "unknown.example"]  # failures are not retried at once
    finally:
        await keys.close()


# ---- config --------------------------------------------------------------------------------


def test_policy_server_config(tmp_path: Path) -> None:
    from dmz_api.config import ConfigError, Section
    from dmz_api.gateway.config import parse_gateway_config

    def parse(data: dict[str, Any]) -> Any:
        section = Section({"server_name": SERVER_NAME, **data}, "gateway", tmp_path)
        return parse_gateway_config(section)

    assert parse({}).policy_server is None
    config = parse({"upstream": "https://127.0.0.1:8448", "policy_server": {}}).policy_server
    assert config.key_file == tmp_path / "policy_server.key"
    assert (config.verify_origin, config.key_server) == (True, "https://127.0.0.1:8448")
    assert config.max_body == 128 * 1024
    with pytest.raises(ConfigError, match=r"gateway\.policy_server\.key_server: is required"):
        parse({"policy_server": {}})
    assert parse({"policy_server": {"verify_origin": False}}).policy_server.key_server is None
    with pytest.raises(ConfigError, match=r"gateway\.policy_server\.max_body"):
        parse({"policy_server": {"verify_origin": False, "max_body": 10}})
    assert config.fallback_room_version == "10"
    # The key file is checked with the config (dmz_api --check): corrupt, or not creatable.
    (tmp_path / "bad.key").write_text("ed25519 policy_server !!\n")
    with pytest.raises(ConfigError, match=r"key_file: .*bad\.key: the key line is not a valid"):
        parse({"policy_server": {"verify_origin": False, "key_file": "bad.key"}})
    with pytest.raises(ConfigError, match="does not exist and cannot be created"):
        parse({"policy_server": {"verify_origin": False, "key_file": "/proc/none/policy.key"}})
    with pytest.raises(ConfigError, match="must be a room version from 1 to 11"):
        parse({"policy_server": {"verify_origin": False, "fallback_room_version": "12"}})


def test_room_versions() -> None:
    versions = RoomVersions("9")
    assert versions.of("!hash12") == "12" and versions.of("!r:corp.example") == "9"
    create = {"type": "m.room.create", "state_key": "", "room_id": "!r:corp.example"}
    versions.learn({**create, "content": {"room_version": "11"}})
    assert versions.of("!r:corp.example") == "11"
    versions.learn({**create, "room_id": "!old:corp.example", "content": {}})
    assert versions.of("!old:corp.example") == "1"
