"""Confirmation of drastic commands: repeat with ``--yes``, or react with ✅.

A request that needs confirming is stored in the plugin database (``confirmation``) with
its expiry and what its command needs to run it (``payload``), so a restart neither loses
nor replays it. Each confirmable command registers how to resume from that payload; the
direct ``--yes`` path runs the same function. The confirming reaction is a new request:
it passes the gate again (live account status included) and leaves its own audit entry.
Only the person who asked can confirm; one conditional UPDATE claims a confirmation, so
a ✅ delivered twice, or again after a restart, runs the action at most once. A ✅ after
the expiry is refused with a reply (and audited).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from maubot.matrix import MaubotMatrixClient, parse_formatted
from mautrix.types import (
    EventID,
    EventType,
    Format,
    MessageType,
    ReactionEvent,
    TextMessageEventContent,
)

from . import fmt
from .db import ConfirmationStore, PendingConfirmation
from .gate import CommandSpec, Context, Gate, Refused, Reply
from .spelling import spell

CONFIRM_KEYS = frozenset({"✅", "\u2705\ufe0f"})
# Expired confirmations are kept this long, so a late ✅ is answered rather than ignored.
KEEP_EXPIRED_MS = 7 * 86400 * 1000
Resume = Callable[[Context, Mapping[str, Any]], Awaitable[None]]


def now_ms() -> int:
    return int(time.time() * 1000)


class Confirmations:
    def __init__(
        self,
        gate: Gate,
        store: ConfirmationStore,
        client: MaubotMatrixClient,
        log: logging.Logger,
        ttl: float = 600.0,
    ) -> None:
        self.gate = gate
        self.store = store
        self.client = client
        self.log = log
        self.ttl = ttl
        self._resumes: dict[str, tuple[CommandSpec, Resume]] = {}

    def register(self, spec: CommandSpec, resume: Resume) -> None:
        """``resume(ctx, payload)`` runs ``spec``'s command once it is confirmed."""
        self._resumes[spec.name] = (spec, resume)

    async def run_or_ask(
        self, ctx: Context, yes: bool, question: str, payload: Mapping[str, Any]
    ) -> None:
        """Run now with ``--yes``, otherwise ask ``question`` and store the request."""
        _, resume = self._resumes[ctx.spec.name]
        if yes:
            await resume(ctx, payload)
            return
        await self.ask(ctx, question, payload)

    async def ask(self, ctx: Context, question: str, payload: Mapping[str, Any]) -> None:
        """Store the request, then ask ``question`` in the command's thread."""
        if ctx.spec.name not in self._resumes:
            raise KeyError(f"{ctx.spec.name} has no registered resume")
        now = now_ms()
        await self.store.forget_before(now - KEEP_EXPIRED_MS)
        pending = PendingConfirmation(
            request_event=ctx.event_id,
            prompt_event=None,
            thread_root=ctx.thread_root,
            room_id=ctx.room_id,
            sender=ctx.sender,
            command=ctx.spec.name,
            args=ctx.args,
            payload=dict(payload),
            expires_at=now + int(self.ttl * 1000),
            confirmed_at=None,
        )
        await self.store.add(pending)
        prompt = await ctx.reply(
            f"{question}  \nReact with ✅ to this message within {int(self.ttl // 60)} minutes "
            "to go ahead, or repeat the command with `--yes`."
        )
        if prompt:
            await self.store.set_prompt(ctx.event_id, prompt)
        ctx.note("awaiting confirmation")

    async def on_reaction(self, evt: ReactionEvent) -> bool:
        """Run the confirmed action if ``evt`` confirms a pending request; True if it did."""
        relation = evt.content.relates_to
        if relation.key not in CONFIRM_KEYS or not relation.event_id:
            return False
        pending = await self.store.find(relation.event_id)
        if pending is None or pending.confirmed_at is not None:
            return False
        if evt.sender != pending.sender or evt.room_id != pending.room_id:
            return False
        registered = self._resumes.get(pending.command)
        if registered is None:
            self.log.warning("No resume for confirmed %s; ignored", pending.command)
            return False
        spec, resume = registered
        now = now_ms()
        if await self.store.claim(pending.request_event, now):

            async def handler(ctx: Context) -> None:
                await resume(ctx, pending.payload)

        elif pending.expires_at <= now:

            async def handler(ctx: Context) -> None:
                raise Refused(
                    f"That confirmation of {fmt.code(spell(self.gate.config, spec.name))} "
                    f"expired (they last {int(self.ttl // 60)} minutes), so nothing was done; "
                    "send the command again.",
                    "confirmation expired",
                )

        else:
            return False  # another delivery of a ✅ claimed it first
        await self.gate.run(
            spec,
            room_id=evt.room_id,
            event_id=evt.event_id,
            sender=evt.sender,
            args={**pending.args, "confirmed": "reaction"},
            reply=self._reply_to(pending),
            handler=handler,
            thread_root=pending.thread_root,
        )
        return True

    def _reply_to(self, pending: PendingConfirmation) -> Reply:
        """A reply to the original request, in its thread, as ``evt.reply`` would send it."""

        async def reply(text: str) -> EventID:
            content = TextMessageEventContent(msgtype=MessageType.NOTICE, format=Format.HTML)
            content.body, content.formatted_body = await parse_formatted(text, render_markdown=True)
            if pending.thread_root:
                content.set_thread_parent(
                    pending.thread_root, last_event_in_thread=pending.request_event
                )
            content.set_reply(pending.request_event)
            return await self.client.send_message_event(
                pending.room_id, EventType.ROOM_MESSAGE, content
            )

        return reply
