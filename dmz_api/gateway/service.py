"""The gateway service: the live ruleset, decisions, rule changes. Knows nothing about HTTP.

The interface for enforcement points (the reverse proxy, ``/v1/authz``, the antispam
callbacks)::

    gateway: GatewayService = app[GATEWAY]             # built by gateway.setup()'s cleanup_ctx
    info: RequestInfo = matrix_paths.request_info(...)   # see matrix_paths' docstring
    decision: Decision = gateway.decide(info)            # sync, no await, a few µs
    if not decision.allowed:                             # outcome "block"
        return json_error(decision.status, "M_FORBIDDEN", decision.reason)
        # status is 403, or 503 while the gateway fails closed; reason is header/JSON-safe

``decide`` reads the current ``CompiledRuleset`` (one attribute read; a rule change swaps
in a new object, so a request sees one version from start to end), evaluates it, queues
the decision record without waiting and returns. ``would_block`` (audit) is allowed.
While no ruleset can be loaded or compiled every request is refused (fail closed).
``gateway.config`` is the ``GatewayConfig`` (``listen``, ``upstream``, ``timeouts``,
``max_inspect_body``, ``trusted_proxies``).

Rule changes go through ``add_rule``/``update_rule``/``delete_rule``/``promote``/
``apply_preset``: each is one new version in the store and is live for the next request
in this process. Other replicas sharing a PostgreSQL database hear of it at once (LISTEN/
NOTIFY); every replica also checks the stored version each ``reload_interval``, which is
how SQLite replicas see changes and what covers a notification lost with its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

from aiohttp import web

from ..errors import Conflict, InvalidParam, NotFound
from .config import GatewayConfig
from .decisions import DecisionLog, GatewayMetrics
from .homeserver_check import LEDGER_RULE, check_homeserver_config
from .policy.compile import UNAVAILABLE_RULE, CompiledRuleset, unavailable_decision
from .policy.document import export_document, parse_document, plan
from .policy.evaluate import explain
from .policy.model import Decision, Mode, Outcome, RequestInfo
from .policy.rules import (
    PRESETS,
    Rule,
    new_rule,
    parse_mode,
    parse_priority,
    parse_rule_id,
    patch_rule,
)
from .rooms import ProtectedRooms
from .store import Change, CorruptRuleset, DecisionQuery, RuleStore, VersionRow

log = logging.getLogger("dmz_api.gateway")


NOT_LOADED = "the rules have not been loaded yet"
# Seconds between attempts to listen for rule changes again (PostgreSQL), doubling.
_LISTEN_RETRY_FIRST = 0.1
_LISTEN_RETRY_LAST = 10.0


@dataclass(frozen=True)
class WriteResult:
    version: int
    changed: bool
    rule: Rule | None = None
    created: bool = False


def _rule_json(rule: Rule) -> dict[str, Any]:
    data = rule.to_json()
    data.pop("updated")
    return data


class GatewayService:
    def __init__(
        self,
        config: GatewayConfig,
        store: RuleStore,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.decision_log = DecisionLog(store, config.decision_log, metrics, clock=clock)
        self._clock = clock
        self._compiled: CompiledRuleset | None = None
        self._ledger_checked: int | None = None
        self._failure: str | None = NOT_LOADED
        self._unavailable = unavailable_decision(0)
        self._write_lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        # Set when another replica may have written a version: wakes the poll loop early.
        self._changed = asyncio.Event()
        self._counters = {
            Outcome.ALLOW: metrics.allow,
            Outcome.BLOCK: metrics.block,
            Outcome.WOULD_BLOCK: metrics.would_block,
        }
        metrics.rules_loaded.set(0)
        # Protected rooms: their desired state follows the ruleset (rooms.py).
        self.rooms = ProtectedRooms(self)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        await self.rooms.start()
        self.decision_log.start()
        self._poll_task = asyncio.create_task(self._poll(), name="gateway-rule-reload")
        if self.store.notifies:
            self._listen_task = asyncio.create_task(self._listen(), name="gateway-rule-listen")

    async def stop(self) -> None:
        for task in (self._listen_task, self._poll_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listen_task = self._poll_task = None
        await self.rooms.stop()
        await self.decision_log.stop()

    @property
    def version(self) -> int | None:
        """The version being enforced, or None while failing closed."""
        return self._compiled.version if self._compiled is not None else None

    @property
    def ruleset(self) -> CompiledRuleset | None:
        """The ruleset being enforced, or None while failing closed."""
        return self._compiled

    @property
    def failure(self) -> str | None:
        """Why the gateway fails closed, or None."""
        return self._failure

    def _fail_closed(self, why: str) -> None:
        if self._failure != why:
            log.error("Gateway fails closed, refusing every request: %s", why)
        self._failure = why
        self._compiled = None
        self.metrics.rules_loaded.set(0)

    def install(self, compiled: CompiledRuleset) -> None:
        """Make ``compiled`` the live ruleset (one reference swap)."""
        previous = self._compiled
        self._compiled = compiled
        self._unavailable = unavailable_decision(compiled.version)
        if self._failure is not None and self._failure != NOT_LOADED:
            log.info("Gateway enforces ruleset version %d (recovered)", compiled.version)
        elif previous is None or previous.version != compiled.version:
            log.info("Gateway enforces ruleset version %d", compiled.version)
        self._failure = None
        self.metrics.rules_loaded.set(1)
        self.metrics.version.set(compiled.version)

    async def reload(self) -> None:
        """Load and compile the current version; fail closed when that is impossible.

        A store that cannot be read keeps a ruleset already loaded (it was valid and is the
        last known intent); a version that cannot be compiled never is.
        """
        try:
            version, rules = await self.store.load()
        except CorruptRuleset as e:
            self._fail_closed(str(e))
            return
        except Exception as e:
            self.metrics.store_errors.inc()
            if self._compiled is None:
                self._fail_closed(f"the rule store cannot be read ({type(e).__name__})")
            else:
                log.warning(
                    "Cannot read the rule store (%s); keeping version %d",
                    type(e).__name__,
                    self._compiled.version,
                )
            return
        self.metrics.store_read.set_to_current_time()
        try:
            compiled = CompiledRuleset(rules, version, int(self._clock() * 1000))
        except Exception:
            log.exception("Ruleset version %d cannot be compiled", version)
            self._fail_closed(f"ruleset version {version} cannot be compiled")
            return
        self.install(compiled)
        self._warn_ledger_homeserver(compiled)

    def _warn_ledger_homeserver(self, compiled: CompiledRuleset) -> None:
        """Say, once per version, what of the homeserver's config undoes the ledger."""
        path = self.config.homeserver_config
        if path is None or compiled.version == self._ledger_checked:
            return
        self._ledger_checked = compiled.version
        if not any(r.id == LEDGER_RULE and r.enabled for r in compiled.rules):
            return
        for problem in check_homeserver_config(path):
            log.warning("compliance-ledger is on, but the homeserver's config: %s", problem)

    async def _listen(self) -> None:
        retry = _LISTEN_RETRY_FIRST
        while True:
            started = time.monotonic()
            try:
                await self.store.listen(self._changed.set)
                log.warning("Lost the connection that hears rule changes; reconnecting")
            except Exception as e:
                log.warning(
                    "Cannot listen for rule changes (%s); polling every %g s meanwhile",
                    type(e).__name__,
                    self.config.reload_interval,
                )
            # A connection that lived a while is retried at once; one that keeps failing,
            # less and less often.
            if time.monotonic() - started > _LISTEN_RETRY_LAST:
                retry = _LISTEN_RETRY_FIRST
            await asyncio.sleep(retry)
            retry = min(retry * 2, _LISTEN_RETRY_LAST)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.config.reload_interval)
            self._changed.clear()
            try:
                current = await self.store.current_version()
                self.metrics.store_read.set_to_current_time()
            except Exception as e:
                self.metrics.store_errors.inc()
                if self._compiled is None:
                    self._fail_closed(f"the rule store cannot be read ({type(e).__name__})")
                continue
            if self._compiled is None or self._compiled.version != current:
                async with self._write_lock:
                    await self.reload()

    # ---- the hot path ----------------------------------------------------------------

    def decide(self, req: RequestInfo) -> Decision:
        """The decision for ``req``, recorded in the decision log. Synchronous and fast."""
        start = perf_counter_ns()
        compiled = self._compiled
        if compiled is not None and compiled.next_change is not None:
            compiled = self._life_span_check(compiled)
        decision = compiled.decide(req) if compiled is not None else self._unavailable
        latency_us = (perf_counter_ns() - start) // 1000
        self.record(req, decision, latency_us)
        return decision

    def _life_span_check(self, compiled: CompiledRuleset) -> CompiledRuleset:
        """``compiled``, or the same version compiled again once a rule starts or expires.

        Every replica does this by itself at the instant (no restart, no store read).
        """
        now_ms = int(self._clock() * 1000)
        next_change = compiled.next_change
        if next_change is None or now_ms < next_change:
            return compiled
        again = CompiledRuleset(compiled.rules, compiled.version, now_ms)
        log.info(
            "Ruleset version %d recompiled at a rule's start or expiry (%d rules active)",
            compiled.version,
            len(again.enforce.refs) + (len(again.prospective.refs) if again.prospective else 0),
        )
        if self._compiled is compiled:
            self._compiled = again
        return again

    def record(self, req: RequestInfo, decision: Decision, latency_us: int = 0) -> None:
        """Log ``decision`` about ``req`` and count it (``decide`` does; so do built-in guards)."""
        event_type = ",".join(req.event_types)[:255] if req.event_types else None
        mode = decision.mode
        self.decision_log.record(
            (
                int(self._clock() * 1000),
                req.source.value,
                req.request_class.value,
                req.origin,
                req.user,
                req.method,
                req.path,
                event_type,
                req.room,
                decision.rule_id,
                mode.value if mode is not None else None,
                decision.outcome.value,
                latency_us,
                decision.version,
                req.origin_raw,
                req.event_id,
                ",".join(req.actions) if req.actions else None,
            ),
            req.endpoint,
        )
        self._counters[decision.outcome].inc()

    def evaluate(self, req: RequestInfo) -> dict[str, Any]:
        """A dry run: the decision and the trace of every rule. Not recorded."""
        compiled = self._compiled
        if compiled is None:
            decision = self._unavailable
            trace: list[dict[str, Any]] = [
                {
                    "rule": UNAVAILABLE_RULE,
                    "kind": "builtin",
                    "result": "block",
                    "detail": self._failure,
                    "decisive": True,
                }
            ]
            version = None
        else:
            if req.at is not None:
                # "What if it were then": the life spans of that instant, too.
                compiled = CompiledRuleset(compiled.rules, compiled.version, int(req.at * 1000))
            elif compiled.next_change is not None:
                compiled = self._life_span_check(compiled)
            decision = compiled.decide(req)
            explanation = explain(compiled.rules, req, compiled.version, compiled.now_ms)
            if explanation.decision != decision:
                log.error(
                    "Compiled and reference evaluators disagree on %s: %s vs %s",
                    req.describe(),
                    decision,
                    explanation.decision,
                )
            trace = explanation.trace
            version = compiled.version
        return {
            "version": version,
            "request": req.describe(),
            "decision": decision.to_json(),
            "trace": trace,
        }

    # ---- reads -----------------------------------------------------------------------

    async def rules(self) -> tuple[int, list[Rule]]:
        """The current version and its rules in pipeline order, read from the store."""
        version, rules = await self.store.load()
        return version, sorted(rules, key=lambda r: r.sort_key)

    async def history(self, *, limit: int, before: int | None = None) -> list[VersionRow]:
        return await self.store.history(limit=limit, before=before)

    async def decisions(self, query: DecisionQuery) -> list[dict[str, Any]]:
        return await self.store.query_decisions(query)

    async def allow_aggregates(self, query: DecisionQuery) -> list[dict[str, Any]]:
        return await self.store.query_allows(query)

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` shows: the ruleset enforced and the decision log."""
        return {
            "version": self.version,
            "failing_closed": self._failure,
            "decision_log": self.decision_log.status(),
        }

    # ---- writes ----------------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock() * 1000)

    async def _write(
        self,
        expected: int | None,
        mutate: Callable[[dict[str, Rule]], Change],
        *,
        author: str | None,
        reason: str,
    ) -> tuple[int, Change]:
        async with self._write_lock:
            version, change = await self.store.commit(
                expected, mutate, author=author, reason=reason[:500], now=self._now()
            )
            if not change.empty or self._compiled is None or self._compiled.version != version:
                await self.reload()
        return version, change

    async def add_rule(
        self,
        spec: Mapping[str, Any],
        *,
        author: str | None,
        expected: int | None = None,
        reason: str | None = None,
    ) -> WriteResult:
        given_id = spec.get("id")
        rule_id = parse_rule_id(given_id) if given_id is not None else f"r{secrets.token_hex(4)}"
        rule = new_rule(spec, rule_id=rule_id, author=author, now=self._now())

        def mutate(rules: dict[str, Rule]) -> Change:
            if rule.id in rules:
                raise Conflict(f"Rule {rule.id} already exists")
            return Change(put=[rule], diff={"added": [_rule_json(rule)]}, result=rule)

        version, change = await self._write(
            expected,
            mutate,
            author=author,
            reason=reason or f"add {rule.kind.value} rule {rule.id}",
        )
        return WriteResult(version, True, change.result, created=True)

    async def update_rule(
        self,
        rule_id: str,
        patch: Mapping[str, Any],
        *,
        author: str | None,
        expected: int | None = None,
        reason: str | None = None,
    ) -> WriteResult:
        def mutate(rules: dict[str, Rule]) -> Change:
            old = rules.get(rule_id)
            if old is None:
                raise NotFound(f"No rule {rule_id}")
            new = patch_rule(old, patch, now=self._now())
            if _rule_json(new) == _rule_json(old):
                return Change(result=old)
            return Change(
                put=[new],
                diff={
                    "changed": [
                        {"id": rule_id, "before": _rule_json(old), "after": _rule_json(new)}
                    ]
                },
                result=new,
            )

        fields = ", ".join(sorted(k for k in patch if k != "reason"))
        version, change = await self._write(
            expected, mutate, author=author, reason=reason or f"change {fields} of rule {rule_id}"
        )
        return WriteResult(version, not change.empty, change.result)

    async def delete_rule(
        self,
        rule_id: str,
        *,
        author: str | None,
        expected: int | None = None,
        reason: str | None = None,
    ) -> WriteResult:
        def mutate(rules: dict[str, Rule]) -> Change:
            old = rules.get(rule_id)
            if old is None:
                raise NotFound(f"No rule {rule_id}")
            return Change(delete=[rule_id], diff={"removed": [_rule_json(old)]}, result=old)

        version, change = await self._write(
            expected, mutate, author=author, reason=reason or f"remove rule {rule_id}"
        )
        return WriteResult(version, True, change.result)

    async def export_rules(self) -> tuple[int, str]:
        """(version, the ruleset as one YAML document)."""
        version, rules = await self.rules()
        return version, export_document(version, rules)

    async def import_rules(
        self,
        text: str,
        *,
        author: str | None,
        expected: int | None = None,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> tuple[int, Change]:
        """Make the stored rules exactly the document's, as one version (or show the diff).

        A dry run writes nothing and answers the current version and the diff an import
        would make now; ``expected`` (If-Match) is checked either way.
        """
        specs = parse_document(text)
        if dry_run:
            version, rules = await self.store.load()
            if expected is not None and expected != version:
                raise Conflict(f"The ruleset is at version {version}, not {expected}: export again")
            return version, plan({r.id: r for r in rules}, specs, author=author, now=self._now())

        def mutate(rules: dict[str, Rule]) -> Change:
            return plan(rules, specs, author=author, now=self._now())

        return await self._write(
            expected, mutate, author=author, reason=reason or f"import {len(specs)} rules"
        )

    async def promote(
        self,
        rule_id: str,
        *,
        author: str | None,
        expected: int | None = None,
        reason: str | None = None,
    ) -> WriteResult:
        """Audit → enforce. Promoting an enforced rule changes nothing."""
        return await self.update_rule(
            rule_id,
            {"mode": Mode.ENFORCE.value},
            author=author,
            expected=expected,
            reason=reason or f"promote rule {rule_id} to enforce",
        )

    async def apply_preset(
        self,
        name: str,
        options: Mapping[str, Any],
        *,
        author: str | None,
        expected: int | None = None,
        reason: str | None = None,
    ) -> WriteResult:
        """Create the preset's rule, or restore its parameters; unchanged when it is in place."""
        preset = PRESETS.get(name)
        if preset is None:
            raise NotFound(f"No preset {name}; presets: {', '.join(sorted(PRESETS))}")
        unknown = sorted(set(options) - {"mode", "priority", "reason"})
        if unknown:
            raise InvalidParam(f"unknown field {unknown[0]!r} (a preset takes mode and priority)")
        spec: dict[str, Any] = {
            "id": preset.rule_id,
            "kind": preset.kind.value,
            "params": dict(preset.params),
            "note": preset.note,
        }
        if "mode" in options:
            spec["mode"] = parse_mode(options["mode"]).value
        if "priority" in options:
            spec["priority"] = parse_priority(options["priority"])
        now = self._now()
        fresh = new_rule(spec, rule_id=preset.rule_id, author=author, now=now)

        def mutate(rules: dict[str, Rule]) -> Change:
            old = rules.get(preset.rule_id)
            if old is None:
                return Change(put=[fresh], diff={"added": [_rule_json(fresh)]}, result=fresh)
            patch: dict[str, Any] = {"params": dict(preset.params)}
            patch.update({k: spec[k] for k in ("mode", "priority") if k in options})
            if old.kind is not preset.kind:
                raise Conflict(f"Rule {preset.rule_id} exists with another kind; remove it first")
            new = patch_rule(old, patch, now=now)
            if _rule_json(new) == _rule_json(old):
                return Change(result=old)
            return Change(
                put=[new],
                diff={
                    "changed": [{"id": old.id, "before": _rule_json(old), "after": _rule_json(new)}]
                },
                result=new,
            )

        version, change = await self._write(
            expected, mutate, author=author, reason=reason or f"apply preset {name}"
        )
        created = "added" in change.diff
        return WriteResult(version, not change.empty, change.result, created=created)


# Built by the gateway's setup() once the shared database is open.
GATEWAY: web.AppKey[GatewayService] = web.AppKey("gateway", GatewayService)
