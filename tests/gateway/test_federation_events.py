"""Event ids the gateway computes for PDUs, against Synapse's own computation."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import compute_event_reference_hash
from synapse.events import make_event_from_dict

from dmz_api.gateway.enforce.federation import path_event_id, reference_event_id


def pdu(event_type: str, version: str, **content: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": event_type,
        "room_id": "!room:partner.example",
        "sender": "@p:partner.example",
        "origin_server_ts": 1_700_000_000_000,
        "depth": 7,
        "prev_events": ["$prev"],
        "auth_events": ["$auth"],
        "content": content,
        "hashes": {"sha256": "aGFzaA"},
        "signatures": {"partner.example": {"ed25519:a": "c2ln"}},
        "unsigned": {"age": 5},
    }
    if int(version) < 11:
        event["origin"] = "partner.example"
    if event_type == "m.room.redaction":
        event["content"] = {"redacts": "$target", **content}
        if int(version) < 11:
            event["redacts"] = "$target"
    if event_type in ("m.room.member", "m.room.encryption"):
        event["state_key"] = "@g:corp.example" if event_type == "m.room.member" else ""
    return event


def synapse_event_id(event: dict[str, Any], version: str) -> str:
    built = make_event_from_dict(dict(event), KNOWN_ROOM_VERSIONS[version])
    _, digest = compute_event_reference_hash(built)
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


@pytest.mark.parametrize("version", ["3", "5", "9", "10", "11", "12"])
@pytest.mark.parametrize(
    ("event_type", "content"),
    [
        ("m.room.message", {"body": "hello", "msgtype": "m.text"}),
        ("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"}),
        ("m.room.encrypted", {"ciphertext": "AwgA", "algorithm": "m.megolm.v1.aes-sha2"}),
        ("m.room.redaction", {"reason": "gone"}),
        ("m.room.member", {"membership": "ban", "org.matrix.msc4293.redact_events": True}),
    ],
)
def test_event_ids_match_synapse(version: str, event_type: str, content: dict[str, Any]) -> None:
    event = pdu(event_type, version, **content)
    assert reference_event_id(event) == synapse_event_id(event, version)


def test_only_old_style_event_ids_are_taken_as_given() -> None:
    event = pdu("m.room.message", "10", body="x")
    assert reference_event_id({**event, "event_id": "$old:partner.example"}) == (
        "$old:partner.example"
    )
    assert reference_event_id({**event, "event_id": "$forged"}) == reference_event_id(event)


def test_the_event_id_of_a_membership_path() -> None:
    path = "/_matrix/federation/v2/send_join/!r:corp/%24abc%3Apartner?omit_members=true"
    assert path_event_id(path) == "$abc:partner"
    assert path_event_id("/_matrix/federation/v1/exchange_third_party_invite/!r:corp") is None
