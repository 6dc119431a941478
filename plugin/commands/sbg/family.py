"""``!sbg``: the Secure Border Gateway's rules, dry runs, decisions and protected rooms.

Rule changes are for ``gateway_admin``; auditors may read the rules and the decisions.
Every write sends ``If-Match`` with the ruleset version read just before it, so a change
built on a view someone else has since changed is refused and nothing is applied. Changes
that open or close federation broadly, and every promotion to enforce, show what will
change and wait for ``--yes`` or a ✅ from the same person. Each command's audit entry
names the ruleset version before and after (``version 7 -> 8``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from maubot import MessageEvent
from maubot.handlers import event
from mautrix.types import EventType, RoomID, StateEvent

from ... import fmt
from ...dmz import DmzError, DmzFailure, DmzUnavailable, GatewayRule, Ruleset, RuleWrite
from ...durations import format_duration
from ...gate import Context, Failed, Role, gated
from ...rooms import POLICY, SERVER_ACL, RoomKeeper, state_type
from ...services import Services
from ...syntax import arguments
from ..base import CommandFamily, NoArgs, Subcommand, family_root, spec_of
from .args import (
    KIND_USAGE,
    DecisionsArgs,
    DryRunClientArgs,
    DryRunFederationArgs,
    HistoryArgs,
    PresetArgs,
    RoomArgs,
    RoomProtectArgs,
    RuleAddArgs,
    RuleIdArgs,
)
from .failures import gateway_errors, guarded, translate
from .render import (
    broad_effects,
    describe_aggregate,
    describe_decision,
    describe_diff,
    describe_params,
    describe_request,
    describe_rule,
    describe_status,
    life_span,
    protections,
    room_differences,
    ruleset_table,
    timestamp,
    trace_table,
)


def target_payload(ruleset: Ruleset, rule: GatewayRule) -> dict[str, Any]:
    """What a confirmed change to ``rule`` needs: its id, how it was shown, the version seen."""
    return {"rule": rule.id, "described": describe_rule(rule), "version": ruleset.version}


# The largest export posted in chat (larger: where to fetch it).
EXPORT_IN_CHAT = 24_000
# How far back a promotion prompt counts what the rule would have refused ("24 hours").
WOULD_BLOCK_WINDOW = 86400
WOULD_BLOCK_LIMIT = 1000


class SbgCommands(CommandFamily):
    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.gateway = services.gateway
        confirmations = services.confirmations
        confirmations.register(spec_of(self.rule_add), guarded(self._resume_add))
        confirmations.register(spec_of(self.rule_remove), guarded(self._resume_remove))
        confirmations.register(spec_of(self.rule_enable), guarded(self._resume_switch))
        confirmations.register(spec_of(self.rule_disable), guarded(self._resume_switch))
        confirmations.register(spec_of(self.rule_promote), guarded(self._resume_promote))
        self.rooms = RoomKeeper(
            services.client,
            services.gateway,
            services.audit,
            services.config,
            self.log.getChild("rooms"),
        )

    async def close(self) -> None:
        await self.rooms.close()

    @family_root("sbg", help="The Secure Border Gateway: rules, dry runs, decisions")
    @arguments(Subcommand)
    @gated("sbg", Role.GATEWAY_ADMIN, Role.AUDITOR, listed=False)
    async def sbg(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        await ctx.reply(await self.list_subcommands(self.sbg, ctx.roles, args.word))

    @sbg.subcommand(
        "rule", help="the gateway's rules", required_subcommand=False, arg_fallthrough=False
    )
    @arguments(Subcommand)
    @gated("sbg rule", Role.GATEWAY_ADMIN, Role.AUDITOR, listed=False)
    async def rule(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        await ctx.reply(await self.list_subcommands(self.rule, ctx.roles, args.word))

    # ---- reading ---------------------------------------------------------------------

    @rule.subcommand("list", help="the rules in pipeline order, as a table")
    @arguments(NoArgs)
    @gated("sbg rule list", Role.GATEWAY_ADMIN, Role.AUDITOR)
    @gateway_errors
    async def rule_list(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        ruleset = await self.gateway.rules(ctx.acting)
        ctx.note(f"version {ruleset.version}; {fmt.plural(len(ruleset.rules), 'rule')}")
        if not ruleset.rules:
            await ctx.reply(
                f"Ruleset version {ruleset.version} has no rules: the gateway refuses only "
                "malformed requests."
            )
            return
        enabled = [r for r in ruleset.rules if r.enabled]
        audit = sum(1 for r in enabled if r.mode == "audit")
        summary = (
            f"Ruleset version {ruleset.version}: {fmt.plural(len(ruleset.rules), 'rule')}, "
            f"{len(enabled) - audit} enforced, {audit} in audit mode, "
            f"{len(ruleset.rules) - len(enabled)} disabled."
        )
        await ctx.reply(f"{summary}\n\n{ruleset_table(ruleset)}")

    @rule.subcommand("export", help="the whole ruleset as one YAML document (policy as code)")
    @arguments(NoArgs)
    @gated("sbg rule export", Role.GATEWAY_ADMIN, Role.AUDITOR)
    @gateway_errors
    async def rule_export(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        document = await self.gateway.export_rules(ctx.acting)
        version = re.search(r"(?m)^version: (\d+)$", document)
        ctx.note(f"version {version.group(1) if version else '?'}; {len(document)} bytes")
        how = (
            "Edit it and import it with `POST /v1/rules/import` (`?dry_run=true` shows the"
            " diff first; send the version as `If-Match`)."
        )
        if len(document) > EXPORT_IN_CHAT:
            where = fmt.md(self.services.config.dmz_url("gateway"))
            await ctx.reply(
                f"The ruleset is {len(document):,} bytes, too large for one message: fetch it"
                f" with `GET /v1/rules/export` on the gateway ({where}). {how}"
            )
            return
        await ctx.reply(f"```yaml\n{document.replace('```', '` ` `')}```\n{how}")

    @rule.subcommand("history", help="who changed the rules, when, and what changed")
    @arguments(HistoryArgs)
    @gated("sbg rule history", Role.GATEWAY_ADMIN)
    @gateway_errors
    async def rule_history(self, evt: MessageEvent, ctx: Context, args: HistoryArgs) -> None:
        versions = await self.gateway.history(ctx.acting, limit=args.limit)
        if not versions:
            ctx.note("no versions")
            await ctx.reply("The gateway has no ruleset history yet.")
            return
        ctx.note(f"version {versions[0].get('version')}; {len(versions)} versions")
        lines = []
        for item in versions:
            author = item.get("author")
            by = ""
            if isinstance(author, str) and author:
                by = f" by {fmt.user(author) if author.startswith('@') else fmt.md(author)}"
            reason = f": {fmt.md(item['reason'])}" if item.get("reason") else ""
            changes = "; ".join(describe_diff(item.get("diff")))
            lines.append(
                f"* **Version {item.get('version')}**, {timestamp(item.get('time'))}{by}{reason}"
                + (f" — {changes}" if changes else "")
            )
        await ctx.reply("\n".join(lines))

    # ---- writing ---------------------------------------------------------------------

    async def _write(
        self,
        ctx: Context,
        before: int,
        send: Callable[[int], Awaitable[RuleWrite]],
        *,
        usage: str | None = None,
    ) -> RuleWrite:
        """One write with ``If-Match: before``; a stale version is reported, not retried.

        ``usage`` is shown when the gateway finds the request invalid (400).
        """
        try:
            result = await send(before)
        except DmzError as e:
            if e.status == 409:
                await self._stale(ctx, before)
            failure = translate(e)
            if e.status == 400 and usage:
                failure = Failed(
                    f"The gateway refused the rule: {fmt.md(e.error)}  \n"
                    f"**Usage:** {fmt.code(usage)}",
                    failure.detail,
                )
            raise Failed(failure.message, f"version {before}; {failure.detail}") from None
        except DmzUnavailable as e:
            failure = translate(e)
            raise Failed(failure.message, f"version {before}; {failure.detail}") from None
        if result.changed:
            ctx.note(f"version {before} -> {result.version}")
            # Rules stay the single source of protected rooms' state.
            self.rooms.rules_changed(ctx.acting)
        else:
            ctx.note(f"version {before}, unchanged")
        return result

    async def _stale(self, ctx: Context, before: int) -> None:
        """Refuse with the news when a 409 came from a version that moved on."""
        current = await self.gateway.rules(ctx.acting)
        if current.version == before:
            return
        by = await self._latest_author(ctx)
        raise Failed(
            f"Someone else changed the gateway rules after you looked (you saw version "
            f"{before}, it is now version {current.version}{by}); nothing was applied. "
            f"Check {fmt.code(self.spell('sbg rule list'))} and try again.",
            f"stale version {before}, now {current.version}; nothing applied",
        )

    async def _latest_author(self, ctx: Context) -> str:
        try:
            [latest] = await self.gateway.history(ctx.acting, limit=1)
        except (DmzFailure, ValueError):
            return ""
        author = latest.get("author")
        return f", changed by {fmt.user(author)}" if isinstance(author, str) and author else ""

    async def _confirm_or_run(
        self,
        ctx: Context,
        yes: bool,
        question: str,
        effects: list[str],
        payload: Mapping[str, Any],
    ) -> None:
        """Run the command's resume now, or -- for broad effects -- ask first (stored)."""
        await self.services.confirmations.run_or_ask(
            ctx, yes or not effects, " ".join((question, *effects)), payload
        )

    @rule.subcommand(
        "add",
        help="add a rule of kind server_allow, server_block, event_type_block, partner_scope, "
        "client_allow or expr (--audit: record only; --from/--until: its life span)",
    )
    @arguments(RuleAddArgs)
    @gated("sbg rule add", Role.GATEWAY_ADMIN, effect="changed")
    @gateway_errors
    async def rule_add(self, evt: MessageEvent, ctx: Context, args: RuleAddArgs) -> None:
        ruleset = await self.gateway.rules(ctx.acting)
        proposed = GatewayRule(
            id="(new)",
            kind=args.kind,
            params=args.params,
            mode="audit" if args.audit else "enforce",
            enabled=True,
            priority=args.priority if args.priority is not None else 100,
            note=args.note or "",
            author=ctx.sender,
        )
        effects = broad_effects(ruleset.rules, [*ruleset.rules, proposed])
        if args.kind == "expr" and not args.audit:
            # What an expression matches cannot be read off it: an enforced one always asks.
            effects.append(
                "An enforced expression refuses every request it matches, and a request it"
                " cannot evaluate; --audit records what it would refuse first."
            )
        question = (
            f"Add a {args.kind} rule for {fmt.md(describe_params(args.kind, args.params))}"
            f"{life_span(args.not_before, args.expires_at)} to ruleset version {ruleset.version}?"
        )
        payload = {"kind": args.kind, "spec": args.spec(), "version": ruleset.version}
        await self._confirm_or_run(ctx, args.yes, question, effects, payload)

    async def _resume_add(self, ctx: Context, payload: Mapping[str, Any]) -> None:
        kind, spec, before = str(payload["kind"]), dict(payload["spec"]), int(payload["version"])
        result = await self._write(
            ctx,
            before,
            lambda v: self.gateway.add_rule(ctx.acting, spec, version=v),
            usage=f"{self.spell('sbg rule add')} {KIND_USAGE[kind]}",
        )
        rule = result.rule
        if rule is None:
            raise Failed("The gateway added the rule but did not say its id.", "no rule in answer")
        ctx.note(f"added {rule.id}")
        mode = " in audit mode (it records, it does not refuse)" if rule.mode == "audit" else ""
        span = life_span(rule.not_before, rule.expires_at)
        await ctx.reply(
            f"Rule {describe_rule(rule)} added{mode}{span}; the ruleset is now version"
            f" {result.version}."
        )

    async def _target(self, ctx: Context, rule_id: str) -> tuple[Ruleset, GatewayRule]:
        ruleset = await self.gateway.rules(ctx.acting)
        rule = ruleset.get(rule_id)
        if rule is None:
            raise Failed(
                f"Ruleset version {ruleset.version} has no rule {fmt.code(rule_id)}.",
                f"version {ruleset.version}; no rule {rule_id}",
            )
        return ruleset, rule

    @rule.subcommand("remove", help="remove a rule (asks to confirm broad changes)")
    @arguments(RuleIdArgs)
    @gated("sbg rule remove", Role.GATEWAY_ADMIN, effect="changed")
    @gateway_errors
    async def rule_remove(self, evt: MessageEvent, ctx: Context, args: RuleIdArgs) -> None:
        ruleset, rule = await self._target(ctx, args.rule_id)
        after = [r for r in ruleset.rules if r.id != rule.id]
        await self._confirm_or_run(
            ctx,
            args.yes,
            f"Remove rule {describe_rule(rule)} from ruleset version {ruleset.version}?",
            broad_effects(ruleset.rules, after),
            target_payload(ruleset, rule),
        )

    async def _resume_remove(self, run: Context, payload: Mapping[str, Any]) -> None:
        rule_id, described = str(payload["rule"]), str(payload["described"])
        result = await self._write(
            run,
            int(payload["version"]),
            lambda v: self.gateway.remove_rule(run.acting, rule_id, version=v),
        )
        run.note(f"removed {rule_id}")
        await run.reply(f"Rule {described} removed; the ruleset is now version {result.version}.")

    async def _switch(self, ctx: Context, args: RuleIdArgs, enabled: bool) -> None:
        ruleset, rule = await self._target(ctx, args.rule_id)
        after = [attrs.evolve(r, enabled=enabled) if r.id == rule.id else r for r in ruleset.rules]
        verb = "Enable" if enabled else "Disable"
        await self._confirm_or_run(
            ctx,
            args.yes,
            f"{verb} rule {describe_rule(rule)} in ruleset version {ruleset.version}?",
            broad_effects(ruleset.rules, after),
            {**target_payload(ruleset, rule), "enabled": enabled},
        )

    async def _resume_switch(self, run: Context, payload: Mapping[str, Any]) -> None:
        rule_id, described = str(payload["rule"]), str(payload["described"])
        enabled = bool(payload["enabled"])
        state = "enabled" if enabled else "disabled"
        result = await self._write(
            run,
            int(payload["version"]),
            lambda v: self.gateway.update_rule(
                run.acting, rule_id, {"enabled": enabled}, version=v
            ),
        )
        if not result.changed:
            await run.reply(
                f"Rule {fmt.code(rule_id)} was already {state}; nothing changed "
                f"(ruleset version {result.version})."
            )
            return
        run.note(f"{state} {rule_id}")
        await run.reply(
            f"Rule {described} is {state}; the ruleset is now version {result.version}."
        )

    @rule.subcommand("enable", help="enable a rule (asks to confirm broad changes)")
    @arguments(RuleIdArgs)
    @gated("sbg rule enable", Role.GATEWAY_ADMIN, effect="changed")
    @gateway_errors
    async def rule_enable(self, evt: MessageEvent, ctx: Context, args: RuleIdArgs) -> None:
        await self._switch(ctx, args, True)

    @rule.subcommand("disable", help="disable a rule (asks to confirm broad changes)")
    @arguments(RuleIdArgs)
    @gated("sbg rule disable", Role.GATEWAY_ADMIN, effect="changed")
    @gateway_errors
    async def rule_disable(self, evt: MessageEvent, ctx: Context, args: RuleIdArgs) -> None:
        await self._switch(ctx, args, False)

    @rule.subcommand("promote", help="audit → enforce: the rule starts refusing (asks to confirm)")
    @arguments(RuleIdArgs)
    @gated("sbg rule promote", Role.GATEWAY_ADMIN, effect="changed")
    @gateway_errors
    async def rule_promote(self, evt: MessageEvent, ctx: Context, args: RuleIdArgs) -> None:
        ruleset, rule = await self._target(ctx, args.rule_id)
        effects: list[str] = []
        if rule.mode == "audit" and not args.yes:
            after = [
                attrs.evolve(r, mode="enforce") if r.id == rule.id else r for r in ruleset.rules
            ]
            effects = [await self._would_block(ctx, rule), *broad_effects(ruleset.rules, after)]
            if not rule.enabled:
                effects.append("It is disabled, so it refuses nothing until it is enabled.")
        await self._confirm_or_run(
            ctx,
            args.yes,
            f"Promote rule {describe_rule(rule)} from audit to enforce in ruleset version "
            f"{ruleset.version}?",
            effects,
            target_payload(ruleset, rule),
        )

    async def _resume_promote(self, run: Context, payload: Mapping[str, Any]) -> None:
        rule_id, described = str(payload["rule"]), str(payload["described"])
        result = await self._write(
            run,
            int(payload["version"]),
            lambda v: self.gateway.promote(run.acting, rule_id, version=v),
        )
        if not result.changed:
            await run.reply(
                f"Rule {fmt.code(rule_id)} was already enforced; nothing changed "
                f"(ruleset version {result.version})."
            )
            return
        run.note(f"promoted {rule_id}")
        await run.reply(
            f"Rule {described} is now enforced; the ruleset is now version {result.version}."
        )

    async def _would_block(self, ctx: Context, rule: GatewayRule) -> str:
        """How much the rule would have refused lately, from its would_block decisions."""
        try:
            records = await self.gateway.decisions(
                ctx.acting,
                outcome="would_block",
                rule=rule.id,
                since=f"{WOULD_BLOCK_WINDOW}s",
                limit=WOULD_BLOCK_LIMIT,
            )
        except DmzError:
            return "Requests it now only records will be refused."
        count = len(records)
        many = "at least " if count >= WOULD_BLOCK_LIMIT else ""
        return (
            "Requests it now only records will be refused: in the last 24 hours it would have "
            f"refused {many}{fmt.plural(count, 'request')}."
        )

    @sbg.subcommand("preset", help="apply a preset: compliance-ledger (no E2EE, no redactions)")
    @arguments(PresetArgs)
    @gated("sbg preset", Role.GATEWAY_ADMIN, effect="changed")
    @gateway_errors
    async def preset(self, evt: MessageEvent, ctx: Context, args: PresetArgs) -> None:
        ruleset = await self.gateway.rules(ctx.acting)
        result = await self._write(
            ctx,
            ruleset.version,
            lambda v: self.gateway.apply_preset(ctx.acting, args.name, version=v),
        )
        rule = result.rule
        shown = f"rule {describe_rule(rule)}" if rule else "its rule"
        if not result.changed:
            await ctx.reply(
                f"Preset {fmt.code(args.name)} is already in place ({shown}); nothing changed "
                f"(ruleset version {result.version})."
            )
            return
        existed = rule is not None and ruleset.get(rule.id) is not None
        ctx.note(f"preset {args.name} {'restored' if existed else 'applied'}")
        await ctx.reply(
            f"Preset {fmt.code(args.name)} {'restored' if existed else 'applied'}: {shown}; "
            f"the ruleset is now version {result.version}."
        )

    # ---- dry runs --------------------------------------------------------------------

    @sbg.subcommand(
        "test",
        help="dry runs against the current rules",
        required_subcommand=False,
        arg_fallthrough=False,
    )
    @arguments(Subcommand)
    @gated("sbg test", Role.GATEWAY_ADMIN, listed=False)
    async def dry_run(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        await ctx.reply(await self.list_subcommands(self.dry_run, ctx.roles, args.word))

    @dry_run.subcommand("federation", help="what the gateway would do with a remote server")
    @arguments(DryRunFederationArgs)
    @gated("sbg test federation", Role.GATEWAY_ADMIN)
    @gateway_errors
    async def test_federation(
        self, evt: MessageEvent, ctx: Context, args: DryRunFederationArgs
    ) -> None:
        described: dict[str, Any] = {"class": "federation", "origin": args.origin}
        if args.room:
            described["room"] = args.room
        if args.event_type:
            described["event_type"] = args.event_type
        usage = f"{self.spell('sbg test federation')} {DryRunFederationArgs.USAGE}"
        await self._evaluate(ctx, described, usage)

    @dry_run.subcommand("client", help="what the gateway would do with a client request")
    @arguments(DryRunClientArgs)
    @gated("sbg test client", Role.GATEWAY_ADMIN)
    @gateway_errors
    async def test_client(self, evt: MessageEvent, ctx: Context, args: DryRunClientArgs) -> None:
        described: dict[str, Any] = {"method": args.method, "path": args.path}
        for key, value in (("user", args.user), ("user_agent", args.user_agent), ("ip", args.ip)):
            if value is not None:
                described[key] = value
        await self._evaluate(
            ctx, described, f"{self.spell('sbg test client')} {DryRunClientArgs.USAGE}"
        )

    async def _evaluate(self, ctx: Context, described: dict[str, Any], usage: str) -> None:
        try:
            result = await self.gateway.evaluate(ctx.acting, described)
        except DmzError as e:
            if e.status != 400:
                raise
            raise Failed(
                f"The gateway cannot judge that request: {fmt.md(e.error)}  \n"
                f"**Usage:** {fmt.code(usage)}",
                f"400 {e.errcode}",
            ) from None
        decision = result["decision"]
        outcome, rule = str(decision.get("outcome")), decision.get("rule")
        version = result.get("version")
        ctx.note(f"version {version}; {outcome}" + (f" by {rule}" if rule else ""))
        mode = f" ({decision['mode']})" if decision.get("mode") else ""
        by = f" by rule {fmt.code(rule)}{mode}" if rule else ""
        verdict = {
            "block": f"**blocked**{by}",
            "would_block": f"**allowed**, but audit rule {fmt.code(rule)} would block it",
        }.get(outcome, f"**allowed**{by}")
        against = f"ruleset version {version}" if version is not None else "no ruleset"
        lines = [
            f"Dry run against {against}: {verdict} — {fmt.md(decision.get('reason', ''))}",
            f"Judged as: {fmt.md(describe_request(result.get('request')))}.",
        ]
        trace = [entry for entry in result.get("trace") or [] if isinstance(entry, dict)]
        lines.append(trace_table(trace) if trace else "No rule applies.")
        await ctx.reply("\n\n".join(lines))

    # ---- decisions -------------------------------------------------------------------

    @sbg.subcommand("decisions", help="recent gateway decisions, newest first")
    @arguments(DecisionsArgs)
    @gated("sbg decisions", Role.GATEWAY_ADMIN, Role.AUDITOR)
    @gateway_errors
    async def decisions(self, evt: MessageEvent, ctx: Context, args: DecisionsArgs) -> None:
        if args.allows:
            await self._allow_counts(ctx, args)
            return
        ruleset, records = await asyncio.gather(
            self.gateway.rules(ctx.acting),
            self.gateway.decisions(
                ctx.acting,
                outcome="block" if args.blocked else None,
                origin=args.origin,
                since=f"{args.since}s" if args.since else None,
                limit=args.limit,
            ),
        )
        ctx.note(f"version {ruleset.version}; {fmt.plural(len(records), 'decision')}")
        filters = [
            *(["blocked only"] if args.blocked else []),
            *([f"since {format_duration(args.since)} ago"] if args.since else []),
            *([f"origin {fmt.md(args.origin)}"] if args.origin else []),
        ]
        scope = f" ({', '.join(filters)})" if filters else ""
        if not records:
            await ctx.reply(f"No decisions{scope}.")
            return
        lines = [f"* {describe_decision(record)}" for record in records]
        await ctx.reply(
            f"The last {fmt.plural(len(records), 'decision')}{scope}, newest first "
            f"(ruleset now at version {ruleset.version}):\n\n" + "\n".join(lines)
        )

    async def _allow_counts(self, ctx: Context, args: DecisionsArgs) -> None:
        """``--allows``: allows recorded as per-minute counts (``allow: aggregate``)."""
        rows = await self.gateway.decisions(
            ctx.acting,
            kind="aggregate",
            origin=args.origin,
            since=f"{args.since}s" if args.since else None,
            limit=args.limit,
        )
        total = sum(int(row.get("count") or 0) for row in rows)
        ctx.note(f"{fmt.plural(len(rows), 'aggregate')}; {fmt.plural(total, 'allow')}")
        if not rows:
            await ctx.reply("No allow counts (allows may be kept as full records: see decisions).")
            return
        lines = [f"* {describe_aggregate(row)}" for row in rows]
        await ctx.reply(
            f"{fmt.plural(total, 'allow')} in the last {fmt.plural(len(rows), 'count')}"
            ", newest first:\n\n" + "\n".join(lines)
        )

    @sbg.subcommand("status", help="the gateway's ruleset version and decision log state")
    @arguments(NoArgs)
    @gated("sbg status", Role.GATEWAY_ADMIN, Role.AUDITOR)
    @gateway_errors
    async def status(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        status = await self.gateway.status(ctx.acting)
        log = status.get("decision_log") or {}
        ctx.note(f"version {status.get('version')}; degraded {bool(log.get('degraded'))}")
        await ctx.reply(describe_status(status))

    # ---- protected rooms (plugin/rooms/, docs/rules.md "Protected rooms") -------------

    @sbg.subcommand(
        "room",
        help="protected rooms: the rules held on every server in the room",
        required_subcommand=False,
        arg_fallthrough=False,
    )
    @arguments(Subcommand)
    @gated("sbg room", Role.GATEWAY_ADMIN, Role.AUDITOR, listed=False)
    async def room(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        await ctx.reply(await self.list_subcommands(self.room, ctx.roles, args.word))

    @room.subcommand(
        "protect",
        help="hold a room to the rules: power levels (--ledger), server ACL (--acl), policy "
        "server (--policy-server); all by default",
    )
    @arguments(RoomProtectArgs)
    @gated("sbg room protect", Role.GATEWAY_ADMIN, effect="changed")
    @gateway_errors
    async def room_protect(self, evt: MessageEvent, ctx: Context, args: RoomProtectArgs) -> None:
        room_id = await self.rooms.resolve(args.room)
        try:
            room, applied = await self.rooms.protect(ctx.acting, room_id, args.protections())
        except DmzError as e:
            if e.status == 400:
                raise Failed(
                    f"The gateway cannot protect {fmt.code(room_id)}: {fmt.md(e.error)}. Nothing "
                    "was changed.",
                    f"400 {e.errcode}",
                ) from None
            raise
        done = "; ".join(applied.changes) or "its state already met the protection"
        ctx.note(f"protected {room_id} ({protections(room)}): {done}")
        lines = [f"Room {fmt.code(room_id)} is protected ({protections(room)}): {fmt.md(done)}."]
        notes = list(applied.notes)
        if not args.protections() and not room.get("policy_server"):
            notes.append("the gateway has no policy server configured, so m.room.policy is not set")
        lines += [f"Note: {fmt.md(note)}." for note in notes]
        lines += [
            f"Warning: {fmt.md(text)}; the protection does not hold against them."
            for text in applied.unfixable
        ]
        await ctx.reply("  \n".join(lines))

    @room.subcommand("unprotect", help="stop holding a room to the rules (its state stays)")
    @arguments(RoomArgs)
    @gated("sbg room unprotect", Role.GATEWAY_ADMIN, effect="changed")
    @gateway_errors
    async def room_unprotect(self, evt: MessageEvent, ctx: Context, args: RoomArgs) -> None:
        room_id = await self.rooms.resolve(args.room)
        try:
            await self.gateway.unprotect_room(ctx.acting, room_id)
        except DmzError as e:
            if e.status == 404:
                raise Failed(
                    f"Room {fmt.code(room_id)} is not protected.", "not protected"
                ) from None
            raise
        ctx.note(f"unprotected {room_id}")
        await ctx.reply(
            f"Room {fmt.code(room_id)} is no longer protected; its power levels, ACL and policy "
            "state stay as they are."
        )

    @room.subcommand("list", help="the protected rooms")
    @arguments(NoArgs)
    @gated("sbg room list", Role.GATEWAY_ADMIN, Role.AUDITOR)
    @gateway_errors
    async def room_list(self, evt: MessageEvent, ctx: Context, args: NoArgs) -> None:
        rooms = await self.gateway.protected_rooms(ctx.acting)
        ctx.note(fmt.plural(len(rooms), "room"))
        if not rooms:
            await ctx.reply("No room is protected.")
            return
        lines = [
            f"* {fmt.code(room['room_id'])} — {protections(room)}"
            + (
                f", by {fmt.user(room['author'])}"
                if str(room.get("author", "")).startswith("@")
                else ""
            )
            for room in rooms
        ]
        await ctx.reply(f"{fmt.plural(len(rooms), 'protected room')}:\n\n" + "\n".join(lines))

    @room.subcommand("check", help="the difference between a room and its protection")
    @arguments(RoomArgs)
    @gated("sbg room check", Role.GATEWAY_ADMIN, Role.AUDITOR)
    @gateway_errors
    async def room_check(self, evt: MessageEvent, ctx: Context, args: RoomArgs) -> None:
        room_id = await self.rooms.resolve(args.room)
        try:
            result = await self.rooms.check(ctx.acting, room_id)
        except DmzError as e:
            if e.status == 404:
                raise Failed(
                    f"Room {fmt.code(room_id)} is not protected.", "not protected"
                ) from None
            raise
        differences = [d for d in result["differences"] if isinstance(d, dict)]
        version = result.get("desired", {}).get("version")
        ctx.note(f"version {version}; {fmt.plural(len(differences), 'difference')}")
        if not differences:
            await ctx.reply(
                f"Room {fmt.code(room_id)} is in order: its state meets its protection under "
                f"ruleset version {version}."
            )
            return
        await ctx.reply(
            f"Room {fmt.code(room_id)} differs from its protection under ruleset version "
            f"{version}:\n\n" + "\n".join(room_differences(differences))
        )

    @event.on(EventType.ROOM_POWER_LEVELS)
    @event.on(state_type(SERVER_ACL))
    @event.on(state_type(POLICY))
    async def on_guarded_state(self, evt: StateEvent) -> None:
        """Drift: someone else changed a protected room's power levels, ACL or policy."""
        if evt.sender == self.services.client.mxid or evt.state_key != "":
            return
        await self.rooms.on_state(RoomID(evt.room_id), evt.sender, evt.event_id, str(evt.type))
