"""``!sbg``: the Secure Border Gateway's rules, dry runs and decisions.

Rule changes are for ``gateway_admin``; auditors may read the rules and the decisions.
Every write sends ``If-Match`` with the ruleset version read just before it, so a change
built on a view someone else has since changed is refused and nothing is applied. Changes
that open or close federation broadly, and every promotion to enforce, show what will
change and wait for ``--yes`` or a ✅ from the same person. Each command's audit entry
names the ruleset version before and after (``version 7 -> 8``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, Self

import attrs
from attrs import frozen
from maubot import MessageEvent
from maubot.handlers import command
from maubot.handlers.command import CommandHandler

from .. import fmt
from ..confirm import Action
from ..dmz import DmzError, DmzFailure, DmzUnavailable, Gateway, GatewayRule, Ruleset, RuleWrite
from ..durations import format_duration, parse_duration, parse_timestamp
from ..gate import Context, Failed, GatedHandler, Refused, Role, command_spec, gated
from ..services import Services
from ..syntax import Words, arguments, bad, user_id, whole_number
from .base import CommandFamily, NoArgs, Subcommand

KIND_USAGE = {
    "server_allow": "server_allow <server> [<server> ...]",
    "server_block": "server_block <server> [<server> ...]",
    "event_type_block": "event_type_block <type> [<type> ...] [--scope client|federation|both]",
    "partner_scope": "partner_scope <server> [...] [--rooms !a:x,!b:x] [--types t1,t2]",
    "client_allow": 'client_allow [--user-agent "REGEX"] ... [--network CIDR] ...',
}
SCOPES = ("client", "federation", "both")
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]{1,255})(:\d{1,5})?$")
PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]{0,63}$")
METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE", "PATCH")
MAX_PRIORITY = 1_000_000
# How far back a promotion prompt counts what the rule would have refused ("24 hours").
WOULD_BLOCK_WINDOW = 86400
WOULD_BLOCK_LIMIT = 1000
MAX_SHOWN_SERVERS = 10


# ---- arguments ------------------------------------------------------------------------


def rule_id(value: str) -> str:
    if not RULE_ID.match(value):
        raise bad("A rule id is letters, digits, '.', '_' or '-' (at most 64).")
    return value


def listed(value: str) -> list[str]:
    """``a,b c`` style lists: commas separate, empty items are dropped."""
    return [item for item in (part.strip() for part in value.split(",")) if item]


def remaining(words: Words) -> list[str]:
    """Every word left that is not an ``--option``, commas splitting further."""
    found = [word for word in words.words if not word.startswith("--")]
    words.words = [word for word in words.words if word.startswith("--")]
    return [item for word in found for item in listed(word)]


def repeated(words: Words, name: str) -> list[str]:
    """All values of an option that may be given several times."""
    values: list[str] = []
    while True:
        index = next(
            (
                i
                for i, word in enumerate(words.words)
                if word == name or word.startswith(name + "=")
            ),
            None,
        )
        if index is None:
            return values
        word = words.words.pop(index)
        if word != name:
            values.append(word[len(name) + 1 :])
        elif index < len(words.words) and not words.words[index].startswith("--"):
            values.append(words.words.pop(index))
        else:
            raise bad(f"{name} needs a value.")


def choice(name: str, options: Sequence[str]) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in options:
            raise bad(f"{name} must be one of {', '.join(options)}.")
        return value

    return convert


def server_name(label: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if not SERVER_NAME.match(value):
            raise bad(f"{label} must be a server name such as partner.example.org.")
        return value.lower()

    return convert


def duration_ago(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError:
        raise bad("--since must be a duration such as 15m, 1h or 7d.") from None


def http_method(value: str) -> str:
    if value.upper() not in METHODS:
        raise bad(f"The HTTP method must be one of {', '.join(METHODS)}.")
    return value.upper()


def _servers(kind: str, words: Words) -> dict[str, Any]:
    servers = remaining(words)
    if not servers:
        raise bad(f"{kind} needs at least one server name or glob, such as partner.example.org.")
    return {"servers": servers}


def _event_type_block(kind: str, words: Words) -> dict[str, Any]:
    scope = words.option("--scope", choice("--scope", SCOPES))
    types = remaining(words)
    if not types:
        raise bad("event_type_block needs at least one event type, such as m.room.encryption.")
    return {"event_types": types} | ({"scope": scope} if scope else {})


def _partner_scope(kind: str, words: Words) -> dict[str, Any]:
    rooms = words.option("--rooms", listed)
    types = words.option("--types", listed)
    params = _servers(kind, words)
    if not rooms and not types:
        raise bad("partner_scope needs --rooms and/or --types the servers may reach.")
    return params | ({"rooms": rooms} if rooms else {}) | ({"event_types": types} if types else {})


def _client_allow(kind: str, words: Words) -> dict[str, Any]:
    agents = repeated(words, "--user-agent")
    networks = [net for value in repeated(words, "--network") for net in listed(value)]
    if not agents and not networks:
        raise bad("client_allow needs --user-agent REGEX and/or --network CIDR.")
    params: dict[str, Any] = {"user_agents": agents} if agents else {}
    return params | ({"networks": networks} if networks else {})


PARAMS: dict[str, Callable[[str, Words], dict[str, Any]]] = {
    "server_allow": _servers,
    "server_block": _servers,
    "event_type_block": _event_type_block,
    "partner_scope": _partner_scope,
    "client_allow": _client_allow,
}


@frozen
class RuleAddArgs:
    USAGE: ClassVar[str] = "<kind> <params...> [--audit] [--priority N] [--note TEXT]"
    kind: str
    params: dict[str, Any]
    audit: bool = False
    priority: int | None = None
    note: str | None = None
    yes: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        if not words.words or words.words[0].startswith("--"):
            raise bad(f"The rule kind is missing; it is one of {', '.join(KIND_USAGE)}.")
        kind = words.words.pop(0)
        if kind not in PARAMS:
            raise bad(f"Unknown rule kind {kind!r}; it is one of {', '.join(KIND_USAGE)}.")
        audit = words.flag("--audit")
        yes = words.flag("--yes")
        priority = words.option("--priority", whole_number("--priority", 0, MAX_PRIORITY))
        note = words.text("--note")
        if note is not None and len(note) > 500:
            raise bad("--note must be at most 500 characters.")
        params = PARAMS[kind](kind, words)
        words.finish()
        return cls(kind, params, audit, priority, note, yes)

    def spec(self) -> dict[str, Any]:
        """The body of ``POST /v1/rules``."""
        body: dict[str, Any] = {"kind": self.kind, "params": self.params}
        if self.audit:
            body["mode"] = "audit"
        if self.priority is not None:
            body["priority"] = self.priority
        if self.note:
            body["note"] = self.note
        return body


@frozen
class RuleIdArgs:
    USAGE: ClassVar[str] = "<id> [--yes]"
    rule_id: str
    yes: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        yes = words.flag("--yes")
        result = cls(words.positional("The rule id", rule_id), yes)
        words.finish()
        return result


@frozen
class HistoryArgs:
    USAGE: ClassVar[str] = "[--limit N]"
    limit: int = 10

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        limit = words.option("--limit", whole_number("--limit", 1, 50))
        words.finish()
        return cls(limit or 10)


@frozen
class PresetArgs:
    USAGE: ClassVar[str] = "compliance-ledger"
    name: str
    # Accepted like on every other write; a preset never asks first.
    yes: bool = False

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        yes = words.flag("--yes")

        def preset(value: str) -> str:
            if not PRESET_NAME.match(value):
                raise bad("A preset name is lower-case letters, digits and '-'.")
            return value

        result = cls(words.positional("The preset name", preset), yes)
        words.finish()
        return result


@frozen
class DryRunFederationArgs:
    USAGE: ClassVar[str] = "<origin> [--room R] [--type T]"
    origin: str
    room: str | None = None
    event_type: str | None = None

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        room = words.option("--room", str)
        event_type = words.option("--type", str)
        origin = words.positional("The origin server", server_name("The origin"))
        words.finish()
        return cls(origin, room, event_type)


@frozen
class DryRunClientArgs:
    USAGE: ClassVar[str] = "<@user|--user-agent UA> <METHOD> <path> [--ip ADDRESS]"
    method: str
    path: str
    user: str | None = None
    user_agent: str | None = None
    ip: str | None = None

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        user_agent = words.option("--user-agent", str)
        ip = words.option("--ip", str)
        user = None
        if words.words and words.words[0].startswith("@"):
            user = user_id("The user")(words.words.pop(0))
        if user is None and user_agent is None:
            raise bad("Give the user (@alice:corp.example) or --user-agent.")
        method = words.positional("The HTTP method", http_method)
        path = words.positional("The path", str)
        if not path.startswith("/"):
            raise bad("The path must start with /, such as /_matrix/client/v3/createRoom.")
        words.finish()
        return cls(method, path, user, user_agent, ip)


@frozen
class DecisionsArgs:
    USAGE: ClassVar[str] = "[--blocked] [--since 1h] [--origin X] [--limit N]"
    blocked: bool = False
    since: int | None = None
    origin: str | None = None
    limit: int = 20

    @classmethod
    def parse(cls, raw: str) -> Self:
        words = Words(raw)
        blocked = words.flag("--blocked")
        seconds = words.option("--since", duration_ago)
        origin = words.option("--origin", server_name("--origin"))
        limit = words.option("--limit", whole_number("--limit", 1, 100))
        words.finish()
        return cls(blocked, seconds, origin, limit or 20)


# ---- what a change does -----------------------------------------------------------------


def match_all(pattern: str) -> bool:
    """``*`` (or ``*:*``): a server glob that every server matches."""
    return pattern.split(":", 1)[0].strip("*") == "" and pattern.startswith("*")


def _enforced(rules: Iterable[GatewayRule], kind: str) -> list[GatewayRule]:
    return [r for r in rules if r.kind == kind and r.enabled and r.mode == "enforce"]


def _patterns(rules: Iterable[GatewayRule]) -> list[str]:
    found = [str(p) for rule in rules for p in rule.params.get("servers") or []]
    return list(dict.fromkeys(found))


def _some(items: Sequence[str]) -> str:
    shown = ", ".join(fmt.code(item) for item in items[:MAX_SHOWN_SERVERS])
    more = len(items) - MAX_SHOWN_SERVERS
    return f"{shown} and {more} more" if more > 0 else shown


def broad_effects(before: Sequence[GatewayRule], after: Sequence[GatewayRule]) -> list[str]:
    """What a change does to federation as a whole, one sentence each; empty when narrow.

    Only enforced, enabled rules count: audit rules record, they never refuse.
    """
    allow_before = _enforced(before, "server_allow")
    allow_after = _enforced(after, "server_allow")
    star_allow_before = any(match_all(p) for p in _patterns(allow_before))
    star_allow_after = any(match_all(p) for p in _patterns(allow_after))
    star_block_before = any(match_all(p) for p in _patterns(_enforced(before, "server_block")))
    star_block_after = any(match_all(p) for p in _patterns(_enforced(after, "server_block")))
    effects: list[str] = []
    if star_block_after and not star_block_before:
        effects.append("Federation with every server will be refused (server_block `*`).")
    if star_block_before and not star_block_after:
        effects.append("The block of every server (server_block `*`) will be lifted.")
    opened = (
        "Every server will be allowed to federate (server_allow `*`): "
        "the allow list no longer limits anyone."
    )
    if allow_before and not allow_after:
        effects.append(
            "Federation will no longer be limited to listed servers: "
            "every server that is not blocked may federate."
        )
    elif allow_after and (not allow_before or star_allow_after != star_allow_before):
        if star_allow_after:
            effects.append(opened)
        else:
            listed_servers = _some(_patterns(allow_after))
            effects.append(f"Federation will be refused from every server except {listed_servers}.")
    return effects


def describe_params(kind: str, params: dict[str, Any]) -> str:
    """A rule's parameters in one plain line."""

    def items(key: str) -> str:
        return ", ".join(str(v) for v in params.get(key) or [])

    if kind in ("server_allow", "server_block"):
        return items("servers")
    if kind == "event_type_block":
        listed = [text for text in (items("event_types"), items("actions")) if text]
        return f"{'; actions '.join(listed)} ({params.get('scope', 'both')})"
    if kind == "partner_scope":
        parts = [items("servers")]
        if params.get("rooms"):
            parts.append(f"rooms {items('rooms')}")
        if params.get("event_types"):
            parts.append(f"types {items('event_types')}")
        return "; ".join(parts)
    if kind == "client_allow":
        parts = []
        if params.get("user_agents"):
            parts.append(f"user agents {items('user_agents')}")
        if params.get("networks"):
            parts.append(f"networks {items('networks')}")
        return "; ".join(parts)
    return json.dumps(params, sort_keys=True)


def describe_rule(rule: GatewayRule) -> str:
    """``rule-id`` (kind params), in markdown."""
    return f"{fmt.code(rule.id)} ({rule.kind} {fmt.md(describe_params(rule.kind, rule.params))})"


def _cell(value: object, width: int) -> str:
    text = " ".join(str(value).replace("`", "'").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A monospace table (mautrix's markdown has no table syntax; a code block shows in every
    client and keeps user text inert)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "```text\n" + "\n".join(lines) + "\n```"


def ruleset_table(ruleset: Ruleset) -> str:
    rows = [
        [
            _cell(rule.id, 64),
            rule.kind,
            _cell(describe_params(rule.kind, rule.params), 60),
            rule.mode,
            "yes" if rule.enabled else "no",
            str(rule.priority),
            _cell(rule.note, 40),
        ]
        for rule in ruleset.rules
    ]
    return table(("ID", "KIND", "PARAMS", "MODE", "ENABLED", "PRIORITY", "NOTE"), rows)


def _when(value: Any) -> str:
    moment = parse_timestamp(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "?"


def _rule_json(data: Any) -> GatewayRule | None:
    try:
        return GatewayRule.from_json(data)
    except DmzError:
        return None


def describe_diff(diff: Any) -> list[str]:
    """A version's diff (added, removed, changed) as markdown phrases."""
    diff = diff if isinstance(diff, dict) else {}
    parts: list[str] = []
    for verb in ("added", "removed"):
        for item in diff.get(verb) or []:
            rule = _rule_json(item)
            if rule is not None:
                mode = " in audit mode" if verb == "added" and rule.mode == "audit" else ""
                parts.append(f"{verb} {describe_rule(rule)}{mode}")
    for item in diff.get("changed") or []:
        if not isinstance(item, dict):
            continue
        old, new = item.get("before") or {}, item.get("after") or {}
        changes = []
        for key in ("params", "mode", "enabled", "priority", "note"):
            if old.get(key) != new.get(key):
                was, now = old.get(key), new.get(key)
                if key == "params" and isinstance(was, dict) and isinstance(now, dict):
                    kind = str(new.get("kind", ""))
                    was, now = describe_params(kind, was), describe_params(kind, now)
                changes.append(f"{key} {fmt.md(was)} → {fmt.md(now)}")
        parts.append(f"changed {fmt.code(item.get('id', '?'))}: {', '.join(changes) or 'nothing'}")
    return parts


# ---- gateway failures -------------------------------------------------------------------


def translate(error: DmzFailure) -> Failed:
    """What to say, and to audit, when the gateway did not do what was asked."""
    if isinstance(error, DmzUnavailable):
        return Failed(
            f"The gateway did not answer in {error.timeout:g} s; nothing was changed.",
            f"gateway unavailable: {error.reason}",
        )
    if isinstance(error, DmzError):
        if error.status >= 500:
            message = f"The gateway failed (HTTP {error.status}); nothing was changed."
        else:
            message = f"The gateway refused the request: {fmt.md(error.error)}"
        return Failed(message, f"{error.status} {error.errcode}")
    return Failed("The gateway call failed; nothing was changed.", type(error).__name__)


def guarded(action: Action) -> Action:
    """``action`` with gateway failures turned into replies (for confirmed actions)."""

    @functools.wraps(action)
    async def run(ctx: Context) -> None:
        try:
            await action(ctx)
        except DmzFailure as e:
            raise translate(e) from None

    return run


def gateway_errors(fn: GatedHandler) -> GatedHandler:
    """A handler with gateway failures turned into replies; under ``@gated``."""

    @functools.wraps(fn)
    async def handler(self: Any, evt: MessageEvent, ctx: Context, args: Any) -> None:
        try:
            await fn(self, evt, ctx, args)
        except DmzFailure as e:
            raise translate(e) from None

    return handler


# ---- the commands -----------------------------------------------------------------------


class SbgCommands(CommandFamily):
    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.gateway = Gateway(services.gateway)

    # maubot's prefix of a nested subcommand names only its parent, so help is built here.
    def help_lines(self, roles: frozenset[Role]) -> list[str]:
        return self._lines(self.sbg, roles, "!sbg")

    def _lines(self, group: CommandHandler, roles: frozenset[Role], prefix: str) -> list[str]:
        lines: list[str] = []
        for handler in group.__mb_subcommands__:
            spec = command_spec(handler.__mb_func__)
            if spec is None or not spec.allows(roles):
                continue
            name = f"{prefix} {handler.__mb_name__}"
            if spec.listed:
                args = handler.__mb_arguments__
                label = args[0].label if args and args[0].label != args[0].name else ""
                usage = f"{name} {label}".strip()
                lines.append(f"* {fmt.code(usage)} — {handler.__mb_help__ or ''}")
            lines.extend(self._lines(handler, roles, name))
        return lines

    async def _group(self, ctx: Context, group: CommandHandler, prefix: str, word: str) -> None:
        lines = "\n".join(self._lines(group, ctx.roles, prefix))
        if word:
            raise Refused(
                f"Unknown subcommand {fmt.code(word)}. `{prefix}` knows:\n\n{lines}",
                f"unknown subcommand {word[:40]}",
            )
        await ctx.reply(f"`{prefix}` knows:\n\n{lines}")

    @command.new(
        "sbg",
        help="The Secure Border Gateway: rules, dry runs, decisions",
        require_subcommand=False,
        arg_fallthrough=False,
    )
    @arguments(Subcommand)
    @gated("sbg", Role.GATEWAY_ADMIN, Role.AUDITOR, listed=False)
    async def sbg(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        await self._group(ctx, self.sbg, "!sbg", args.word)

    @sbg.subcommand(
        "rule", help="the gateway's rules", required_subcommand=False, arg_fallthrough=False
    )
    @arguments(Subcommand)
    @gated("sbg rule", Role.GATEWAY_ADMIN, Role.AUDITOR, listed=False)
    async def rule(self, evt: MessageEvent, ctx: Context, args: Subcommand) -> None:
        await self._group(ctx, self.rule, "!sbg rule", args.word)

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
                f"* **Version {item.get('version')}**, {_when(item.get('time'))}{by}{reason}"
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
            "Check `!sbg rule list` and try again.",
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
        self, ctx: Context, yes: bool, question: str, effects: list[str], action: Action
    ) -> None:
        if yes or not effects:
            await action(ctx)
            return
        await self.services.confirmations.ask(ctx, " ".join((question, *effects)), guarded(action))

    @rule.subcommand(
        "add",
        help="add a rule of kind server_allow, server_block, event_type_block, partner_scope "
        "or client_allow (--audit: record only)",
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
        question = (
            f"Add a {args.kind} rule for {fmt.md(describe_params(args.kind, args.params))} "
            f"to ruleset version {ruleset.version}?"
        )

        async def add(run: Context) -> None:
            await self._add(run, args, ruleset.version)

        await self._confirm_or_run(ctx, args.yes, question, effects, add)

    async def _add(self, ctx: Context, args: RuleAddArgs, before: int) -> None:
        result = await self._write(
            ctx,
            before,
            lambda v: self.gateway.add_rule(ctx.acting, args.spec(), version=v),
            usage=f"!sbg rule add {KIND_USAGE[args.kind]}",
        )
        rule = result.rule
        if rule is None:
            raise Failed("The gateway added the rule but did not say its id.", "no rule in answer")
        ctx.note(f"added {rule.id}")
        mode = " in audit mode (it records, it does not refuse)" if rule.mode == "audit" else ""
        await ctx.reply(
            f"Rule {describe_rule(rule)} added{mode}; the ruleset is now version {result.version}."
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

        async def remove(run: Context) -> None:
            result = await self._write(
                run,
                ruleset.version,
                lambda v: self.gateway.remove_rule(run.acting, rule.id, version=v),
            )
            run.note(f"removed {rule.id}")
            await run.reply(
                f"Rule {describe_rule(rule)} removed; the ruleset is now version {result.version}."
            )

        await self._confirm_or_run(
            ctx,
            args.yes,
            f"Remove rule {describe_rule(rule)} from ruleset version {ruleset.version}?",
            broad_effects(ruleset.rules, after),
            remove,
        )

    async def _switch(self, ctx: Context, args: RuleIdArgs, enabled: bool) -> None:
        ruleset, rule = await self._target(ctx, args.rule_id)
        after = [attrs.evolve(r, enabled=enabled) if r.id == rule.id else r for r in ruleset.rules]
        state = "enabled" if enabled else "disabled"

        async def switch(run: Context) -> None:
            result = await self._write(
                run,
                ruleset.version,
                lambda v: self.gateway.update_rule(
                    run.acting, rule.id, {"enabled": enabled}, version=v
                ),
            )
            if not result.changed:
                await run.reply(
                    f"Rule {fmt.code(rule.id)} was already {state}; nothing changed "
                    f"(ruleset version {result.version})."
                )
                return
            run.note(f"{state} {rule.id}")
            await run.reply(
                f"Rule {describe_rule(rule)} is {state}; the ruleset is now version "
                f"{result.version}."
            )

        verb = "Enable" if enabled else "Disable"
        await self._confirm_or_run(
            ctx,
            args.yes,
            f"{verb} rule {describe_rule(rule)} in ruleset version {ruleset.version}?",
            broad_effects(ruleset.rules, after),
            switch,
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

        async def promote(run: Context) -> None:
            result = await self._write(
                run, ruleset.version, lambda v: self.gateway.promote(run.acting, rule.id, version=v)
            )
            if not result.changed:
                await run.reply(
                    f"Rule {fmt.code(rule.id)} was already enforced; nothing changed "
                    f"(ruleset version {result.version})."
                )
                return
            run.note(f"promoted {rule.id}")
            await run.reply(
                f"Rule {describe_rule(rule)} is now enforced; the ruleset is now version "
                f"{result.version}."
            )

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
            promote,
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
        await self._group(ctx, self.dry_run, "!sbg test", args.word)

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
        await self._evaluate(ctx, described, "!sbg test federation " + DryRunFederationArgs.USAGE)

    @dry_run.subcommand("client", help="what the gateway would do with a client request")
    @arguments(DryRunClientArgs)
    @gated("sbg test client", Role.GATEWAY_ADMIN)
    @gateway_errors
    async def test_client(self, evt: MessageEvent, ctx: Context, args: DryRunClientArgs) -> None:
        described: dict[str, Any] = {"method": args.method, "path": args.path}
        for key, value in (("user", args.user), ("user_agent", args.user_agent), ("ip", args.ip)):
            if value is not None:
                described[key] = value
        await self._evaluate(ctx, described, "!sbg test client " + DryRunClientArgs.USAGE)

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
        if trace:
            rows = [
                [
                    "→" if entry.get("decisive") else "",
                    _cell(entry.get("rule", "?"), 64),
                    str(entry.get("kind", "")),
                    str(entry.get("mode", "")),
                    str(entry.get("result", "")),
                    _cell(entry.get("detail", ""), 60),
                ]
                for entry in trace
            ]
            lines.append(table(("", "RULE", "KIND", "MODE", "RESULT", "DETAIL"), rows))
        else:
            lines.append("No rule applies.")
        await ctx.reply("\n\n".join(lines))

    # ---- decisions -------------------------------------------------------------------

    @sbg.subcommand("decisions", help="recent gateway decisions, newest first")
    @arguments(DecisionsArgs)
    @gated("sbg decisions", Role.GATEWAY_ADMIN, Role.AUDITOR)
    @gateway_errors
    async def decisions(self, evt: MessageEvent, ctx: Context, args: DecisionsArgs) -> None:
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


def describe_request(request: Any) -> str:
    """The request as the rules saw it, in one plain line."""
    request = request if isinstance(request, dict) else {}
    head = f"{request.get('class', '?')} request"
    if request.get("origin"):
        head += f" from {request['origin']}"
    if request.get("user"):
        head += f" by {request['user']}"
    parts = [head]
    if request.get("path") and request.get("path") != "-":
        parts.append(f"{request.get('method', '')} {request['path']}".strip())
    if request.get("event_types"):
        parts.append("event types " + ", ".join(map(str, request["event_types"])))
    if request.get("room"):
        parts.append(f"room {request['room']}")
    if request.get("user_agent"):
        parts.append(f"user agent {request['user_agent']}")
    if request.get("ip"):
        parts.append(f"from address {request['ip']}")
    return ", ".join(parts)


def describe_decision(record: dict[str, Any]) -> str:
    who = ""
    if record.get("origin"):
        who = f" from {fmt.md(record['origin'])}"
    elif record.get("user"):
        who = f" by {fmt.md(record['user'])}"
    what = f" {fmt.code(str(record.get('method', '')) + ' ' + str(record.get('path', '')))}"
    types = f" {fmt.md(record['event_type'])}" if record.get("event_type") else ""
    room = f" in {fmt.md(record['room'])}" if record.get("room") else ""
    rule = record.get("rule")
    mode = f" ({record['mode']})" if record.get("mode") else ""
    decided = f" — rule {fmt.code(rule)}{mode}" if rule else " — no rule"
    return (
        f"{_when(record.get('time'))} **{fmt.md(record.get('outcome', '?'))}** "
        f"{fmt.md(record.get('class', ''))}{who}{what}{types}{room}{decided}, "
        f"version {record.get('version', '?')}"
    )
