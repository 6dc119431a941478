"""``!guest``: the guest accounts on the DMZ homeserver, listed and deactivated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from attrs import frozen
from maubot import MessageEvent

from .. import fmt
from ..dmz import DmzError, Guest
from ..durations import format_time, parse_duration
from ..gate import Context, Failed, Role, gated
from ..services import Services
from ..syntax import Words, arguments, bad, user_id
from .base import CommandFamily, Subcommand, family_root, spec_of

MAX_LISTED = 30


@frozen
class GuestListArgs:
    USAGE: ClassVar[str] = "[--sponsor @user] [--all]"
    sponsor: str | None = None
    all: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        sponsor = words.option("--sponsor", user_id("--sponsor"))
        everyone = words.flag("--all")
        words.finish()
        return cls(sponsor, everyone)


@frozen
class DeactivateArgs:
    USAGE: ClassVar[str] = "<@guest:dmz> [--yes]"
    guest: str
    yes: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        yes = words.flag("--yes")
        guest = words.positional("The guest's user ID", user_id("The guest"))
        words.finish()
        return cls(guest, yes)


@frozen
class ExtendArgs:
    USAGE: ClassVar[str] = "<@guest:dmz> <DURATION>"
    guest: str
    seconds: int

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        guest = words.positional("The guest's user ID", user_id("The guest"))
        seconds = words.positional("How much longer (e.g. 30d)", extension)
        words.finish()
        return cls(guest, seconds)


def extension(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError:
        raise bad("The extension must be a duration such as 30d or 12w.") from None


def describe(guest: Guest) -> str:
    sponsor = f", sponsored by {fmt.user(guest.sponsor)}" if guest.sponsor else ""
    since = f", since {format_time(guest.created_at)}" if guest.created_at else ""
    until = (
        f", expires {format_time(guest.expires_at)}"
        if guest.expires_at and guest.status == "active"
        else ""
    )
    return f"{fmt.user(guest.user_id)} {fmt.md(guest.status)}{sponsor}{since}{until}"


class GuestCommands(CommandFamily):
    def __init__(self, services: Services) -> None:
        super().__init__(services)
        services.confirmations.register(spec_of(self.deactivate), self._deactivate)

    @family_root("guest", help="Guest accounts on the DMZ homeserver")
    @arguments(Subcommand)
    @gated("guest", Role.OPERATOR, listed=False)
    async def guest(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        await ctx.reply(await self.list_subcommands(self.guest, ctx.roles, args.word))

    @guest.subcommand("list", help="active guests (--sponsor: one sponsor's, --all: any status)")
    @arguments(GuestListArgs)
    @gated("guest list", Role.OPERATOR)
    async def list_guests(self, evt: MessageEvent, ctx: Context, args: GuestListArgs) -> None:
        guests = await self.services.registrar.guests(
            ctx.acting, sponsor=args.sponsor, status=None if args.all else "active"
        )
        ctx.note(f"{len(guests)} guests")
        what = "Guests" if args.all else "Active guests"
        if args.sponsor:
            what += f" of {fmt.user(args.sponsor)}"
        if not guests:
            await ctx.reply(f"{what}: none.")
            return
        lines = [f"* {describe(guest)}" for guest in guests[:MAX_LISTED]]
        if len(guests) > MAX_LISTED:
            lines.append(f"* … and {len(guests) - MAX_LISTED} more")
        await ctx.reply(f"{what} ({len(guests)}):\n\n" + "\n".join(lines))

    @guest.subcommand("deactivate", help="close a guest's DMZ account (asks to confirm)")
    @arguments(DeactivateArgs)
    @gated("guest deactivate", Role.OPERATOR, effect="changed")
    async def deactivate(self, evt: MessageEvent, ctx: Context, args: DeactivateArgs) -> None:
        await self.services.confirmations.run_or_ask(
            ctx,
            args.yes,
            f"Deactivate guest {fmt.user(args.guest)}? They will no longer be able to sign in.",
            {"guest": args.guest},
        )

    @guest.subcommand("extend", help="let an expiring guest stay longer")
    @arguments(ExtendArgs)
    @gated("guest extend", Role.OPERATOR, effect="changed")
    async def extend(self, evt: MessageEvent, ctx: Context, args: ExtendArgs) -> None:
        try:
            guest = await self.services.registrar.extend_guest(ctx.acting, args.guest, args.seconds)
        except DmzError as e:
            if e.status == 404:
                raise Failed(f"{fmt.user(args.guest)} is not a known guest.", "not found") from None
            if e.status == 409:
                raise Failed(f"{fmt.user(args.guest)}: {fmt.md(e.error)}.", "conflict") from None
            raise
        until = format_time(guest.expires_at) if guest.expires_at else "never"
        ctx.note(f"guest {args.guest} expires {until}")
        await ctx.reply(f"Guest {fmt.user(args.guest)} now expires {until}.")

    async def _deactivate(self, ctx: Context, payload: Mapping[str, Any]) -> None:
        guest = str(payload["guest"])
        try:
            await self.services.registrar.deactivate_guest(ctx.acting, guest)
        except DmzError as e:
            if e.status == 404:
                raise Failed(f"{fmt.user(guest)} is not a known guest.", "not found") from None
            raise
        ctx.note(f"guest {guest} deactivated")
        await ctx.reply(f"Guest {fmt.user(guest)} is deactivated.")
