"""Event ids the gateway computes for PDUs, against Synapse's own computation.

Synapse runs in a subprocess: importing it here would load Twisted and zope.interface into
the test process, which breaks maubot's plugin tests later in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from dmz_api.gateway.enforce.federation import path_event_id, reference_event_id

_SYNAPSE_IDS = """
import base64, json, sys
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import compute_event_reference_hash
from synapse.events import make_event_from_dict
ids = []
for version, event in json.load(sys.stdin):
    built = make_event_from_dict(event, KNOWN_ROOM_VERSIONS[version])
    digest = compute_event_reference_hash(built)[1]
    ids.append("$" + base64.urlsafe_b64encode(digest).decode().rstrip("="))
print(json.dumps(ids))
"""


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


VERSIONS = ["3", "5", "9", "10", "11", "12"]
CASES: list[tuple[str, dict[str, Any]]] = [
    ("m.room.message", {"body": "hello", "msgtype": "m.text"}),
    ("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"}),
    ("m.room.encrypted", {"ciphertext": "AwgA", "algorithm": "m.megolm.v1.aes-sha2"}),
    ("m.room.redaction", {"reason": "gone"}),
    ("m.room.member", {"membership": "ban", "org.matrix.msc4293.redact_events": True}),
]


@pytest.fixture(scope="module")
def synapse_ids() -> dict[tuple[str, str], str]:
    """Synapse's event id of every case, by (room version, event type)."""
    cases = [(v, pdu(t, v, **content)) for v in VERSIONS for t, content in CASES]
    done = subprocess.run(
        [sys.executable, "-c", _SYNAPSE_IDS],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    ids = json.loads(done.stdout)
    return {(v, e["type"]): i for (v, e), i in zip(cases, ids, strict=True)}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("event_type", "content"), CASES, ids=[c[0] for c in CASES])
def test_event_ids_match_synapse(
    synapse_ids: dict[tuple[str, str], str],
    version: str,
    event_type: str,
    content: dict[str, Any],
) -> None:
    event = pdu(event_type, version, **content)
    assert reference_event_id(event) == synapse_ids[(version, event_type)]


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
