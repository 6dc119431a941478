"""The registrar's secrets: token hashes, the page's CSRF tokens, sealed idempotent replies.

One master secret (``registrar.secret``, or random per process when unset) is stretched
with HKDF into one key per purpose, so a leak of one derived key reveals nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# What the homeserver accepts as a registration token (Synapse: [A-Za-z0-9._~-], ≤ 64).
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    # Tokens carry 192 random bits: one SHA-256 is enough at rest (nothing to brute-force).
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


class RegistrarKeys:
    def __init__(self, master: bytes | None) -> None:
        # Without a configured secret, CSRF tokens and sealed replies last one process.
        self.ephemeral = master is None
        master = master if master is not None else os.urandom(32)
        self._csrf = _derive(master, b"bastion registrar csrf v1")
        self._seal = AESGCM(_derive(master, b"bastion registrar idempotency v1"))

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(12)
        return _b64(nonce + self._seal.encrypt(nonce, plaintext.encode(), context.encode()))

    def unseal(self, sealed: str, context: str) -> str | None:
        try:
            raw = _unb64(sealed)
            return self._seal.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, ValueError):
            return None

    def csrf_token(self, nonce: str, token_hash: str, issued_at: int) -> str:
        """The form's half of a signed double-submit pair; the cookie holds ``nonce``."""
        mac = hmac.new(self._csrf, f"{nonce}|{token_hash}|{issued_at}".encode(), "sha256")
        return f"{issued_at}.{_b64(mac.digest())}"

    def check_csrf(
        self, presented: str, nonce: str, token_hash: str, now: int, max_age: int
    ) -> bool:
        issued, _, _ = presented.partition(".")
        if not issued.isdigit() or not NONCE_PATTERN.match(nonce):
            return False
        if not 0 <= now - int(issued) <= max_age:
            return False
        expected = self.csrf_token(nonce, token_hash, int(issued))
        return hmac.compare_digest(expected.encode(), presented.encode())


def new_nonce() -> str:
    return secrets.token_urlsafe(18)
