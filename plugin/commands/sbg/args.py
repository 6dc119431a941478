"""The grammar of ``!sbg``: converters for its words and one ``*Args`` class per command.

Each ``parse`` raises ``bad(...)`` (a usage line in chat) and builds only valid arguments;
rule parameters are checked here as far as their shape, the gateway checks the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

from attrs import frozen

from ...durations import parse_duration
from ...syntax import Words, bad, user_id, whole_number

KIND_USAGE = {
    "server_allow": "server_allow <server> [<server> ...]",
    "server_block": "server_block <server> [<server> ...]",
    "event_type_block": "event_type_block <type> [<type> ...] [--scope client|federation|both]",
    "partner_scope": "partner_scope <server> [...] [--rooms !a:x,!b:x] [--types t1,t2]",
    "client_allow": 'client_allow [--user-agent "REGEX"] ... [--network CIDR] ...',
    "expr": "expr '<CEL expression>' (docs/rules.md, section 11)",
}
SCOPES = ("client", "federation", "both")
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]{1,255})(:\d{1,5})?$")
PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]{0,63}$")
METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE", "PATCH")
MAX_PRIORITY = 1_000_000
MAX_EXPRESSION = 2000
# ISO 8601 as the gateway takes it: a date, or a date and time (UTC unless a zone is given).
INSTANT = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:\d{2})?$"
)
# Quotes an expression may be wrapped in: plain, as clients "smarten" them, or code spans.
_QUOTES = {"'": "'", "\u2018": "\u2019", "`": "`"}


def rule_id(value: str) -> str:
    if not RULE_ID.match(value):
        raise bad("A rule id is letters, digits, '.', '_' or '-' (at most 64).")
    return value


def listed(value: str) -> list[str]:
    """``a,b c`` style lists: commas separate, empty items are dropped."""
    return [item for item in (part.strip() for part in value.split(",")) if item]


def remaining(words: Words) -> list[str]:
    """Every word left that is not an ``--option``, commas splitting further."""
    found = [word for word in words.words if not word.startswith("--")]
    words.words = [word for word in words.words if word.startswith("--")]
    return [item for word in found for item in listed(word)]


def repeated(words: Words, name: str) -> list[str]:
    """All values of an option that may be given several times."""
    values: list[str] = []
    while True:
        index = next(
            (
                i
                for i, word in enumerate(words.words)
                if word == name or word.startswith(name + "=")
            ),
            None,
        )
        if index is None:
            return values
        word = words.words.pop(index)
        if word != name:
            values.append(word[len(name) + 1 :])
        elif index < len(words.words) and not words.words[index].startswith("--"):
            values.append(words.words.pop(index))
        else:
            raise bad(f"{name} needs a value.")


def choice(name: str, options: Sequence[str]) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in options:
            raise bad(f"{name} must be one of {', '.join(options)}.")
        return value

    return convert


def server_name(label: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if not SERVER_NAME.match(value):
            raise bad(f"{label} must be a server name such as partner.example.org.")
        return value.lower()

    return convert


def duration_ago(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError:
        raise bad("--since must be a duration such as 15m, 1h or 7d.") from None


def http_method(value: str) -> str:
    if value.upper() not in METHODS:
        raise bad(f"The HTTP method must be one of {', '.join(METHODS)}.")
    return value.upper()


def _servers(kind: str, words: Words) -> dict[str, Any]:
    servers = remaining(words)
    if not servers:
        raise bad(f"{kind} needs at least one server name or glob, such as partner.example.org.")
    return {"servers": servers}


def _event_type_block(kind: str, words: Words) -> dict[str, Any]:
    scope = words.option("--scope", choice("--scope", SCOPES))
    types = remaining(words)
    if not types:
        raise bad("event_type_block needs at least one event type, such as m.room.encryption.")
    return {"event_types": types} | ({"scope": scope} if scope else {})


def _partner_scope(kind: str, words: Words) -> dict[str, Any]:
    rooms = words.option("--rooms", listed)
    types = words.option("--types", listed)
    params = _servers(kind, words)
    if not rooms and not types:
        raise bad("partner_scope needs --rooms and/or --types the servers may reach.")
    return params | ({"rooms": rooms} if rooms else {}) | ({"event_types": types} if types else {})


def _client_allow(kind: str, words: Words) -> dict[str, Any]:
    agents = repeated(words, "--user-agent")
    networks = [net for value in repeated(words, "--network") for net in listed(value)]
    if not agents and not networks:
        raise bad("client_allow needs --user-agent REGEX and/or --network CIDR.")
    params: dict[str, Any] = {"user_agents": agents} if agents else {}
    return params | ({"networks": networks} if networks else {})


PARAMS: dict[str, Callable[[str, Words], dict[str, Any]]] = {
    "server_allow": _servers,
    "server_block": _servers,
    "event_type_block": _event_type_block,
    "partner_scope": _partner_scope,
    "client_allow": _client_allow,
}


def instant(name: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if not INSTANT.match(value):
            raise bad(
                f"{name} must be a date such as 2027-03-31 or a time such as 2027-03-31T18:00Z."
            )
        return value

    return convert


def split_expression(rest: str) -> tuple[str, str]:
    """(the CEL expression, the options after it) of what follows ``expr``.

    The expression is quoted (``'...'``, smart quotes, or a code span), since it holds
    double quotes and spaces of its own; unquoted, it runs up to the first ``--option``.
    """
    text = rest.strip()
    close = _QUOTES.get(text[:1])
    if close is not None:
        end = text.rfind(close)
        if end == 0:
            raise bad("The expression's closing quote is missing.")
        expression, options = text[1:end], text[end + 1 :]
    else:
        found = re.search(r"(^|\s)(--|\u2014)[a-z]", text)
        cut = found.start() if found else len(text)
        expression, options = text[:cut], text[cut:]
    expression = expression.strip()
    if not expression:
        raise bad(f"expr needs a CEL expression: {KIND_USAGE['expr']}.")
    if len(expression) > MAX_EXPRESSION:
        raise bad(f"The expression may be at most {MAX_EXPRESSION} characters.")
    return expression, options


@frozen
class RuleAddArgs:
    USAGE: ClassVar[str] = (
        "<kind> <params...> [--audit] [--priority N] [--note TEXT] [--from DATE] [--until DATE]"
    )
    kind: str
    params: dict[str, Any]
    audit: bool = False
    priority: int | None = None
    note: str | None = None
    yes: bool = False
    not_before: str | None = None
    expires_at: str | None = None

    @classmethod
    def parse(cls, raw: str) -> Self:
        expression: str | None = None
        head, _, rest = raw.strip().partition(" ")
        if head == "expr":
            expression, options = split_expression(rest)
            raw = f"expr {options}"
        words = Words(raw)
        if not words.words or words.words[0].startswith("--"):
            raise bad(f"The rule kind is missing; it is one of {', '.join(KIND_USAGE)}.")
        kind = words.words.pop(0)
        if kind not in PARAMS and kind != "expr":
            raise bad(f"Unknown rule kind {kind!r}; it is one of {', '.join(KIND_USAGE)}.")
        audit = words.flag("--audit")
        yes = words.flag("--yes")
        priority = words.option("--priority", whole_number("--priority", 0, MAX_PRIORITY))
        not_before = words.option("--from", instant("--from"))
        expires_at = words.option("--until", instant("--until"))
        note = words.text("--note")
        if note is not None and len(note) > 500:
            raise bad("--note must be at most 500 characters.")
        if expression is not None:
            params: dict[str, Any] = {"expression": expression}
        else:
            params = PARAMS[kind](kind, words)
        words.finish()
        return cls(kind, params, audit, priority, note, yes, not_before, expires_at)

    def spec(self) -> dict[str, Any]:
        """The body of ``POST /v1/rules``."""
        body: dict[str, Any] = {"kind": self.kind, "params": self.params}
        if self.audit:
            body["mode"] = "audit"
        if self.priority is not None:
            body["priority"] = self.priority
        if self.note:
            body["note"] = self.note
        if self.not_before:
            body["not_before"] = self.not_before
        if self.expires_at:
            body["expires_at"] = self.expires_at
        return body


@frozen
class RuleIdArgs:
    USAGE: ClassVar[str] = "<id> [--yes]"
    rule_id: str
    yes: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        yes = words.flag("--yes")
        result = cls(words.positional("The rule id", rule_id), yes)
        words.finish()
        return result


@frozen
class HistoryArgs:
    USAGE: ClassVar[str] = "[--limit N]"
    limit: int = 10

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        limit = words.option("--limit", whole_number("--limit", 1, 50))
        words.finish()
        return cls(limit or 10)


@frozen
class PresetArgs:
    USAGE: ClassVar[str] = "compliance-ledger"
    name: str
    # Accepted like on every other write; a preset never asks first.
    yes: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        yes = words.flag("--yes")

        def preset(value: str) -> str:
            if not PRESET_NAME.match(value):
                raise bad("A preset name is lower-case letters, digits and '-'.")
            return value

        result = cls(words.positional("The preset name", preset), yes)
        words.finish()
        return result


@frozen
class DryRunFederationArgs:
    USAGE: ClassVar[str] = "<origin> [--room R] [--type T]"
    origin: str
    room: str | None = None
    event_type: str | None = None

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        room = words.option("--room", str)
        event_type = words.option("--type", str)
        origin = words.positional("The origin server", server_name("The origin"))
        words.finish()
        return cls(origin, room, event_type)


@frozen
class DryRunClientArgs:
    USAGE: ClassVar[str] = "<@user|--user-agent UA> <METHOD> <path> [--ip ADDRESS]"
    method: str
    path: str
    user: str | None = None
    user_agent: str | None = None
    ip: str | None = None

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        user_agent = words.option("--user-agent", str)
        ip = words.option("--ip", str)
        user = None
        if words.words and words.words[0].startswith("@"):
            user = user_id("The user")(words.words.pop(0))
        if user is None and user_agent is None:
            raise bad("Give the user (@alice:corp.example) or --user-agent.")
        method = words.positional("The HTTP method", http_method)
        path = words.positional("The path", str)
        if not path.startswith("/"):
            raise bad("The path must start with /, such as /_matrix/client/v3/createRoom.")
        words.finish()
        return cls(method, path, user, user_agent, ip)


@frozen
class DecisionsArgs:
    USAGE: ClassVar[str] = "[--blocked|--allows] [--since 1h] [--origin X] [--limit N]"
    blocked: bool = False
    since: int | None = None
    origin: str | None = None
    limit: int = 20
    # The per-minute allow counts rather than full records.
    allows: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        blocked = words.flag("--blocked")
        allows = words.flag("--allows")
        seconds = words.option("--since", duration_ago)
        origin = words.option("--origin", server_name("--origin"))
        limit = words.option("--limit", whole_number("--limit", 1, 100))
        words.finish()
        if blocked and allows:
            raise bad("Give --blocked or --allows, not both.")
        return cls(blocked, seconds, origin, limit or 20, allows)


# Room IDs of room version 12 have no server part (!abc); aliases always do (#a:server).
ROOM_REF = re.compile(r"^(![!-~]{1,254}|#[!-~]{1,254}:[A-Za-z0-9.\-]+(:\d{1,5})?)$")


def room_ref(value: str) -> str:
    if not ROOM_REF.match(value):
        raise bad(
            "The room must be a room ID (!abc:corp.example) or an alias (#ledger:corp.example)."
        )
    return value


@frozen
class RoomProtectArgs:
    USAGE: ClassVar[str] = "<room> [--ledger] [--acl] [--policy-server]"
    room: str
    ledger: bool = False
    acl: bool = False
    policy_server: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        ledger, acl = words.flag("--ledger"), words.flag("--acl")
        policy_server = words.flag("--policy-server")
        result = cls(words.positional("The room", room_ref), ledger, acl, policy_server)
        words.finish()
        return result

    def protections(self) -> dict[str, bool]:
        """The body for the gateway: empty (all, as far as configured) when no flag is given."""
        if not (self.ledger or self.acl or self.policy_server):
            return {}
        return {"ledger": self.ledger, "acl": self.acl, "policy_server": self.policy_server}


@frozen
class RoomArgs:
    USAGE: ClassVar[str] = "<room>"
    room: str

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        result = cls(words.positional("The room", room_ref))
        words.finish()
        return result
