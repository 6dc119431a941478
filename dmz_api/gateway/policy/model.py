"""What the rule pipeline judges (``RequestInfo``) and what it answers (``Decision``).

Both are shared by every enforcement point: the reverse proxy, the forward-auth endpoint,
the antispam callbacks and the dry-run API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


class RequestClass(StrEnum):
    FEDERATION = "federation"
    CLIENT = "client"


class Outcome(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    WOULD_BLOCK = "would_block"


class Mode(StrEnum):
    AUDIT = "audit"
    ENFORCE = "enforce"


class Source(StrEnum):
    """The enforcement point that asked."""

    PROXY = "proxy"
    AUTHZ = "authz"
    ANTISPAM = "antispam"
    EVALUATE = "evaluate"
    POLICY_SERVER = "policy_server"


@dataclass(slots=True)
class RequestInfo:
    """One request (or homeserver callback) as the rules see it.

    ``origin`` is the remote server involved: the ``X-Matrix`` origin of a federation
    request, or the server of a remote invitee (antispam ``user_may_invite``). ``user`` is the
    user when known (antispam callbacks; recorded, not judged). ``user_agent``/``ip`` are
    ``None`` when the enforcement point cannot know them (most antispam callbacks); a request
    without a User-Agent header has ``user_agent=""``. ``public`` marks federation endpoints
    that are unsigned by design (server keys, discovery, version). ``malformed`` names a
    defect that makes the request unjudgeable (conflicting X-Matrix origins, dot segments):
    such a request is always refused. ``origin`` is in canonical spelling
    (``server_names``); ``origin_raw`` is the spelling the request used, only when it differs.
    ``actions`` are what the request does that no event
    type names (``actions.py``: key publishing, erasure, redact-on-ban). ``event_id`` is the
    event judged, for the events inside federation requests (recorded, not judged).
    """

    request_class: RequestClass
    method: str
    path: str
    endpoint: str = "unknown"
    origin: str | None = None
    user: str | None = None
    event_types: tuple[str, ...] = ()
    room: str | None = None
    actions: tuple[str, ...] = ()
    event_id: str | None = None
    user_agent: str | None = None
    ip: str | None = None
    public: bool = False
    malformed: str | None = None
    source: Source = Source.PROXY
    origin_raw: str | None = None
    # The instant (seconds since the epoch) expression rules judge at; None: now. Set by
    # the dry-run API to ask "what if it were then".
    at: float | None = None

    def describe(self) -> dict[str, object]:
        return {
            "class": self.request_class.value,
            "endpoint": self.endpoint,
            "method": self.method,
            "path": self.path,
            "origin": self.origin,
            "origin_raw": self.origin_raw,
            "user": self.user,
            "event_types": list(self.event_types),
            "room": self.room,
            "actions": list(self.actions),
            "event_id": self.event_id,
            "user_agent": self.user_agent,
            "ip": self.ip,
            "public": self.public,
            "malformed": self.malformed,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The pipeline's answer. Instances are built once per ruleset version and shared.

    ``reason`` is one sentence of printable ASCII without quotes or backslashes, so it can go
    into a header or a JSON string as is. ``status`` is the HTTP status to refuse with when
    ``allowed`` is false: 403, or 503 while the gateway fails closed.
    """

    outcome: Outcome
    rule_id: str | None
    mode: Mode | None
    reason: str
    version: int
    status: int = 200

    @property
    def allowed(self) -> bool:
        return self.outcome is not Outcome.BLOCK

    def to_json(self) -> dict[str, object]:
        return {
            "outcome": self.outcome.value,
            "allowed": self.allowed,
            "rule": self.rule_id,
            "mode": self.mode.value if self.mode is not None else None,
            "reason": self.reason,
            "version": self.version,
            "status": self.status,
        }


_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,:;_-+=()!?#@*/'[]{}<>|~%&$^"
)


def safe_text(text: str, limit: int = 200) -> str:
    """``text`` reduced to characters that are safe in a header and inside a JSON string."""
    return "".join(c if c in _SAFE else "?" for c in text[:limit])


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as an ISO 8601 UTC time (``2025-01-31T12:00:00.123Z``)."""
    if ms is None:
        return None
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
