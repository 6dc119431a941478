"""Policy as code: the whole ruleset as one YAML document, and what importing one changes.

``export_document(version, rules)`` writes the document; ``parse_document(text)`` reads one
back into rule specs (every rule validated as ``POST /v1/rules`` would, ids required and
unique); ``plan(current, specs, author, now)`` is the ``Change`` that makes the stored rules
exactly the document's: rules not in it are removed, new ones added, the others changed
where a field differs (their ``author`` and ``created`` are kept; an unchanged rule is not
touched). The format (``docs/rules.md``, "Policy as code")::

    format: bastion.gateway.rules/1
    version: 12            # the version exported; informational (If-Match guards imports)
    rules:
      - id: no-e2ee
        kind: event_type_block
        params: {event_types: [m.room.encryption], scope: both}
        mode: enforce      # optional fields take the API's defaults
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import yaml

from ...errors import InvalidParam
from ..store import Change
from .rules import Rule, new_rule, parse_rule_id

FORMAT = "bastion.gateway.rules/1"
MAX_DOCUMENT = 2 * 1024 * 1024
MAX_RULES = 10_000
# The fields a document holds per rule (author and times are the store's, not the author's).
FIELDS = ("id", "kind", "params", "mode", "enabled", "priority", "note", "not_before", "expires_at")


def rule_spec(rule: Rule) -> dict[str, Any]:
    data = rule.to_json()
    spec = {key: data[key] for key in FIELDS}
    for key in ("not_before", "expires_at"):
        if spec[key] is None:
            del spec[key]
    if not spec["note"]:
        del spec["note"]
    return spec


def export_document(version: int, rules: Sequence[Rule]) -> str:
    body = {"format": FORMAT, "version": version, "rules": [rule_spec(r) for r in rules]}
    header = f"# Bastion gateway ruleset, version {version}: {len(rules)} rules\n"
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)


def parse_document(text: str) -> list[dict[str, Any]]:
    if len(text) > MAX_DOCUMENT:
        raise InvalidParam(f"the document may be at most {MAX_DOCUMENT} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidParam(f"the document is not YAML{where}") from None
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise InvalidParam(f"the document must be a mapping with format: {FORMAT}")
    unknown = sorted(set(data) - {"format", "version", "rules"})
    if unknown:
        raise InvalidParam(f"unknown top-level key {unknown[0]!r}")
    rules = data.get("rules") or []
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise InvalidParam(f"rules must be a list of at most {MAX_RULES} rules")
    specs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(rules):
        if not isinstance(item, Mapping):
            raise InvalidParam(f"rules[{index}] must be a mapping")
        unknown = sorted(set(item) - set(FIELDS))
        if unknown:
            raise InvalidParam(f"rules[{index}]: unknown field {unknown[0]!r}")
        try:
            rule_id = parse_rule_id(item.get("id"))
        except InvalidParam as e:
            raise InvalidParam(f"rules[{index}]: {e}") from None
        if rule_id in seen:
            raise InvalidParam(f"rules[{index}]: id {rule_id} appears twice")
        seen.add(rule_id)
        spec = dict(item)
        for key in ("not_before", "expires_at"):
            # YAML reads an unquoted 2027-03-31 as a date: take it as written.
            if key in spec and spec[key] is not None and not isinstance(spec[key], str):
                spec[key] = spec[key].isoformat() if hasattr(spec[key], "isoformat") else spec[key]
        specs.append(spec)
    return specs


def plan(
    current: Mapping[str, Rule], specs: Sequence[Mapping[str, Any]], *, author: str | None, now: int
) -> Change:
    """The change that makes ``current`` the document's rules (validates every spec)."""
    put: list[Rule] = []
    added: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for index, spec in enumerate(specs):
        rule_id = str(spec["id"])
        try:
            fresh = new_rule(spec, rule_id=rule_id, author=author, now=now)
        except InvalidParam as e:
            raise InvalidParam(f"rules[{index}] ({rule_id}): {e}") from None
        old = current.get(rule_id)
        if old is None:
            put.append(fresh)
            added.append(rule_spec(fresh))
            continue
        if rule_spec(old) == rule_spec(fresh):
            continue
        if old.kind is not fresh.kind:
            # A new kind is a new rule under the old id.
            new = fresh
        else:
            new = replace(fresh, author=old.author, created=old.created)
        put.append(new)
        changed.append({"id": rule_id, "before": rule_spec(old), "after": rule_spec(new)})
    wanted = {str(spec["id"]) for spec in specs}
    removed = [
        rule_spec(rule) for rule_id, rule in sorted(current.items()) if rule_id not in wanted
    ]
    diff: dict[str, list[Any]] = {}
    if added:
        diff["added"] = added
    if removed:
        diff["removed"] = removed
    if changed:
        diff["changed"] = changed
    return Change(put=put, delete=[r["id"] for r in removed], diff=diff)
