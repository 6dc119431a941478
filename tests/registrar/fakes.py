"""An in-memory homeserver behind the adapter protocol, for tests without Synapse."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from dmz_api.registrar.homeserver import (
    DeactivationUnsupported,
    HomeserverUnavailable,
    NativeToken,
    OutcomeUnknown,
    Registration,
    RegistrationRefused,
)


@dataclass
class FakeToken:
    uses_allowed: int
    expiry_time: int
    pending: int = 0
    completed: int = 0


@dataclass
class FakeHomeserver:
    # True: like Synapse (one-use stand-in tokens; native tokens of the old design may
    # remain in ``tokens``); False: a homeserver with one static token (kind matrix).
    legacy_tokens: bool = True
    server_name: str = "dmz.test"
    static_token: str = "static-token"
    can_deactivate: bool = True
    down: bool = False
    delay: float = 0.0
    # The account-creating call "times out" after creating the account.
    lose_answer: bool = False
    crash_with: Exception | None = None
    # The homeserver refuses the registrar's stand-in token (misconfiguration).
    refuse_stand_in: bool = False
    # Native tokens on the homeserver: only legacy ones (see add_legacy).
    tokens: dict[str, FakeToken] = field(default_factory=dict)
    # Tokens the adapter was given to register with (the guest's must never be one).
    stage_tokens: list[str] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)
    deactivated: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "synapse" if self.legacy_tokens else "matrix"

    def _check(self, what: str) -> None:
        self.calls.append(what)
        if self.crash_with is not None:
            raise self.crash_with
        if self.down:
            raise HomeserverUnavailable(what)

    async def list_tokens(self) -> list[NativeToken]:
        self._check("list_tokens")
        return [
            NativeToken(t, v.uses_allowed, v.pending, v.completed, v.expiry_time)
            for t, v in self.tokens.items()
        ]

    async def expire_token(self, token: str, at_ms: int) -> bool:
        self._check("expire_token")
        if token in self.tokens:
            self.tokens[token].expiry_time = at_ms
        return True

    async def delete_token(self, token: str) -> None:
        self._check("delete_token")
        self.tokens.pop(token, None)

    async def check_username(self, localpart: str) -> None:
        self._check("check_username")
        if localpart in self.users:
            raise RegistrationRefused("username_taken")
        if localpart == "invalid":
            raise RegistrationRefused("username_invalid")

    async def begin_registration(
        self, localpart: str, password: str, display_name: str | None
    ) -> Registration:
        self._check("begin_registration")
        if localpart in self.users:
            raise RegistrationRefused("username_taken")
        if password == "weak-password":
            raise RegistrationRefused("password_weak")
        return Registration({"username": localpart, "password": password}, "s", display_name)

    async def complete_registration(self, registration: Registration, token: str) -> str:
        self._check("complete_registration")
        localpart = registration.request["username"]
        if self.delay:
            await asyncio.sleep(self.delay)
        if localpart in self.users:
            raise RegistrationRefused("username_taken")
        # The real adapters never pass the guest's token on: a one-use or static one.
        self.stage_tokens.append(token)
        if self.refuse_stand_in or (self.kind == "matrix" and self.static_token != "static-token"):
            raise RegistrationRefused("token_rejected")
        self.users[localpart] = registration.request["password"]
        if self.lose_answer:
            raise OutcomeUnknown("register")
        return f"@{localpart}:{self.server_name}"

    async def deactivate(self, user_id: str) -> None:
        self._check("deactivate")
        if not self.can_deactivate:
            raise DeactivationUnsupported("deactivate")
        self.deactivated.add(user_id)

    def add_legacy(self, token: str, uses_allowed: int = 1, expiry_time: int | None = None) -> None:
        """A native token as registrars of the old design minted them."""
        expiry = expiry_time or int(time.time() * 1000) + 3_600_000
        self.tokens[token] = FakeToken(uses_allowed, expiry)

    def use_elsewhere(self, token: str, *, pending: bool = False) -> None:
        """A guest registering with legacy ``token`` from some Matrix client, not our page."""
        if pending:
            self.tokens[token].pending += 1
        else:
            self.tokens[token].completed += 1
