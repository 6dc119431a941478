"""Confirmation of drastic commands: repeat with ``--yes``, or react with ✅.

The confirming reaction is a new request: it passes the gate again (live account status
included) and leaves its own audit entry. Only the person who asked can confirm.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import frozen
from mautrix.types import EventID, ReactionEvent, RoomID, UserID

from .gate import CommandSpec, Context, Gate, Reply

CONFIRM_KEYS = frozenset({"✅", "\u2705\ufe0f"})
Action = Callable[[Context], Awaitable[None]]


@frozen
class Pending:
    spec: CommandSpec
    room_id: RoomID
    sender: UserID
    args: dict[str, Any]
    action: Action
    reply: Reply
    expires: float
    keys: tuple[EventID, ...]


class Confirmations:
    def __init__(self, gate: Gate, ttl: float = 600.0) -> None:
        self.gate = gate
        self.ttl = ttl
        self._pending: dict[EventID, Pending] = {}

    async def ask(self, ctx: Context, question: str, action: Action) -> None:
        """Ask ``question`` in the command's thread; ``action`` runs once it is confirmed."""
        prompt = await ctx.reply(
            f"{question}  \nReact with ✅ to this message within {int(self.ttl // 60)} minutes "
            "to go ahead, or repeat the command with `--yes`."
        )
        self._expire()
        keys = tuple(key for key in (ctx.event_id, prompt) if key)
        pending = Pending(
            spec=ctx.spec,
            room_id=ctx.room_id,
            sender=ctx.sender,
            args=ctx.args,
            action=action,
            reply=ctx.reply,
            expires=time.monotonic() + self.ttl,
            keys=keys,
        )
        for key in keys:
            self._pending[key] = pending
        ctx.note("awaiting confirmation")

    async def on_reaction(self, evt: ReactionEvent) -> bool:
        """Run the confirmed action if ``evt`` confirms a pending request; True if it did."""
        relation = evt.content.relates_to
        if relation.key not in CONFIRM_KEYS or not relation.event_id:
            return False
        pending = self._pending.get(relation.event_id)
        if pending is None or pending.expires < time.monotonic():
            return False
        if evt.sender != pending.sender or evt.room_id != pending.room_id:
            return False
        for key in pending.keys:
            self._pending.pop(key, None)
        await self.gate.run(
            pending.spec,
            room_id=evt.room_id,
            event_id=evt.event_id,
            sender=evt.sender,
            args={**pending.args, "confirmed": "reaction"},
            reply=pending.reply,
            handler=pending.action,
        )
        return True

    def clear(self) -> None:
        self._pending.clear()

    def _expire(self) -> None:
        now = time.monotonic()
        for key, pending in list(self._pending.items()):
            if pending.expires < now:
                del self._pending[key]
