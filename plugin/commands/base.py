"""What every command family has: the shared services, the gate, its root command, help lines.

A family's root (``!token``, ``!sbg`` ...) is declared with :func:`family_root`: it answers
under its own name, or -- once ``commands.prefix`` is set -- only after the prefix, where
Bastion's root command hands it the rest of the line (``!bastion token generate``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

from attrs import frozen
from maubot.handlers import command
from maubot.handlers.command import CommandHandler, CommandHandlerDecorator

from .. import fmt
from ..config import Config
from ..gate import CommandSpec, Refused, Role, command_spec
from ..services import Services
from ..spelling import spell
from ..syntax import Words

Spell = Callable[[str], str]


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


def family_root(name: str, *, help: str) -> CommandHandlerDecorator:
    """A family's root command ``!name``, not answered on its own once a prefix is set."""

    def matches(family: Any, word: str) -> bool:
        config: Config = family.config
        return word == name and not config.command_prefix

    return command.new(
        name, help=help, aliases=matches, require_subcommand=False, arg_fallthrough=False
    )


class CommandFamily:
    """Base of the handler classes in this package (``self.gate`` is what ``@gated`` uses)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.gate = services.gate
        self.config = services.config
        self.log = services.log.getChild(type(self).__name__)

    def spell(self, name: str) -> str:
        """The command ``name`` (canonical) as it is typed under the current config."""
        return spell(self.config, name)

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
            lines.extend(usage_lines(root, roles, self.spell))
        return lines

    async def list_subcommands(
        self,
        group: CommandHandler,
        roles: frozenset[Role],
        word: str,
        extra: Sequence[str] = (),
        *,
        named: str | None = None,
    ) -> str:
        """A group's subcommands (and ``extra`` lines); refuses for an unknown ``word``.

        ``named`` names the group when its handler is not itself ``@gated``.
        """
        found = [*usage_lines(group, roles, self.spell, subcommands_only=True), *extra]
        lines = "\n".join(found)
        name = self.spell(named or spec_of(group).name)
        if word:
            raise Refused(
                f"Unknown subcommand {fmt.code(word)}. `{name}` knows:\n\n{lines}",
                f"unknown subcommand {word[:40]}",
            )
        return f"`{name}` knows:\n\n{lines}"


def spec_of(handler: CommandHandler) -> CommandSpec:
    spec = command_spec(handler.__mb_func__)
    if spec is None:
        raise TypeError(f"{handler.__mb_func__!r} is not @gated")
    return spec


def usage_lines(
    group: CommandHandler, roles: frozenset[Role], spell: Spell, *, subcommands_only: bool = False
) -> list[str]:
    """One markdown line per command under ``group`` that the holder of ``roles`` may use.

    Nested groups are walked too; a group the holder may not use hides its subcommands.
    Commands are shown as ``spell`` types them (the prefix, if one is set).
    """
    lines: list[str] = []
    spec = command_spec(group.__mb_func__)
    if not subcommands_only and spec is not None and spec.listed and spec.allows(roles):
        args = group.__mb_arguments__
        # maubot shows an argument's name when its label is empty (commands without options).
        label = args[0].label if args and args[0].label != args[0].name else ""
        usage = f"{spell(spec.name)} {label}".strip()
        lines.append(f"* {fmt.code(usage)} — {group.__mb_help__ or ''}")
    for handler in group.__mb_subcommands__:
        sub = command_spec(handler.__mb_func__)
        if sub is not None and sub.allows(roles):
            lines.extend(usage_lines(handler, roles, spell))
    return lines
