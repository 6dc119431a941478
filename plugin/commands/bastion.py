"""``!bastion``: Bastion's own root -- ``help``, ``whoami``, and the families under a prefix.

``!bastion help`` and ``!bastion whoami`` are Bastion's own words (other bots in a room
answer ``!help`` too). Bare ``!help`` / ``!whoami`` are aliases, answered only with
``commands.bare_aliases``. With ``commands.prefix`` set the root is typed as the prefix
and hands ``!<prefix> token ...`` to the family, whose own name no longer answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from maubot import MessageEvent
from maubot.handlers import command
from maubot.handlers.command import CommandHandler

from .. import fmt
from ..config import Config
from ..gate import Context, gated
from ..identity import AccountState
from ..services import Services
from ..spelling import root_word
from ..syntax import arguments
from .base import CommandFamily, NoArgs, Subcommand, spec_of

_SOURCES = {
    "synapse_admin": "checked live through the homeserver's admin API",
    "membership": "checked live as membership of this room",
}
WHOAMI_HELP = "your roles and account status as the bot sees them"
HELP_HELP = "the commands you may use here"


def _root_name(family: Any) -> str:
    config: Config = family.config
    return root_word(config)


def _bare(word: str) -> Any:
    """Matches ``!word`` only while ``commands.bare_aliases`` is on."""

    def matches(family: Any, typed: str) -> bool:
        config: Config = family.config
        return typed == word and config.bare_aliases

    return matches


class BastionCommands(CommandFamily):
    def __init__(self, services: Services, families: Sequence[CommandFamily]) -> None:
        super().__init__(services)
        self.families = families

    def _family_roots(self) -> dict[str, CommandHandler]:
        return {
            root.__mb_name__: root
            for family in self.families
            if family is not self
            for root in family.root_commands()
        }

    @command.new(_root_name, help="Bastion itself", require_subcommand=False, arg_fallthrough=False)
    @command.argument("rest", pass_raw=True, required=False)
    async def bastion(self, evt: MessageEvent, rest: str = "") -> None:
        # Not gated itself: the family (gated) or the usage below (gated) takes the line.
        word, _, tail = (rest or "").strip().partition(" ")
        if self.config.command_prefix:
            family = self._family_roots().get(word)
            if family is not None:
                await family(evt, remaining_val=tail)
                return
        await self._usage(evt, Subcommand.parse(rest or ""))

    @gated("bastion", listed=False)
    async def _usage(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        extra: list[str] = []
        if self.config.command_prefix:
            for name, root in sorted(self._family_roots().items()):
                spec = spec_of(root)
                if spec.allows(ctx.roles):
                    usage = f"{self.spell(name)} <subcommand> [...]"
                    extra.append(f"* {fmt.code(usage)} — {root.__mb_help__ or ''}")
        await ctx.reply(
            await self.list_subcommands(self.bastion, ctx.roles, args.word, extra, named="bastion")
        )

    @bastion.subcommand("help", help=HELP_HELP)
    @arguments(NoArgs)
    @gated("bastion help")
    async def help(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        await self._help(ctx)

    @bastion.subcommand("whoami", help=WHOAMI_HELP)
    @arguments(NoArgs)
    @gated("bastion whoami")
    async def whoami(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        await self._whoami(ctx)

    @command.new("help", aliases=_bare("help"), help=HELP_HELP)
    @arguments(NoArgs)
    @gated("bastion help", listed=False)
    async def bare_help(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        await self._help(ctx)

    @command.new("whoami", aliases=_bare("whoami"), help=WHOAMI_HELP)
    @arguments(NoArgs)
    @gated("bastion whoami", listed=False)
    async def bare_whoami(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        await self._whoami(ctx)

    async def _whoami(self, ctx: Context) -> None:
        status = await self.services.identity.status(ctx.sender, [ctx.room_id])
        roles = ", ".join(sorted(role.value for role in ctx.roles)) or "none"
        if status.state is AccountState.UNCONFIRMED:
            account = "could not be confirmed right now, so privileged commands are refused"
        else:
            account = f"{status.state.value} ({_SOURCES.get(status.source, status.source)})"
        ctx.note(f"roles {roles}; account {status.state.value}")
        await ctx.reply(
            f"You are {fmt.user(ctx.sender)}.  \nRoles: {roles}.  \nAccount: {account}."
        )

    async def _help(self, ctx: Context) -> None:
        families = [family for family in self.families if family is not self]
        lines = [line for family in (*families, self) for line in family.help_lines(ctx.roles)]
        if not ctx.roles:
            lines.append("* You hold no role here, so that is all; ask an administrator.")
        await ctx.reply("Commands you may use:\n\n" + "\n".join(lines))
