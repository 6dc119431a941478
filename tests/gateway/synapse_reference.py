"""Synapse's own event code as a reference, run in a child process.

Importing Synapse (Twisted, zope.interface) into the test process breaks maubot's plugin
tests that run later in it, so the tests ask a child process instead:

    python -m tests.gateway.synapse_reference < {"redact": [[version, event], ...],
                                                 "verify": [[version, event, server,
                                                             signatures, public_key], ...]}
    > {"redact": [[pruned_pdu, event_id], ...], "verify": [bool, ...]}

``verify`` is what Synapse's policy handler does: the room's policy key, ``ed25519:policy_server``,
over ``redact_event(event).get_pdu_json()``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def ask(request: dict[str, Any]) -> dict[str, Any]:
    """Run the reference on ``request`` in a child process."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.gateway.synapse_reference"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _main() -> None:
    from signedjson.key import decode_verify_key_bytes
    from signedjson.sign import verify_signed_json
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.events import make_event_from_dict
    from synapse.events.utils import prune_event
    from unpaddedbase64 import decode_base64

    request = json.load(sys.stdin)
    redacted = []
    for version, event in request.get("redact", []):
        made = make_event_from_dict(dict(event), KNOWN_ROOM_VERSIONS[version])
        pruned = prune_event(made).get_pdu_json()
        pruned.pop("unsigned", None)
        redacted.append([pruned, made.event_id])
    verified = []
    for version, event, server, signatures, public_key in request.get("verify", []):
        made = make_event_from_dict(dict(event), KNOWN_ROOM_VERSIONS[version])
        for key_id, sig in signatures.items():
            made.signatures.add_signature(server, key_id, sig)
        key = decode_verify_key_bytes("ed25519:policy_server", decode_base64(public_key))
        try:
            verify_signed_json(prune_event(made).get_pdu_json(), server, key)
        except Exception:
            verified.append(False)
        else:
            verified.append(True)
    json.dump({"redact": redacted, "verify": verified}, sys.stdout)


if __name__ == "__main__":
    _main()
