"""Expression rules (kind ``expr``): CEL expressions over one documented request object.

``compile_expression(text)`` checks and compiles an expression once (when the rule is
written, and again, from a cache, whenever a ruleset is compiled); a syntax error, a type
error, an unknown ``request`` field or a non-boolean result is an ``InvalidParam`` naming
line and column. ``Program.run(data)`` evaluates it against ``request_data(req, now)``.

The runtime is Google's C++ CEL (``cel-expr-python``), chosen by measurement over the
pure-Python ``cel-python`` (see ``docs/rules.md``, "Expression rules"). CEL has no loops
and no side effects; the only iteration is its macros over the request's own short lists.
The runtime has no cost limit, so the bounds are ours: the text length, the nesting depth
(the runtime's recursion limit) and the size of the request object.

``Program.guards`` is what makes 100 expressions cheap: when an expression is a plain
conjunction (``a && b && ...``, no top-level ``||`` or ``?:``) and one conjunct is
``request.F == "x"`` or ``request.F in ["x", "y"]`` for a string field, the expression can
only be true for requests whose F is one of those values, so the compiled evaluator skips
it for every other request. This is sound because a false conjunct makes a CEL ``&&``
false whatever the other terms do (errors included).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import cel_expr_python.cel as cel

from ...errors import InvalidParam
from .model import RequestInfo

MAX_EXPRESSION = 2000
# Strings the request object carries, cut to this length (paths and user agents are
# attacker-chosen; the expression never sees more than this).
MAX_FIELD = 1024
MAX_EVENT_TYPES = 64

# The fields of ``request``: name → what it is (docs/rules.md lists the same).
FIELDS: dict[str, str] = {
    "class": "client or federation",
    "method": "HTTP method, upper case",
    "endpoint": "endpoint template, such as client.send or federation.send",
    "path": "request path",
    "origin": "remote server (federation origin), or null",
    "user": "Matrix user ID of the requester, or null",
    "user_server": "server part of user, or null",
    "event_types": "event types the request carries (list of strings)",
    "room": "room ID, or null",
    "ip": "client address, or null",
    "user_agent": "User-Agent, or null",
    "time": "the instant as ISO 8601 UTC text, to the second",
    "weekday": "ISO weekday in UTC: 1 = Monday ... 7 = Sunday",
    "hour": "hour of the day in UTC, 0-23",
}
# Fields a guard may index (strings compared for equality), most selective first: the
# compiled evaluator indexes an expression by its first guard.
_GUARD_FIELDS = ("user", "origin", "room", "user_server", "endpoint", "method", "class")

_T = cel.Type
_ENV = cel.NewEnv(variables={"request": _T.Map(_T.STRING, _T.DYN), "now": _T.TIMESTAMP})
_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*)")
_FIELD_REF = re.compile(r"\brequest\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_STRING = r"""(?:"[^"\\\n]*"|'[^'\\\n]*')"""
_EQ = re.compile(
    rf"^request\.([a-z_]+)\s*==\s*({_STRING})$|^({_STRING})\s*==\s*request\.([a-z_]+)$"
)
_IN = re.compile(rf"^request\.([a-z_]+)\s+in\s+\[\s*({_STRING}(?:\s*,\s*{_STRING})*)\s*,?\s*\]$")
_LITERAL = re.compile(_STRING)
# String literals (escapes included), blanked before looking for request fields in the text.
_ANY_STRING = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'""")


@dataclass(frozen=True, slots=True)
class Program:
    text: str
    compiled: Any
    # (field, allowed values): the expression is false unless request[field] is listed.
    guards: tuple[tuple[str, frozenset[str]], ...]

    def run(self, bound: Any) -> tuple[bool, object]:
        """(matched, what the expression returned) for ``bind(data)``; an error or a non-bool
        matches."""
        value = self.compiled.eval(bound)
        plain = value.value()
        if value.type() == _T.BOOL and isinstance(plain, bool):
            return plain, plain
        return True, {"error": str(plain)[:300]}


def _error(message: str) -> InvalidParam:
    first = message.strip().splitlines()[0] if message.strip() else "invalid expression"
    first = first.removeprefix("INVALID_ARGUMENT: ").removeprefix("ERROR: ")
    found = _POSITION.search(first)
    if found:
        line, column, text = found.groups()
        return InvalidParam(f"params.expression: line {line}, column {column}: {text[:200]}")
    return InvalidParam(f"params.expression: {first[:200]}")


def _split_top(text: str) -> list[str] | None:
    """The top-level ``&&`` terms of ``text``, or None when it is not a plain conjunction."""
    terms: list[str] = []
    depth = 0
    start = 0
    i = 0
    quote = ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                return None
            if c == quote:
                quote = ""
        elif c in "\"'":
            if text[i : i + 3] in ('"""', "'''"):
                return None
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith("&&", i):
            terms.append(text[start:i].strip())
            start = i + 2
            i += 1
        elif depth == 0 and (text.startswith("||", i) or c == "?"):
            return None
        i += 1
    if quote or depth:
        return None
    terms.append(text[start:].strip())
    return terms


def _strip_parens(term: str) -> str:
    while (
        term.startswith("(")
        and term.endswith(")")
        and _split_top(term[1:-1]) == [term[1:-1].strip()]
    ):
        term = term[1:-1].strip()
    return term


def _guards(text: str) -> tuple[tuple[str, frozenset[str]], ...]:
    terms = _split_top(text)
    if terms is None:
        return ()
    guards: dict[str, frozenset[str]] = {}
    for raw in terms:
        term = _strip_parens(raw)
        found = _EQ.match(term)
        if found:
            name = found.group(1) or found.group(4)
            values = frozenset({(found.group(2) or found.group(3))[1:-1]})
        else:
            found = _IN.match(term)
            if not found:
                continue
            name = found.group(1)
            values = frozenset(lit[1:-1] for lit in _LITERAL.findall(found.group(2)))
        if name in _GUARD_FIELDS:
            # Two guards on one field: both must hold, so only the common values can match.
            guards[name] = guards[name] & values if name in guards else values
    return tuple(sorted(guards.items(), key=lambda item: _GUARD_FIELDS.index(item[0])))


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> Program:
    """The compiled expression; raises InvalidParam (with line and column) when it is not one."""
    if not text.strip():
        raise InvalidParam("params.expression must not be empty")
    if len(text) > MAX_EXPRESSION:
        raise InvalidParam(f"params.expression may be at most {MAX_EXPRESSION} characters")
    # Same length, so positions still point into the text as written.
    code = _ANY_STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', text)
    for found in _FIELD_REF.finditer(code):
        if found.group(1) not in FIELDS:
            line = text.count("\n", 0, found.start()) + 1
            column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
            raise InvalidParam(
                f"params.expression: line {line}, column {column}: request has no field"
                f" {found.group(1)!r} (fields: {', '.join(FIELDS)})"
            )
    try:
        compiled = _ENV.compile(text)
    except Exception as e:  # the runtime raises RuntimeError with a positioned message
        raise _error(str(e)) from None
    returns = compiled.return_type()
    if returns != _T.BOOL and returns != _T.DYN:
        raise InvalidParam(f"params.expression must be true or false, not {returns.name().lower()}")
    return Program(text, compiled, _guards(text))


def compile_any(texts: list[str]) -> Program | None:
    """One program true when any of the (already checked) expressions is: ``(a) || (b)``;
    None if the runtime will not take them as one (they are then asked one by one)."""
    try:
        program = _ENV.compile(" || ".join(f"({text})" for text in texts))
    except Exception:  # a shortcut only: never a reason to fail the ruleset
        return None
    return Program("", program, ())


def _cut(value: str | None) -> str | None:
    return value[:MAX_FIELD] if value is not None else None


@lru_cache(maxsize=4)
def _instant(second: int) -> tuple[datetime, str, int, int]:
    # The time fields change once a second: computed once per second, not per request.
    instant = datetime.fromtimestamp(second, UTC)
    text = instant.isoformat().replace("+00:00", "Z")
    return instant, text, instant.isoweekday(), instant.hour


def request_data(req: RequestInfo, now: float) -> dict[str, Any]:
    """What an expression sees: ``request`` (see ``FIELDS``) and ``now`` (a timestamp, to
    the second)."""
    instant, text, weekday, hour = _instant(int(now))
    user = req.user
    user_server = user.split(":", 1)[1] if user is not None and ":" in user else None
    return {
        "request": {
            "class": req.request_class.value,
            "method": req.method,
            "endpoint": req.endpoint,
            "path": _cut(req.path),
            "origin": req.origin,
            "user": _cut(user),
            "user_server": _cut(user_server),
            "event_types": [t[:MAX_FIELD] for t in req.event_types[:MAX_EVENT_TYPES]],
            "room": _cut(req.room),
            "ip": req.ip,
            "user_agent": _cut(req.user_agent),
            "time": text,
            "weekday": weekday,
            "hour": hour,
        },
        "now": instant,
    }


def bind(data: Mapping[str, Any]) -> Any:
    """``data`` converted for the runtime once, for every expression judging one request."""
    return _ENV.Activation(data=data)


def visible(data: Mapping[str, Any]) -> dict[str, Any]:
    """``request_data`` as JSON for the dry-run trace."""
    return {"request": dict(data["request"]), "now": data["request"]["time"]}


def guard_passes(program: Program, data: Mapping[str, Any]) -> bool:
    request = data["request"]
    return all(request[name] in values for name, values in program.guards)
