"""What compliance-ledger needs of the homeserver behind the gateway, read from its config.

A border cannot stop what the homeserver does by itself: Synapse encrypts the rooms it
creates when ``encryption_enabled_by_default_for_room_type`` says so, deletes the original
of a redacted event after ``redaction_retention_period`` (7 days unless set to null),
purges history under ``retention`` and forgotten rooms under
``forgotten_room_retention_period``, and honours MSC4293 redact-on-ban with
``experimental_features.msc4293_enabled``. With ``gateway.homeserver_config`` naming the
homeserver's ``homeserver.yaml`` (read, never written), ``ledger_problems`` says which of
these would undo the ledger: ``python -m dmz_api --check`` prints them, and the gateway
logs them whenever a ruleset with compliance-ledger enabled is loaded. Synapse's YAML only;
for Tuwunel and conduwuit see ``deploy/synapse/tuwunel-notes.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

LEDGER_RULE = "compliance-ledger"


class HomeserverConfigError(Exception):
    """The homeserver's config cannot be read as a YAML mapping (one line)."""


def read_homeserver_config(path: Path) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise HomeserverConfigError(f"cannot read {path} ({e.strerror})") from None
    except yaml.YAMLError:
        raise HomeserverConfigError(f"{path} is not valid YAML") from None
    if not isinstance(data, Mapping):
        raise HomeserverConfigError(f"{path} does not hold a YAML mapping")
    return data


def ledger_problems(hs: Mapping[str, Any]) -> list[str]:
    """Each setting of ``hs`` (Synapse's homeserver.yaml) that would undo compliance-ledger."""
    problems: list[str] = []
    # PyYAML reads an unquoted off as False, which Synapse accepts as "off".
    encryption = hs.get("encryption_enabled_by_default_for_room_type", "off")
    if encryption not in ("off", False):
        problems.append(
            f"encryption_enabled_by_default_for_room_type is {encryption!r}: rooms the "
            'homeserver creates are encrypted although no client asked (set "off")'
        )
    if "redaction_retention_period" not in hs:
        problems.append(
            "redaction_retention_period is not set, so Synapse deletes the original of a "
            "redacted event after 7 days (set it to null)"
        )
    elif hs["redaction_retention_period"] is not None:
        problems.append(
            f"redaction_retention_period is {hs['redaction_retention_period']!r}: originals of "
            "redacted events are deleted after it (set it to null)"
        )
    retention = hs.get("retention")
    if isinstance(retention, Mapping) and retention.get("enabled") is True:
        problems.append("retention.enabled is true: message retention purges history")
    if hs.get("forgotten_room_retention_period") is not None:
        problems.append("forgotten_room_retention_period is set: rooms everyone forgot are purged")
    experimental = hs.get("experimental_features")
    if isinstance(experimental, Mapping) and experimental.get("msc4293_enabled") is True:
        problems.append(
            "experimental_features.msc4293_enabled is true: a kick or ban may redact the "
            "target's messages"
        )
    return problems


def check_homeserver_config(path: Path) -> list[str]:
    """``ledger_problems`` of the file at ``path``, or the one reason it cannot be read."""
    try:
        return ledger_problems(read_homeserver_config(path))
    except HomeserverConfigError as e:
        return [str(e)]
