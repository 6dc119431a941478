"""``!audit``: read, verify and export the bot's own audit trail (auditor role)."""

from __future__ import annotations

import time
from typing import ClassVar, Self

from attrs import frozen
from maubot import MessageEvent

from .. import fmt
from ..audit import AuditEntry
from ..durations import format_ms, parse_duration
from ..gate import Context, Failed, Role, gated
from ..syntax import Words, arguments, bad, user_id, whole_number
from .base import CommandFamily, NoArgs, family_root


def since(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError:
        raise bad("--since must be a duration such as 1h, 24h or 7d.") from None


@frozen
class AuditArgs:
    USAGE: ClassVar[str] = "[--user @x] [--since 7d] [--limit N]"
    user: str | None = None
    since: int | None = None
    limit: int = 20

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        if words.words and not words.words[0].startswith("--"):
            raise bad(f"Unknown subcommand {words.words[0]!r}; there are verify and export.")
        user = words.option("--user", user_id("--user"))
        seconds = words.option("--since", since)
        limit = words.option("--limit", whole_number("--limit", 1, 100))
        words.finish()
        return cls(user, seconds, limit or 20)


def describe(entry: AuditEntry) -> str:
    detail = f" — {fmt.md(entry.detail)}" if entry.detail else ""
    return (
        f"#{entry.seq} {format_ms(entry.ts)} {fmt.user(entry.sender)} "
        f"{fmt.code(entry.command)} **{entry.outcome}**{detail}"
    )


class AuditCommands(CommandFamily):
    @family_root("audit", help="recent audit entries, newest first")
    @arguments(AuditArgs)
    @gated("audit", Role.AUDITOR)
    async def audit(self, evt: MessageEvent, ctx: Context, args: AuditArgs) -> None:
        since_ms = int((time.time() - args.since) * 1000) if args.since else None
        entries = await self.services.audit.recent(
            sender=args.user, since_ms=since_ms, limit=args.limit
        )
        ctx.note(f"{len(entries)} entries")
        if not entries:
            await ctx.reply("No audit entries match.")
            return
        await ctx.reply("\n".join(f"* {describe(entry)}" for entry in entries))

    @audit.subcommand("verify", help="recompute the hash chain and report the first break")
    @arguments(NoArgs)
    @gated("audit verify", Role.AUDITOR)
    async def verify(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        result = await self.services.audit.verify()
        if result.ok:
            ctx.note(f"intact, {result.entries} entries")
            await ctx.reply(
                f"The audit trail is intact: {fmt.plural(result.entries, 'entry', 'entries')}, "
                f"head #{result.head_seq} {fmt.code(result.head_hash[:16])}."
            )
            return
        ctx.note(f"broken at #{result.first_broken}")
        await ctx.reply(
            f"The audit trail is broken at entry #{result.first_broken}: {result.reason}."
        )

    @audit.subcommand("export", help="the URL a SIEM pulls the trail from (JSON lines)")
    @arguments(NoArgs)
    @gated("audit export", Role.AUDITOR)
    async def export(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        base = self.services.webapp_url
        if base is None:
            raise Failed("The plugin's web app is not enabled, so there is no export.", "no webapp")
        if not self.config.audit_export_key:
            raise Failed(
                "The export is turned off: set audit.export_key in the plugin configuration.",
                "export disabled",
            )
        url = f"{str(base).rstrip('/')}/audit.jsonl?since=0"
        await ctx.reply(
            f"Export: {fmt.link(url)}  \nSend `Authorization: Bearer <audit.export_key>`; "
            "`since` is the last sequence number you have (or a duration such as 24h)."
        )
