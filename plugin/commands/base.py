"""What every command family has: the shared services, the gate, and help lines."""

from __future__ import annotations

from typing import ClassVar, Self

from attrs import frozen
from maubot.handlers.command import CommandHandler

from .. import fmt
from ..gate import Refused, Role, command_spec
from ..services import Services
from ..syntax import Words


@frozen
class Subcommand:
    """What follows a family's name when no subcommand matched."""

    USAGE: ClassVar[str] = "<subcommand> [...]"
    word: str

    @classmethod
    def parse(cls, raw: str) -> Self:
        return cls(raw.split(maxsplit=1)[0] if raw.strip() else "")


@frozen
class NoArgs:
    USAGE: ClassVar[str] = ""

    @classmethod
    def parse(cls, raw: str) -> Self:
        Words(raw).finish()
        return cls()


class CommandFamily:
    """Base of the handler classes in this package (``self.gate`` is what ``@gated`` uses)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.gate = services.gate
        self.config = services.config
        self.log = services.log.getChild(type(self).__name__)

    async def close(self) -> None:
        """Stop background work the family started (the plugin stops)."""

    def root_commands(self) -> list[CommandHandler]:
        found: list[CommandHandler] = []
        for name in dir(type(self)):
            handler = getattr(self, name, None)
            if isinstance(handler, CommandHandler) and handler.__mb_parent__ is None:
                found.append(handler)
        return found

    def help_lines(self, roles: frozenset[Role]) -> list[str]:
        lines: list[str] = []
        for root in self.root_commands():
            lines.extend(usage_lines(root, roles))
        return lines

    async def list_subcommands(
        self, group: CommandHandler, roles: frozenset[Role], word: str
    ) -> str:
        """A group's subcommands; refuses (and lists them) for an unknown ``word``."""
        lines = "\n".join(usage_lines(group, roles, subcommands_only=True))
        name = command_path(group)
        if word:
            raise Refused(
                f"Unknown subcommand {fmt.code(word)}. `{name}` knows:\n\n{lines}",
                f"unknown subcommand {word[:40]}",
            )
        return f"`{name}` knows:\n\n{lines}"


def command_path(handler: CommandHandler) -> str:
    """The full command, ``!sbg rule list`` (maubot's prefix names only the parent)."""
    names: list[str] = []
    node: CommandHandler | None = handler
    while node is not None:
        names.append(node.__mb_get_name__(handler.__bound_instance__))
        node = node.__mb_parent__
    return "!" + " ".join(reversed(names))


def usage_lines(
    group: CommandHandler, roles: frozenset[Role], *, subcommands_only: bool = False
) -> list[str]:
    """One markdown line per command under ``group`` that the holder of ``roles`` may use.

    Nested groups are walked too; a group the holder may not use hides its subcommands.
    """
    lines: list[str] = []
    spec = command_spec(group.__mb_func__)
    if not subcommands_only and spec is not None and spec.listed and spec.allows(roles):
        args = group.__mb_arguments__
        # maubot shows an argument's name when its label is empty (commands without options).
        label = args[0].label if args and args[0].label != args[0].name else ""
        usage = f"{command_path(group)} {label}".strip()
        lines.append(f"* {fmt.code(usage)} — {group.__mb_help__ or ''}")
    for handler in group.__mb_subcommands__:
        sub = command_spec(handler.__mb_func__)
        if sub is not None and sub.allows(roles):
            lines.extend(usage_lines(handler, roles))
    return lines
