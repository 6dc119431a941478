"""The ``registrar:`` config section, validated into a frozen dataclass at start-up."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

from ..config_reader import Section
from .names import DEFAULT_RESERVED, NamePolicy

HomeserverKind = Literal["synapse", "matrix"]

DAY = 86400


@dataclass(frozen=True)
class HomeserverConfig:
    kind: HomeserverKind
    url: str
    server_name: str
    # The address guests type into their Matrix client (shown on the success page).
    client_url: str
    # Secrets stay out of repr() so a logged or printed config never shows them.
    admin_token: str | None = field(repr=False)
    # kind matrix: the homeserver's one static registration token.
    registration_token: str | None = field(repr=False)
    timeout: float = 10.0


@dataclass(frozen=True)
class RateLimitConfig:
    per_minute: int
    burst: int


@dataclass(frozen=True)
class RegistrarConfig:
    homeserver: HomeserverConfig
    default_uses: int
    default_expires_in: int
    max_uses: int
    max_expires_in: int
    rate_limit: RateLimitConfig
    # Keys the CSRF HMAC and the encryption of idempotent replies; None = random per process.
    secret: bytes | None = field(repr=False)
    password_min_length: int = 10
    idempotency_ttl: int = DAY
    page_title: str = "Guest access"
    # The longest a guest account may be given (at mint or by an extension), in seconds.
    max_guest_expires_in: int = 365 * DAY
    # Seconds between runs of the task that deactivates expired guests.
    expiry_interval: float = 60.0
    # Usernames and display names guests may not take (names.py).
    names: NamePolicy = field(default_factory=NamePolicy)
    # onboarding.show_sponsor: the page names the Matrix ID of who minted the link.
    show_sponsor: bool = False

    @property
    def has_deactivation(self) -> bool:
        return self.homeserver.admin_token is not None


def _homeserver(section: Section) -> HomeserverConfig:
    kind = section.choice("kind", ("synapse", "matrix"))
    url = section.url("url")
    server_name = section.str("server_name")
    if any(c.isspace() or c in "/@" for c in server_name):
        raise section.error(
            "server_name", "must be a bare server name such as partners.example.com"
        )
    admin_token = section.secret("admin_token", required=kind == "synapse")
    registration_token = None
    if kind == "matrix":
        registration_token = section.secret("registration_token", required=True)
    elif section.has("registration_token") or section.has("registration_token_file"):
        raise section.error("registration_token", "is only used with kind: matrix")
    return HomeserverConfig(
        kind="synapse" if kind == "synapse" else "matrix",
        url=url,
        server_name=server_name,
        client_url=section.url("client_url", url),
        admin_token=admin_token,
        registration_token=registration_token,
        timeout=section.float("timeout", 10.0),
    )


def _optional(section: Section, name: str) -> Section:
    return section.section(name, required=False) or Section({}, section.key(name), section.base_dir)


def parse_registrar_config(section: Section) -> RegistrarConfig:
    homeserver = section.section("homeserver")
    assert homeserver is not None
    limits = _optional(section, "rate_limit")
    max_uses = section.int("max_uses", 100, low=1, high=1_000_000)
    max_expires_in = section.duration("max_expires_in", 30 * DAY)
    defaults = _optional(section, "token_defaults")
    default_uses = defaults.int("uses", 1, low=1, high=max_uses)
    default_expires_in = defaults.duration("expires_in", DAY)
    if default_expires_in > max_expires_in:
        raise defaults.error("expires_in", f"must not exceed max_expires_in ({max_expires_in} s)")
    secret_text = section.secret("secret", required=False)
    if secret_text is not None and len(secret_text) < 22:
        raise section.error("secret", "must be at least 22 characters (128 bits of randomness)")
    title = section.str("page_title", "Guest access")
    if len(title) > 100:
        raise section.error("page_title", "must be at most 100 characters")
    return RegistrarConfig(
        homeserver=_homeserver(homeserver),
        default_uses=default_uses,
        default_expires_in=default_expires_in,
        max_uses=max_uses,
        max_expires_in=max_expires_in,
        rate_limit=RateLimitConfig(
            per_minute=limits.int("per_minute", 30, low=1, high=1_000_000),
            burst=limits.int("burst", 10, low=1, high=1_000_000),
        ),
        secret=hashlib.sha256(secret_text.encode()).digest() if secret_text else None,
        password_min_length=section.int("password_min_length", 10, low=8, high=128),
        idempotency_ttl=section.duration("idempotency_ttl", DAY),
        page_title=title,
        max_guest_expires_in=section.duration("max_guest_expires_in", 365 * DAY),
        expiry_interval=section.float("expiry_interval", 60.0),
        names=_names(section),
        show_sponsor=_optional(section, "onboarding").bool("show_sponsor", False),
    )


def _names(section: Section) -> NamePolicy:
    reserved = section.list("reserved_usernames", list(DEFAULT_RESERVED))
    patterns = section.list("reserved_patterns", [])
    domains = section.list("internal_domains", [])
    for key, values in (
        ("reserved_usernames", reserved),
        ("reserved_patterns", patterns),
        ("internal_domains", domains),
    ):
        if not all(isinstance(value, str) and value.strip() for value in values):
            raise section.error(key, "must be a list of non-empty strings")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise section.error(
                "reserved_patterns", f"{pattern!r} is not a regular expression ({e})"
            ) from None
    return NamePolicy.build(reserved, patterns, domains)


__all__ = ["HomeserverConfig", "RateLimitConfig", "RegistrarConfig", "parse_registrar_config"]
