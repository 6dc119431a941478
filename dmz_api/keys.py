"""API keys: hashed at rest, compared in constant time, each with its scopes.

``init_app`` puts a ``KeyRing`` of the configured keys under ``KEYRING``; the auth
middleware asks it which key, if any, a request presents.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class ApiKey:
    name: str
    key_hash: bytes
    scopes: frozenset[str]


def hash_api_key(key: str) -> bytes:
    # API keys are ≥128-bit random strings, so one SHA-256 is enough at rest (no stretching).
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key matching ``presented``, comparing against every key so timing says nothing."""
        digest = hash_api_key(presented)
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.key_hash):
                found = key
        return found


KEYRING: web.AppKey[KeyRing] = web.AppKey("keyring", KeyRing)
