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
        self, root: CommandHandler, roles: frozenset[Role], word: str
    ) -> str:
        """The family's subcommands; refuses (and lists them) for an unknown ``word``."""
        lines = "\n".join(usage_lines(root, roles, subcommands_only=True))
        if word:
            raise Refused(
                f"Unknown subcommand {fmt.code(word)}. `!{root.__mb_name__}` knows:\n\n{lines}",
                f"unknown subcommand {word[:40]}",
            )
        return f"`!{root.__mb_name__}` knows:\n\n{lines}"


def usage_lines(
    root: CommandHandler, roles: frozenset[Role], *, subcommands_only: bool = False
) -> list[str]:
    """One markdown line per command the holder of ``roles`` may use."""
    handlers = [*([] if subcommands_only else [root]), *root.__mb_subcommands__]
    lines: list[str] = []
    for handler in handlers:
        spec = command_spec(handler.__mb_func__)
        if spec is None or not spec.listed or not spec.allows(roles):
            continue
        args = handler.__mb_arguments__
        # maubot shows an argument's name when its label is empty (commands without options).
        label = args[0].label if args and args[0].label != args[0].name else ""
        usage = f"{handler.__mb_prefix__} {label}".strip()
        lines.append(f"* {fmt.code(usage)} — {handler.__mb_help__ or ''}")
    return lines
