"""The plugin configuration (base-config.yaml) with typed, always-current accessors.

The defaults are the plugin's own ``base-config.yaml`` whatever the loader hands over:
the maubot server passes that file, maubot's standalone mode passes its own example
config's (empty) ``plugin_config``; keys missing there are filled in from the copy
shipped beside the ``plugin`` package (``extra_files`` in ``maubot.yaml``).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from mautrix.types import RoomID
from mautrix.util.config import BaseProxyConfig, ConfigUpdateHelper, RecursiveDict
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from .durations import parse_duration

IDENTITY_MODES = ("synapse_admin", "membership")
GUEST_POLICIES = ("keep", "deactivate")
ROLE_NAMES = ("operator", "gateway_admin", "auditor")
# One word, as maubot matches it: it lowercases the first word of a message.
PREFIX = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
# The words Bastion answers on its own, so a prefix cannot be one of them.
TAKEN_WORDS = frozenset({"token", "guest", "sbg", "audit", "help", "whoami"})
BASE_CONFIG = "base-config.yaml"


def packaged_base() -> CommentedMap | None:
    """The ``base-config.yaml`` shipped beside the package (at the root of the .mbp)."""
    try:
        # A directory, or a zipfile.Path inside the .mbp: both have a parent.
        root = resources.files(__package__).parent  # type: ignore[attr-defined]
        text = (root / BASE_CONFIG).read_text("utf-8")
    except (OSError, AttributeError, ValueError):
        return None
    data = YAML().load(text)
    return data if isinstance(data, CommentedMap) else None


def fill_in(target: CommentedMap, defaults: CommentedMap) -> None:
    """Add to ``target`` every key of ``defaults`` it lacks (nested maps key by key)."""
    for key, value in defaults.items():
        if key not in target:
            target[key] = value
        elif isinstance(target[key], CommentedMap) and isinstance(value, CommentedMap):
            fill_in(target[key], value)


class Config(BaseProxyConfig):
    def load_base(self) -> RecursiveDict[CommentedMap] | None:
        given = super().load_base()
        packaged = packaged_base()
        if packaged is None:
            return given
        data = given._data if given is not None else None
        if not isinstance(data, CommentedMap):
            return RecursiveDict(packaged, CommentedMap)
        fill_in(data, packaged)
        return given

    def do_update(self, helper: ConfigUpdateHelper) -> None:
        helper.copy("control_rooms")
        helper.copy("commands.prefix")
        helper.copy("commands.bare_aliases")
        helper.copy("roles.operator")
        helper.copy("roles.gateway_admin")
        helper.copy("roles.auditor")
        helper.copy("identity.mode")
        helper.copy("identity.homeserver_url")
        helper.copy("identity.admin_token")
        helper.copy("identity.timeout")
        helper.copy("dmz.registrar_url")
        helper.copy("dmz.gateway_url")
        helper.copy("dmz.api_key")
        helper.copy("dmz.timeout")
        helper.copy("token_defaults.uses")
        helper.copy("token_defaults.expires")
        helper.copy("token_defaults.guest_expires")
        helper.copy("on_staff_deactivated.revoke_tokens")
        helper.copy("on_staff_deactivated.guests")
        helper.copy("sweep_interval")
        helper.copy("registrations.poll_interval")
        helper.copy("guest_expiry.check_interval")
        helper.copy("guest_expiry.warn_before")
        helper.copy("audit.export_key")

    def problems(self) -> list[str]:
        """Every setting that is missing or invalid, one readable line each."""
        found: list[str] = []
        checks: list[tuple[str, Any]] = [
            ("identity.timeout", lambda: self.identity_timeout),
            ("dmz.timeout", lambda: self.dmz_timeout),
            ("token_defaults.expires", lambda: self.token_expires),
            ("sweep_interval", lambda: self.sweep_interval),
            ("registrations.poll_interval", lambda: self.registrations_poll_interval),
            ("token_defaults.guest_expires", lambda: self.guest_expires),
            ("guest_expiry.check_interval", lambda: self.expiry_check_interval),
            ("guest_expiry.warn_before", lambda: self.expiry_warn_before),
        ]
        for key, read in checks:
            try:
                read()
            except ValueError as e:
                found.append(f"{key} {e}")
        if not self.control_rooms:
            found.append("control_rooms is empty, so every command is refused")
        if self.identity_mode not in IDENTITY_MODES:
            found.append(f"identity.mode must be one of {', '.join(IDENTITY_MODES)}")
        if self.guests_on_deactivation not in GUEST_POLICIES:
            found.append(f"on_staff_deactivated.guests must be one of {', '.join(GUEST_POLICIES)}")
        uses = self["token_defaults.uses"]
        if isinstance(uses, bool) or not isinstance(uses, int) or uses < 1:
            found.append("token_defaults.uses must be a whole number of at least 1")
        if not self.dmz_api_key:
            found.append("dmz.api_key is empty, so every call to dmz_api will be refused")
        prefix = self.command_prefix
        if prefix and (not PREFIX.match(prefix) or prefix in TAKEN_WORDS):
            found.append(
                "commands.prefix must be one lowercase word of letters, digits, '-', '_' or '.', "
                f"and none of {', '.join(sorted(TAKEN_WORDS))}"
            )
        if prefix and self["commands.bare_aliases"]:
            found.append("commands.bare_aliases is ignored while commands.prefix is set")
        return found

    @property
    def control_rooms(self) -> frozenset[RoomID]:
        return frozenset(RoomID(str(room)) for room in self["control_rooms"] or [])

    @property
    def command_prefix(self) -> str:
        """The word every command is typed after ("" for none), lowercased as maubot matches."""
        return str(self["commands.prefix"] or "").strip().lower()

    @property
    def bare_aliases(self) -> bool:
        """Whether bare ``!help`` / ``!whoami`` are answered (never under a prefix)."""
        return bool(self["commands.bare_aliases"]) and not self.command_prefix

    def role_patterns(self, role: str) -> list[str]:
        return [str(pattern) for pattern in self[f"roles.{role}"] or []]

    @property
    def identity_mode(self) -> str:
        return str(self["identity.mode"])

    @property
    def identity_homeserver_url(self) -> str:
        return str(self["identity.homeserver_url"] or "").rstrip("/")

    @property
    def identity_admin_token(self) -> str:
        return str(self["identity.admin_token"] or "")

    @property
    def identity_timeout(self) -> float:
        return float(parse_duration(self["identity.timeout"]))

    def dmz_url(self, role: str) -> str:
        return str(self[f"dmz.{role}_url"] or "").rstrip("/")

    @property
    def dmz_api_key(self) -> str:
        return str(self["dmz.api_key"] or "")

    @property
    def dmz_timeout(self) -> float:
        return float(parse_duration(self["dmz.timeout"]))

    @property
    def token_uses(self) -> int:
        return int(self["token_defaults.uses"])

    @property
    def token_expires(self) -> int:
        return parse_duration(self["token_defaults.expires"])

    @property
    def revoke_tokens_on_deactivation(self) -> bool:
        return bool(self["on_staff_deactivated.revoke_tokens"])

    @property
    def guests_on_deactivation(self) -> str:
        return str(self["on_staff_deactivated.guests"])

    @property
    def sweep_interval(self) -> int:
        value = self["sweep_interval"]
        if value in (0, "0", None, ""):
            return 0
        return parse_duration(value)

    @property
    def registrations_poll_interval(self) -> float:
        """Seconds between reads of the registrations feed (0: never, no invites)."""
        value = self["registrations.poll_interval"]
        if value in (0, "0", None, ""):
            return 0.0
        if isinstance(value, float) and not value.is_integer():
            if value < 0:
                raise ValueError("must not be negative")
            return value  # sub-second, for tests
        return float(parse_duration(value))

    @property
    def guest_expires(self) -> int:
        """Seconds a guest keeps their account when --guest-expires is not given (0: for good)."""
        value = self["token_defaults.guest_expires"]
        if value in (0, "0", None, ""):
            return 0
        return parse_duration(value)

    @property
    def expiry_check_interval(self) -> float:
        """Seconds between checks for guests about to expire or expired."""
        value = self["guest_expiry.check_interval"]
        if isinstance(value, float) and not value.is_integer() and value > 0:
            return value
        return float(parse_duration(value if value not in (None, "") else "1m"))

    @property
    def expiry_warn_before(self) -> int:
        return parse_duration(self["guest_expiry.warn_before"] or "7d")

    @property
    def audit_export_key(self) -> str:
        return str(self["audit.export_key"] or "")
