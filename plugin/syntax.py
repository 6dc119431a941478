"""Typed command arguments: ``--flags`` in any order, quoted text, checked values.

maubot answers an argument error itself, before any handler (and so before the gate)
runs. ``@arguments(Kind)`` parses with ``Kind.parse`` and hands a :class:`BadSyntax`
to the gated handler instead, so even a malformed command is gated and audited.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, Self, TypeVar

from attrs import frozen
from maubot.handlers import command
from maubot.handlers.command import ArgumentSyntaxError, CommandHandlerDecorator

T = TypeVar("T")

USER_ID = re.compile(r"^@[!-9;-~]{1,255}:[A-Za-z0-9.\-]+(:\d{1,5})?$")
TOKEN_ID = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")
_DASHES = ("\u2014", "\u2013")  # phones turn "--" into an em or en dash


@frozen
class BadSyntax:
    message: str
    usage: str
    raw: str


class ParsedArgs(Protocol):
    USAGE: ClassVar[str]

    @classmethod
    def parse(cls, raw: str) -> Self: ...


def arguments(kind: type[ParsedArgs]) -> CommandHandlerDecorator:
    """The one maubot argument of a gated command, named ``args``."""

    def parse(raw: str) -> tuple[str, Any]:
        try:
            return "", kind.parse(raw)
        except ArgumentSyntaxError as e:
            return "", BadSyntax(e.message, kind.USAGE, raw)

    return command.argument("args", kind.USAGE, pass_raw=True, required=False, parser=parse)


def bad(message: str) -> ArgumentSyntaxError:
    return ArgumentSyntaxError(message, show_usage=False)


class Words:
    """The words of a command line, consumed option by option."""

    def __init__(self, raw: str) -> None:
        lexer = shlex.shlex(raw, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = ""
        lexer.quotes = '"'
        try:
            words = list(lexer)
        except ValueError:
            raise bad("A quotation mark is not closed.") from None
        self.words = [self._dashes(word) for word in words]

    @staticmethod
    def _dashes(word: str) -> str:
        for dash in _DASHES:
            if word.startswith(dash):
                return "--" + word[len(dash) :]
        return word

    def _find(self, name: str) -> tuple[int, str | None] | None:
        for index, word in enumerate(self.words):
            if word == name:
                return index, None
            if word.startswith(name + "="):
                return index, word[len(name) + 1 :]
        return None

    def flag(self, name: str) -> bool:
        found = False
        while (hit := self._find(name)) is not None:
            index, inline = hit
            if inline is not None:
                raise bad(f"{name} takes no value.")
            del self.words[index]
            found = True
        return found

    def option(self, name: str, convert: Callable[[str], T]) -> T | None:
        hit = self._find(name)
        if hit is None:
            return None
        index, value = hit
        del self.words[index]
        if value is None:
            if index >= len(self.words) or self.words[index].startswith("--"):
                raise bad(f"{name} needs a value.")
            value = self.words.pop(index)
        if self._find(name) is not None:
            raise bad(f"{name} is given twice.")
        return convert(value)

    def options(self, name: str, convert: Callable[[str], T]) -> list[T]:
        """Every value of an option that may be given more than once, in order."""
        values: list[T] = []
        while (hit := self._find(name)) is not None:
            index, value = hit
            del self.words[index]
            if value is None:
                if index >= len(self.words) or self.words[index].startswith("--"):
                    raise bad(f"{name} needs a value.")
                value = self.words.pop(index)
            values.append(convert(value))
        return values

    def text(self, name: str) -> str | None:
        """Free text: every word up to the next ``--option``."""
        hit = self._find(name)
        if hit is None:
            return None
        index, value = hit
        del self.words[index]
        parts = [value] if value is not None else []
        while index < len(self.words) and not self.words[index].startswith("--"):
            parts.append(self.words.pop(index))
        if not parts:
            raise bad(f"{name} needs a value.")
        return " ".join(parts)

    def positional(self, label: str, convert: Callable[[str], T]) -> T:
        for index, word in enumerate(self.words):
            if not word.startswith("--"):
                return convert(self.words.pop(index))
        raise bad(f"{label} is missing.")

    def finish(self) -> None:
        if not self.words:
            return
        word = self.words[0]
        if word.startswith("--"):
            raise bad(f"Unknown option {word}.")
        raise bad(f"Unexpected {word!r}.")


def whole_number(name: str, low: int, high: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise bad(f"{name} must be a whole number from {low} to {high}.")
        return int(value)

    return convert


def user_id(label: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if not USER_ID.match(value):
            raise bad(f"{label} must be a Matrix user ID such as @alice:corp.example.")
        return value

    return convert


ROOM = re.compile(r"^(![\x21-\x7e]{1,255}|#[^\s:]{1,200}:[A-Za-z0-9.\-]+(:\d{1,5})?)$")


def room(label: str) -> Callable[[str], str]:
    """A room ID (``!id:server``) or alias (``#name:server``)."""

    def convert(value: str) -> str:
        if not ROOM.match(value):
            raise bad(f"{label} must be a room ID or alias such as #project:corp.example.")
        return value

    return convert


PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def project_name(value: str) -> str:
    if not PROJECT.match(value):
        raise bad("--project must be a name of letters, digits, '.', '_' or '-' (at most 64).")
    return value


def token_id(value: str) -> str:
    if not TOKEN_ID.match(value):
        raise bad("A token id is letters, digits, '-', '_' or '.' (at most 64).")
    return value
