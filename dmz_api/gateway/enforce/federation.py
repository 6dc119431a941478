"""Federation requests that carry events, judged event by event (docs/rules.md, section 7.1).

A transaction (``PUT /_matrix/federation/v1/send/{txnId}``) is signed by its origin over the
whole body (X-Matrix signs method, URI, origin, destination and ``content``), so the gateway
cannot forward a transaction with some events taken out: the homeserver would refuse the
signature. ``judge_transaction`` therefore decides, for each PDU (its type, room, actions,
the transaction's origin) and each ``m.direct_to_device`` EDU (its message type):

* every one allowed → ``None``: the proxy forwards the transaction untouched;
* any refused → the answer the proxy gives the sending server itself, ``200 {"pdus": {event
  id: {"error": ...}}}``, and nothing is forwarded. A 200 is what keeps the partner's queue
  moving: Synapse logs per-PDU errors and never retries them, whereas a 4xx on ``/send``
  makes it back off the whole destination. The accepted PDUs of such a transaction get an
  error too (they were not delivered); our homeserver fetches them from the partner when a
  later event names them (``get_missing_events``).

Every PDU and to-device message is one decision in the log, with its event id. Other EDUs
(typing, receipts, presence, device lists) carry no history and are not judged one by one.

``member_event`` finds the event of ``send_join``, ``send_leave``, ``send_knock``, ``invite``
and ``exchange_third_party_invite`` bodies: those requests are judged with the event's
type, actions and id added, and refused whole when it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from ..policy.actions import event_actions
from ..policy.model import Decision, RequestClass, RequestInfo
from ..signing.events import FALLBACK_VERSION, event_id

TRANSACTION = "federation.send"
MEMBER_ENDPOINTS = frozenset(
    {
        "federation.send_join",
        "federation.send_leave",
        "federation.send_knock",
        "federation.invite",
        "federation.exchange_third_party_invite",
    }
)
# The spec's limits for one transaction.
MAX_PDUS = 50
MAX_EDUS = 100

# Fixed texts, so the ruleset's per-problem decision cache stays small.
TOO_LARGE = "the federation request body is larger than the gateway inspects"
ENCODED = "the federation request body is compressed and cannot be inspected"
NOT_JSON = "the federation request body is not a JSON object"
BAD_TRANSACTION = "the transaction's pdus and edus are not lists within the spec's limits"
NOT_DELIVERED = (
    "Not delivered: the transaction holds an event the gateway refuses; the homeserver"
    " fetches this one when it needs it"
)

Decide = Callable[[RequestInfo], Decision]


def wants_body(method: str, endpoint: str) -> bool:
    """Whether the proxy reads this federation request's body to judge its events."""
    return method == "PUT" and (endpoint == TRANSACTION or endpoint in MEMBER_ENDPOINTS)


def body_limit(endpoint: str, transaction_limit: int, other_limit: int) -> int:
    return transaction_limit if endpoint == TRANSACTION else other_limit


def reference_event_id(pdu: Mapping[str, Any]) -> str:
    """The event id of a PDU: its ``event_id`` (room versions 1, 2), else the reference hash
    computed as the homeserver does (``signing/events.py``, shared with the policy server).

    The room version is not in the PDU: a room id without a server part is version 12; a
    redaction with ``redacts`` only in its content is version 11 or later; anything else is
    hashed under version 10's rules, which versions 3 to 12 share for every event but create,
    member, join_rules and power_levels: for those of versions 11 and later the id shown may
    differ from the homeserver's (it is recorded, not judged).
    """
    given = pdu.get("event_id")
    # Only room versions 1 and 2 carry their id (``$local:server``); a later PDU claiming
    # one is ignored, as the homeserver ignores it.
    if isinstance(given, str) and ":" in given:
        return given
    room = pdu.get("room_id")
    if isinstance(room, str) and ":" not in room:
        version = "12"
    elif pdu.get("type") == "m.room.redaction" and "redacts" not in pdu:
        version = "11"
    else:
        version = FALLBACK_VERSION
    # A claimed id is no part of what is hashed (the homeserver drops it too).
    return event_id({k: v for k, v in pdu.items() if k != "event_id"}, version)


def _event_info(base: RequestInfo, event: Mapping[str, Any], event_id: str) -> RequestInfo:
    event_type = event.get("type")
    room = event.get("room_id")
    return RequestInfo(
        request_class=RequestClass.FEDERATION,
        method=base.method,
        path=base.path,
        endpoint=base.endpoint,
        origin=base.origin,
        event_types=(event_type,) if isinstance(event_type, str) else (),
        room=room if isinstance(room, str) else base.room,
        actions=event_actions(event),
        event_id=event_id,
        source=base.source,
    )


def judge_transaction(
    decide: Decide, base: RequestInfo, body: Mapping[str, Any]
) -> dict[str, Any] | str | None:
    """None to forward the transaction, the answer to give instead, or a malformation."""
    pdus = body.get("pdus", [])
    edus = body.get("edus", [])
    if (
        not isinstance(pdus, list)
        or not isinstance(edus, list)
        or len(pdus) > MAX_PDUS
        or len(edus) > MAX_EDUS
    ):
        return BAD_TRANSACTION
    results: dict[str, dict[str, str]] = {}
    accepted: list[str] = []
    refused = False
    for pdu in pdus:
        if not isinstance(pdu, Mapping):
            continue  # the homeserver refuses it; it holds nothing to judge
        event_id = reference_event_id(pdu)
        decision = decide(_event_info(base, pdu, event_id))
        if decision.allowed:
            accepted.append(event_id)
        else:
            refused = True
            results[event_id] = {"error": decision.reason}
    for edu in edus:
        if not isinstance(edu, Mapping) or edu.get("edu_type") != "m.direct_to_device":
            continue
        content = edu.get("content")
        message_type = content.get("type") if isinstance(content, Mapping) else None
        info = RequestInfo(
            request_class=RequestClass.FEDERATION,
            method=base.method,
            path=base.path,
            endpoint="federation.send.to_device",
            origin=base.origin,
            event_types=(message_type,) if isinstance(message_type, str) else (),
            source=base.source,
        )
        if not decide(info).allowed:
            refused = True
    if not refused:
        return None
    for event_id in accepted:
        results.setdefault(event_id, {"error": NOT_DELIVERED})
    return {"pdus": results}


def member_event(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The event of a membership request body (v2 invite wraps it in ``event``)."""
    wrapped = body.get("event")
    if "type" not in body and isinstance(wrapped, Mapping):
        return wrapped
    return body


def path_event_id(raw_path: str) -> str | None:
    """The ``{eventId}`` at the end of ``send_join``/``send_leave``/``send_knock``/``invite``."""
    last = raw_path.partition("?")[0].rstrip("/").rpartition("/")[2]
    event_id = unquote(last, errors="replace")
    return event_id if event_id.startswith("$") else None


def with_member_event(info: RequestInfo, raw_path: str, body: Mapping[str, Any]) -> None:
    """Add the event of a membership request to ``info`` (its type, actions and id)."""
    event = member_event(body)
    if event is None:
        return
    event_type = event.get("type")
    if isinstance(event_type, str) and event_type not in info.event_types:
        info.event_types = (*info.event_types, event_type)
    info.actions = (*info.actions, *(a for a in event_actions(event) if a not in info.actions))
    info.event_id = path_event_id(raw_path) or reference_event_id(event)
