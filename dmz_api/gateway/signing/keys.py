"""The policy server's ed25519 key: loaded from ``gateway.policy_server.key_file``, created
there at first start when the file is missing.

The file has Synapse's signing-key format (``ed25519 policy_server <unpadded base64 seed>``),
mode 0600. It is created with ``O_EXCL``: replicas that share the file (one secret mounted on
every replica, or a shared volume) and start together agree on one key, the loser reading the
winner's. The key id is always ``ed25519:policy_server`` (the spec fixes it), whatever
version label the file carries. The private key never leaves this module; what the rest of
the gateway sees is ``public_key`` (unpadded base64, what ``m.room.policy`` lists) and
``sign``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from signedjson.key import (
    decode_signing_key_base64,
    encode_signing_key_base64,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import sign_json
from signedjson.types import SigningKey

log = logging.getLogger("dmz_api.gateway.signing.keys")

KEY_VERSION = "policy_server"
KEY_ID = f"ed25519:{KEY_VERSION}"
# Seconds an empty key file is waited on (another replica creating it) before it is an error.
_EMPTY_WAIT = 2.0


class KeyFileError(Exception):
    """The key file exists but cannot be read or holds no ed25519 key (one sentence)."""


class PolicyKey:
    def __init__(self, signing_key: SigningKey) -> None:
        if signing_key.alg != "ed25519":
            raise KeyFileError(f"the policy key must be ed25519, not {signing_key.alg}")
        # The spec fixes the key id, so the version label in the file does not matter.
        self._key = decode_signing_key_base64(
            "ed25519", KEY_VERSION, encode_signing_key_base64(signing_key)
        )
        self.public_key: str = encode_verify_key_base64(get_verify_key(self._key))

    @classmethod
    def generate(cls) -> PolicyKey:
        return cls(generate_signing_key(KEY_VERSION))

    def sign(self, server_name: str, redacted: dict[str, Any]) -> str:
        """The ``ed25519:policy_server`` signature of ``redacted`` (a redacted PDU; its
        ``signatures`` and ``unsigned`` are not signed, as the spec's signing algorithm says)."""
        signed = sign_json(
            {k: v for k, v in redacted.items() if k not in ("signatures", "unsigned")},
            server_name,
            self._key,
        )
        signature: str = signed["signatures"][server_name][KEY_ID]
        return signature

    def to_line(self) -> str:
        return f"ed25519 {KEY_VERSION} {encode_signing_key_base64(self._key)}\n"


def _parse(path: Path, text: str) -> PolicyKey:
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise KeyFileError(f"{path}: a key line is 'ed25519 <version> <base64 seed>'")
        try:
            return PolicyKey(decode_signing_key_base64(parts[0], parts[1], parts[2]))
        except KeyFileError:
            raise
        except Exception:
            raise KeyFileError(f"{path}: the key line is not a valid ed25519 key") from None
    raise KeyFileError(f"{path}: holds no key")


def check_key_file(path: Path) -> None:
    """KeyFileError unless ``path`` holds a valid key or can be created (config check)."""
    if path.exists():
        try:
            text = path.read_text()
        except OSError as e:
            raise KeyFileError(f"{path}: cannot be read ({e.strerror})") from None
        if text.strip():  # empty: another replica is writing it right now
            _parse(path, text)
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        raise KeyFileError(
            f"{path} does not exist and cannot be created in {path.parent}:"
            " create it beforehand or name a writable place"
        )


def load_or_create(path: Path) -> PolicyKey:
    """The key in ``path``; a new one written there (0600) when the file does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise KeyFileError(f"{path}: cannot be created ({e.strerror})") from None
    else:
        key = PolicyKey.generate()
        try:
            with os.fdopen(fd, "w") as stream:
                stream.write(key.to_line())
                stream.flush()
                os.fsync(stream.fileno())
        except BaseException:
            # A half-written file would be taken for a corrupt key at the next start.
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        log.info("Created a policy server key in %s (public key %s)", path, key.public_key)
        return key
    # A replica that lost the O_EXCL race may look before the winner has written.
    deadline = time.monotonic() + _EMPTY_WAIT
    while True:
        try:
            text = path.read_text()
        except OSError as e:
            raise KeyFileError(f"{path}: cannot be read ({e.strerror})") from None
        if text.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    key = _parse(path, text)
    log.info("Policy server key loaded from %s (public key %s)", path, key.public_key)
    return key
