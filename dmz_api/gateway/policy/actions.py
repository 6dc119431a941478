"""Actions: what a request does that no event type names, for ``event_type_block`` ``actions``.

A fixed vocabulary (``ACTIONS``), each a way to defeat a ledger that event types cannot show:

* ``e2ee.keys`` — publishing or fetching the keys end-to-end encryption needs: client
  ``POST keys/upload``, ``keys/claim``, ``keys/device_signing/upload``,
  ``keys/signatures/upload``, any write under ``room_keys/`` (server-side key backup) and
  ``dehydrated_device`` (MSC3814); federation ``POST user/keys/claim`` (a remote server
  claiming one-time keys of our users to open Olm sessions to them). Reads that serve
  clients whatever they do (``keys/query``, ``keys/changes``, federation ``user/keys/query``,
  ``user/devices``) are not actions: refusing them breaks client start-up and adds nothing,
  since a device that cannot publish keys cannot be encrypted to.
* ``account.erase`` — ``POST account/deactivate`` with ``"erase": true`` (the user's events
  are served as ``{}`` to everyone who joins later). Seen only where the body is (the proxy).
* ``membership.redact_events`` — a kick or ban that also redacts the target's past events
  (MSC4293, ``org.matrix.msc4293.redact_events``): ``POST rooms/{room}/kick|ban`` bodies at the
  proxy, and ``m.room.member`` events in federation transactions.

``path_actions`` reads the classified path (cached: the proxy pays one dict lookup);
``body_wanted`` says when the proxy must read the body; ``body_actions`` and
``event_actions`` read a parsed request body and an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

E2EE_KEYS = "e2ee.keys"
ACCOUNT_ERASE = "account.erase"
REDACT_EVENTS = "membership.redact_events"
ACTIONS = frozenset({E2EE_KEYS, ACCOUNT_ERASE, REDACT_EVENTS})

_WRITE = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_KEY_WRITES = (
    "/keys/upload",
    "/keys/claim",
    "/keys/device_signing/upload",
    "/keys/signatures/upload",
)
_REDACT_FLAGS = ("org.matrix.msc4293.redact_events", "redact_events")
_NONE: tuple[str, ...] = ()


@lru_cache(maxsize=1024)
def path_actions(method: str, endpoint: str, template: str) -> tuple[str, ...]:
    """The actions a request performs by its method and classified path alone."""
    if method not in _WRITE:
        return _NONE
    # ``keys/upload/{deviceId}`` is the old spelling Synapse still routes.
    if endpoint == "client.keys" and template.removesuffix("/{}").endswith(_KEY_WRITES):
        return (E2EE_KEYS,)
    if endpoint in ("client.room_keys", "client.dehydrated_device"):
        return (E2EE_KEYS,)
    if endpoint == "federation.user" and template.endswith("/user/keys/claim"):
        return (E2EE_KEYS,)
    return _NONE


def body_wanted(method: str, endpoint: str, template: str) -> bool:
    """Whether the body can carry an action (the proxy reads such bodies, bounded)."""
    if method != "POST":
        return False
    if endpoint in ("client.kick", "client.ban"):
        return True
    return endpoint == "client.account" and template.endswith("/account/deactivate")


def _flagged(content: Mapping[str, Any]) -> bool:
    return any(content.get(flag) is True for flag in _REDACT_FLAGS)


def body_actions(endpoint: str, body: Any) -> tuple[str, ...]:
    """The actions a parsed request body asks for (``body_wanted`` endpoints)."""
    if not isinstance(body, Mapping):
        return _NONE
    if endpoint == "client.account":
        # Synapse takes only a JSON true (StrictBool); anything else it refuses.
        return (ACCOUNT_ERASE,) if body.get("erase") is True else _NONE
    if endpoint in ("client.kick", "client.ban") and _flagged(body):
        return (REDACT_EVENTS,)
    return _NONE


def event_actions(event: Mapping[str, Any]) -> tuple[str, ...]:
    """The actions an event (a PDU) carries: a kick or ban that redacts the target's events."""
    if event.get("type") != "m.room.member":
        return _NONE
    content = event.get("content")
    if not isinstance(content, Mapping) or content.get("membership") not in ("leave", "ban"):
        return _NONE
    return (REDACT_EVENTS,) if _flagged(content) else _NONE
