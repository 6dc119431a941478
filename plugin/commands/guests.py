"""``!guest``: the guest accounts on the DMZ homeserver, listed and deactivated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from attrs import frozen
from maubot import MessageEvent

from .. import fmt
from ..audit import Outcome
from ..dmz import DmzError, DmzFailure, Guest
from ..durations import format_time, parse_duration
from ..gate import Context, Failed, Role, gated
from ..removal import remove_from, shared_rooms
from ..services import Services
from ..syntax import Words, arguments, bad, project_name, user_id
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


@frozen
class OffboardArgs:
    USAGE: ClassVar[str] = "<@guest:dmz> | --project NAME [--yes]"
    guest: str | None
    project: str | None
    yes: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        yes = words.flag("--yes")
        project = words.option("--project", project_name)
        guest = None
        if project is None:
            guest = words.positional("The guest's user ID (or --project)", user_id("The guest"))
        words.finish()
        return cls(guest, project, yes)


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
        services.confirmations.register(spec_of(self.offboard), self._offboard)

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

    @guest.subcommand(
        "offboard", help="remove a guest (or a project's) from our rooms, deactivate (confirms)"
    )
    @arguments(OffboardArgs)
    @gated("guest offboard", Role.OPERATOR, effect="changed")
    async def offboard(self, evt: MessageEvent, ctx: Context, args: OffboardArgs) -> None:
        if args.guest is not None:
            await self.services.confirmations.run_or_ask(
                ctx,
                args.yes,
                f"Offboard guest {fmt.user(args.guest)}? I remove them from every room we "
                "share and deactivate their DMZ account.",
                {"guest": args.guest},
            )
            return
        assert args.project is not None
        guests = await self._project_guests(ctx, args.project)
        if not guests:
            await ctx.reply(f"Project {fmt.code(args.project)} has no active guests.")
            return
        names = ", ".join(fmt.user(g) for g in guests[:MAX_LISTED])
        more = f" and {len(guests) - MAX_LISTED} more" if len(guests) > MAX_LISTED else ""
        await self.services.confirmations.run_or_ask(
            ctx,
            args.yes,
            f"Offboard the {fmt.plural(len(guests), 'active guest')} of project "
            f"{fmt.code(args.project)} ({names}{more})? I remove each from every room we "
            "share and deactivate their DMZ accounts.",
            {"project": args.project},
        )

    async def _project_guests(self, ctx: Context, project: str) -> list[str]:
        found = await self.services.registrar.all_guests(
            ctx.acting, status="active", project=project
        )
        return [guest.user_id for guest in found]

    async def _offboard(self, ctx: Context, payload: Mapping[str, Any]) -> None:
        if "project" in payload:
            # Listed again now: the confirmation may come minutes after the question.
            guests = await self._project_guests(ctx, str(payload["project"]))
        else:
            guests = [str(payload["guest"])]
        lines: list[str] = []
        failures = 0
        for guest in guests:
            line, ok = await self._offboard_one(ctx, guest)
            lines.append(line)
            failures += not ok
        ctx.note(f"{len(guests) - failures} of {len(guests)} offboarded")
        if failures:
            ctx.outcome = Outcome.FAILED
        if len(lines) == 1:
            await ctx.reply(lines[0])
            return
        head = f"Offboarded {len(guests) - failures} of {fmt.plural(len(guests), 'guest')}"
        await ctx.reply(f"{head}:\n\n" + "\n".join(f"* {line}" for line in lines))

    async def _offboard_one(self, ctx: Context, guest: str) -> tuple[str, bool]:
        """Rooms first (so they can be named), then the account, then the kicks."""
        client = self.services.client
        rooms = await shared_rooms(client, guest)
        try:
            await self.services.registrar.deactivate_guest(ctx.acting, guest)
            account, ok = "DMZ account deactivated", True
        except DmzError as e:
            if e.status == 404:
                return f"{fmt.user(guest)} is not a known guest; nothing was done.", False
            account, ok = f"the DMZ account could not be deactivated ({fmt.md(e.error)})", False
        except DmzFailure as e:
            account, ok = f"the DMZ account could not be deactivated ({fmt.md(e)})", False
        removal = await remove_from(client, guest, rooms, f"Offboarded by {ctx.sender}")
        parts = [f"Guest {fmt.user(guest)}: {account}"]
        if removal.removed:
            parts.append("removed from " + ", ".join(fmt.code(r) for r in removal.removed))
        elif not removal.failed:
            parts.append("in none of my rooms")
        for room, why in removal.failed:
            parts.append(f"could not remove from {fmt.code(room)} ({fmt.md(why)})")
        return "; ".join(parts) + ".", ok and not removal.failed

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
