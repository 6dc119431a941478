"""Rule expiry notices: the control rooms hear when a gateway rule expires, and a week before.

``ExpiryNotices.check()`` reads the rules (``GET /v1/rules``) and, for every enabled rule
with an ``expires_at``, posts once "expires in ..." when that instant is at most seven days
away and once "has expired" when it has passed. What was announced is remembered in the
plugin database (``rule_expiry_notice``, keyed by rule, expiry instant and stage), so a
restart does not repeat a notice, and a rule given a new ``expires_at`` is announced
afresh. A rule first seen already expired gets only the "has expired" notice. The bot runs
``check`` every ``INTERVAL`` seconds; a gateway that cannot be read is tried next time.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime

from mautrix.types import MessageType
from mautrix.util.async_db import Database

from . import fmt
from .dmz import Acting, DmzFailure, GatewayRule
from .durations import format_duration
from .services import Services

INTERVAL = 60.0
WARN_BEFORE = 7 * 86400
SOON, EXPIRED = "soon", "expired"


def _instant(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ExpiryNotices:
    def __init__(
        self,
        services: Services,
        database: Database,
        log: logging.Logger,
        *,
        clock: Callable[[], float] = time.time,
        on_expired: Callable[[Acting], None] | None = None,
    ) -> None:
        self.services = services
        self.database = database
        self.log = log
        self.clock = clock
        # Told when a rule has expired, so protected rooms' ACLs follow (rooms/keeper.py).
        self.on_expired = on_expired

    async def check(self) -> int:
        """Post what is due; how many notices were posted."""
        if not self.services.config["dmz.gateway_url"]:
            return 0
        acting = Acting(self.services.client.mxid, secrets.token_hex(8))
        try:
            ruleset = await self.services.gateway.rules(acting)
        except DmzFailure as e:
            self.log.warning("Rule expiry check skipped: %s", e)
            return 0
        now = self.clock()
        posted = 0
        for rule in ruleset.rules:
            if not rule.enabled or not rule.expires_at:
                continue
            at = _instant(rule.expires_at)
            if at is None:
                continue
            stage = EXPIRED if at <= now else SOON if at - now <= WARN_BEFORE else None
            if stage is None or await self._announced(rule, stage):
                continue
            await self._post(self._text(rule, stage, at - now))
            await self._remember(rule, stage, now)
            posted += 1
            if stage == EXPIRED and self.on_expired is not None:
                self.on_expired(acting)
        return posted

    def _text(self, rule: GatewayRule, stage: str, left: float) -> str:
        name = f"Gateway rule {fmt.code(rule.id)} ({rule.kind})"
        when = fmt.md(rule.expires_at or "")
        if stage == EXPIRED:
            return f"{name} has expired ({when}): it no longer applies."
        return (
            f"{name} expires in {format_duration(max(int(left), 60))}, at {when}. To keep it,"
            f" give it a later `expires_at` (PATCH /v1/rules/{rule.id}, or export, edit and"
            " import the ruleset)."
        )

    async def _announced(self, rule: GatewayRule, stage: str) -> bool:
        row = await self.database.fetchval(
            "SELECT 1 FROM rule_expiry_notice WHERE rule_id=$1 AND expires_at=$2 AND stage=$3",
            rule.id,
            rule.expires_at,
            stage,
        )
        return row is not None

    async def _remember(self, rule: GatewayRule, stage: str, now: float) -> None:
        await self.database.execute(
            "INSERT INTO rule_expiry_notice (rule_id, expires_at, stage, announced_at)"
            " VALUES ($1, $2, $3, $4)",
            rule.id,
            rule.expires_at,
            stage,
            int(now * 1000),
        )

    async def _post(self, text: str) -> None:
        for room_id in self.services.config.control_rooms:
            try:
                await self.services.client.send_markdown(room_id, text, msgtype=MessageType.NOTICE)
            except Exception as e:
                self.log.warning("Could not post to %s: %s", room_id, type(e).__name__)
