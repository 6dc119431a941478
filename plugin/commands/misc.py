"""``!whoami`` and ``!help``: what the bot knows about the sender, and what they may run."""

from __future__ import annotations

from collections.abc import Sequence

from maubot import MessageEvent
from maubot.handlers import command

from .. import fmt
from ..gate import Context, gated
from ..identity import AccountState
from ..services import Services
from ..syntax import arguments
from .base import CommandFamily, NoArgs

_SOURCES = {
    "synapse_admin": "checked live through the homeserver's admin API",
    "membership": "checked live as membership of this room",
}


class MiscCommands(CommandFamily):
    def __init__(self, services: Services, families: Sequence[CommandFamily]) -> None:
        super().__init__(services)
        self.families = families

    @command.new("whoami", help="your roles and account status as the bot sees them")
    @arguments(NoArgs)
    @gated("whoami")
    async def whoami(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
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

    @command.new("help", help="the commands you may use here")
    @arguments(NoArgs)
    @gated("help")
    async def help(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        families = [family for family in self.families if family is not self]
        lines = [line for family in (*families, self) for line in family.help_lines(ctx.roles)]
        if not ctx.roles:
            lines.append("* You hold no role here, so that is all; ask an administrator.")
        await ctx.reply("Commands you may use:\n\n" + "\n".join(lines))
