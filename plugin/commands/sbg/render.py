"""How ``!sbg`` shows the gateway's answers: rules, tables, diffs, decisions, broad effects.

Pure functions from the client's types to markdown; user text is escaped (``fmt``) or kept
inert in code blocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ... import fmt
from ...dmz import DmzError, GatewayRule, Ruleset
from ...durations import parse_timestamp

MAX_SHOWN_SERVERS = 10


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
    if kind == "expr":
        return str(params.get("expression", ""))
    return json.dumps(params, sort_keys=True)


def life_span(not_before: str | None, expires_at: str | None) -> str:
    """`` from X until Y`` (either part only when set), for a sentence about a rule."""
    text = f" from {fmt.md(not_before)}" if not_before else ""
    return text + (f" until {fmt.md(expires_at)}" if expires_at else "")


def describe_rule(rule: GatewayRule) -> str:
    """``rule-id`` (kind params), in markdown."""
    return f"{fmt.code(rule.id)} ({rule.kind} {fmt.md(describe_params(rule.kind, rule.params))})"


def cell(value: object, width: int) -> str:
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
            cell(rule.id, 64),
            rule.kind,
            cell(describe_params(rule.kind, rule.params), 60),
            rule.mode,
            "yes" if rule.enabled else "no",
            str(rule.priority),
            cell(rule.note, 40),
        ]
        for rule in ruleset.rules
    ]
    return table(("ID", "KIND", "PARAMS", "MODE", "ENABLED", "PRIORITY", "NOTE"), rows)


def trace_table(trace: Sequence[dict[str, Any]]) -> str:
    """A dry run's trace: one row per rule it passed, the deciding one marked."""
    rows = [
        [
            "→" if entry.get("decisive") else "",
            cell(entry.get("rule", "?"), 64),
            str(entry.get("kind", "")),
            str(entry.get("mode", "")),
            str(entry.get("result", "")),
            cell(entry.get("detail", ""), 60),
        ]
        for entry in trace
    ]
    return table(("", "RULE", "KIND", "MODE", "RESULT", "DETAIL"), rows)


def timestamp(value: Any) -> str:
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
        f"{timestamp(record.get('time'))} **{fmt.md(record.get('outcome', '?'))}** "
        f"{fmt.md(record.get('class', ''))}{who}{what}{types}{room}{decided}, "
        f"version {record.get('version', '?')}"
    )


def describe_aggregate(row: dict[str, Any]) -> str:
    """One per-minute allow count: when, how many, of what, from whom."""
    who = ""
    if row.get("origin"):
        who = f" from {fmt.md(row['origin'])}"
    elif row.get("user"):
        who = f" by {fmt.md(row['user'])}"
    room = f" in {fmt.md(row['room'])}" if row.get("room") else ""
    return (
        f"{timestamp(row.get('time'))} **{row.get('count', '?')} allowed** "
        f"{fmt.md(row.get('class', ''))}{who} {fmt.code(str(row.get('method', '')))} "
        f"{fmt.md(row.get('endpoint', ''))}{room}, version {row.get('version', '?')}"
    )


def describe_status(status: dict[str, Any]) -> str:
    """``!sbg status``: ruleset version, decision-log mode, degraded or not, dropped."""
    log = status.get("decision_log") or {}
    version = status.get("version")
    head = (
        f"The gateway enforces ruleset version {version}."
        if version is not None
        else f"The gateway fails closed: {fmt.md(str(status.get('failing_closed')))}."
    )
    mode = log.get("allow_now", "?")
    lines = [head, "", f"* allows recorded: {fmt.md(str(mode))}"]
    if log.get("degraded"):
        free = log.get("free_bytes")
        lines.append(
            "* decision log **degraded**: disk space below the floor"
            + (f" ({free // 1024**2} MiB free)" if isinstance(free, int) else "")
            + f"; allows aggregated (configured: {fmt.md(str(log.get('allow')))}),"
            " every block still recorded"
        )
    else:
        lines.append("* decision log not degraded")
    lines.append(
        f"* dropped records: {log.get('dropped', '?')}; waiting to be written:"
        f" {log.get('pending', '?')}"
    )
    if log.get("stream"):
        lines.append(
            f"* stream: {fmt.md(str(log['stream']))}, {log.get('stream_backlog', 0)} lines waiting"
        )
    return "\n".join(lines)


def protections(room: dict[str, Any]) -> str:
    """``ledger, ACL, policy server`` for a protected room as the gateway lists it."""
    names = [
        label
        for key, label in (("ledger", "ledger"), ("acl", "ACL"), ("policy_server", "policy server"))
        if room.get(key)
    ]
    return ", ".join(names) or "nothing"


def room_differences(differences: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for item in differences:
        tail = "" if item.get("fixable", True) else " (I cannot fix this)"
        lines.append(f"* {fmt.md(item.get('text', ''))}{tail}")
    return lines
