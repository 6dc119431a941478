"""``!token``: mint, list, show and revoke guest registration tokens on the registrar."""

from __future__ import annotations

from typing import ClassVar, Self

from attrs import frozen
from maubot import MessageEvent
from maubot.matrix import MaubotMatrixClient
from mautrix.errors import MatrixRequestError
from mautrix.types import EventType, PowerLevelStateEventContent, RoomAlias, RoomID

from .. import fmt
from ..dmz import DmzError, Token
from ..durations import format_duration, format_time, parse_duration
from ..gate import Context, Failed, Refused, Role, gated
from ..syntax import Words, arguments, bad, project_name, room, token_id, whole_number
from .base import CommandFamily, Subcommand, family_root

MAX_LISTED = 30
MAX_INVITES = 20


def duration(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError:
        raise bad("--expires must be a duration such as 30m, 24h or 7d.") from None


def guest_duration(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError:
        raise bad("--guest-expires must be a duration such as 30d or 90d.") from None


@frozen
class GenerateArgs:
    USAGE: ClassVar[str] = (
        "[--uses N] [--expires DURATION] [--guest-expires DURATION] [--note TEXT] "
        "[--invite ROOM ...] [--project NAME] [--dm]"
    )
    uses: int | None = None
    expires: int | None = None
    note: str | None = None
    dm: bool = False
    # Room IDs or aliases each guest of the token is invited into once registered.
    invites: tuple[str, ...] = ()
    guest_expires: int | None = None
    project: str | None = None

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        uses = words.option("--uses", whole_number("--uses", 1, 1000))
        expires = words.option("--expires", duration)
        guest_expires = words.option("--guest-expires", guest_duration)
        project = words.option("--project", project_name)
        dm = words.flag("--dm")
        invites = tuple(dict.fromkeys(words.options("--invite", room("--invite"))))
        note = words.text("--note")
        words.finish()
        if note is not None and len(note) > 500:
            raise bad("--note must be at most 500 characters.")
        if len(invites) > MAX_INVITES:
            raise bad(f"--invite may be given at most {MAX_INVITES} times.")
        return cls(uses, expires, note, dm, invites, guest_expires, project)


@frozen
class ListArgs:
    USAGE: ClassVar[str] = "[--all] [--mine]"
    all: bool = False
    mine: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        result = cls(all=words.flag("--all"), mine=words.flag("--mine"))
        words.finish()
        return result


@frozen
class TokenIdArgs:
    USAGE: ClassVar[str] = "<id>"
    token_id: str

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        result = cls(words.positional("The token id", token_id))
        words.finish()
        return result


def describe(token: Token) -> str:
    allowed = "unlimited" if token.uses_allowed is None else str(token.uses_allowed)
    note = f", note “{fmt.md(token.note)}”" if token.note else ""
    sponsor = f", by {fmt.user(token.sponsor)}" if token.sponsor else ""
    return (
        f"{fmt.code(token.id)} {fmt.md(token.status)}, {token.uses_completed}/{allowed} used, "
        f"expires {format_time(token.expires_at)}{sponsor}{note}"
    )


class TokenCommands(CommandFamily):
    @family_root("token", help="Registration tokens for guests")
    @arguments(Subcommand)
    @gated("token", Role.OPERATOR, listed=False)
    async def token(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        await ctx.reply(await self.list_subcommands(self.token, ctx.roles, args.word))

    @token.subcommand("generate", help="mint a token and show its onboarding URL")
    @arguments(GenerateArgs)
    @gated("token generate", Role.OPERATOR, effect="created")
    async def generate(self, evt: MessageEvent, ctx: Context, args: GenerateArgs) -> None:
        uses = args.uses or self.config.token_uses
        expires_in = args.expires or self.config.token_expires
        guest_expires = args.guest_expires or self.config.guest_expires
        # Checked before minting, so a room the bot cannot invite into mints nothing.
        invites = await invitable_rooms(self.services.client, args.invites)
        token = await self.services.registrar.mint(
            ctx.acting,
            uses=uses,
            expires_in=expires_in,
            note=args.note or "",
            idempotency_key=evt.event_id,
            invites=invites,
            notify=("dm" if args.dm else ctx.room_id) if invites else "",
            guest_expires_in=guest_expires,
            project=args.project or "",
        )
        ctx.note(f"token {token.id}")
        if invites:
            ctx.note(f"invites {', '.join(invites)}")
        if not token.url:
            raise Failed(
                f"The registrar minted token {fmt.code(token.id)} but sent no URL.", "no url"
            )
        summary = (
            f"Token {fmt.code(token.id)}: {fmt.plural(uses, 'use')}, expires "
            f"{format_time(token.expires_at)} (in {format_duration(expires_in)})"
        )
        if args.project:
            summary += f"; project {fmt.code(args.project)}"
        if guest_expires:
            summary += f"; guests keep their account for {format_duration(guest_expires)}"
        if invites:
            summary += "; its guests are invited to " + ", ".join(fmt.code(r) for r in invites)
        if not args.dm:
            await ctx.reply(f"{summary}.  \nOnboarding URL: {fmt.link(token.url)}")
            return
        try:
            await self.services.direct.send(
                ctx.sender, f"{summary}.  \nOnboarding URL for your guest: {fmt.link(token.url)}"
            )
        except Exception as e:
            self.log.warning("Direct message to %s failed: %s", ctx.sender, type(e).__name__)
            await self.services.registrar.revoke(ctx.acting, token.id)
            raise Failed(
                f"I could not send you a direct message, so token {fmt.code(token.id)} "
                "was revoked.",
                f"direct message failed ({type(e).__name__}); token revoked",
            ) from None
        ctx.note("url sent by direct message")
        await ctx.reply(f"{summary}. I sent you its onboarding URL in a direct message.")

    @token.subcommand("list", help="open tokens (--all: every status, --mine: yours only)")
    @arguments(ListArgs)
    @gated("token list", Role.OPERATOR)
    async def list_tokens(self, evt: MessageEvent, ctx: Context, args: ListArgs) -> None:
        tokens = await self.services.registrar.tokens(
            ctx.acting,
            status=None if args.all else "active",
            sponsor=ctx.sender if args.mine else None,
        )
        ctx.note(f"{len(tokens)} tokens")
        what = ("Your " if args.mine else "") + ("tokens" if args.all else "open tokens")
        if not tokens:
            await ctx.reply(f"{what.capitalize()}: none.")
            return
        lines = [f"* {describe(token)}" for token in tokens[:MAX_LISTED]]
        if len(tokens) > MAX_LISTED:
            lines.append(f"* … and {len(tokens) - MAX_LISTED} more")
        await ctx.reply(f"{what.capitalize()} ({len(tokens)}):\n\n" + "\n".join(lines))

    @token.subcommand("show", help="one token in detail")
    @arguments(TokenIdArgs)
    @gated("token show", Role.OPERATOR)
    async def show(self, evt: MessageEvent, ctx: Context, args: TokenIdArgs) -> None:
        try:
            token = await self.services.registrar.token(ctx.acting, args.token_id)
        except DmzError as e:
            raise not_found(e, args.token_id) from None
        created = f"  \nCreated {format_time(token.created_at)}." if token.created_at else ""
        await ctx.reply(f"Token {describe(token)}.{created}")

    @token.subcommand("revoke", help="revoke a token so it can no longer be used")
    @arguments(TokenIdArgs)
    @gated("token revoke", Role.OPERATOR, effect="changed")
    async def revoke(self, evt: MessageEvent, ctx: Context, args: TokenIdArgs) -> None:
        try:
            await self.services.registrar.revoke(ctx.acting, args.token_id)
        except DmzError as e:
            raise not_found(e, args.token_id) from None
        ctx.note(f"token {args.token_id} revoked")
        await ctx.reply(f"Token {fmt.code(args.token_id)} is revoked.")


async def invitable_rooms(client: MaubotMatrixClient, rooms: tuple[str, ...]) -> tuple[str, ...]:
    """The room IDs behind ``rooms`` (IDs or aliases), each one the bot may invite into."""
    found: list[str] = []
    for name in rooms:
        room_id = RoomID(name)
        if name.startswith("#"):
            try:
                room_id = (await client.resolve_room_alias(RoomAlias(name))).room_id
            except MatrixRequestError:
                raise Refused(
                    f"No room has the alias {fmt.code(name)}; no token was minted.",
                    f"unknown alias {name[:80]}",
                ) from None
        try:
            levels = await client.get_state_event(room_id, EventType.ROOM_POWER_LEVELS)
        except MatrixRequestError:
            raise Refused(
                f"I am not in {fmt.code(name)}, so I could not invite guests there; "
                "no token was minted.",
                f"not in {name[:80]}",
            ) from None
        if (
            isinstance(levels, PowerLevelStateEventContent)
            and levels.get_user_level(client.mxid) < levels.invite
        ):
            raise Refused(
                f"I may not invite people into {fmt.code(name)}; no token was minted.",
                f"no invite power in {name[:80]}",
            )
        found.append(room_id)
    return tuple(dict.fromkeys(found))


def not_found(error: DmzError, token_id: str) -> Exception:
    if error.status == 404:
        return Failed(f"No token has the id {fmt.code(token_id)}.", "not found")
    return error
