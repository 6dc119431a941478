"""API keys: hashed at rest, compared in constant time, each with its scopes."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from .config import ApiKey, hash_api_key


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
