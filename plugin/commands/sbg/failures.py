"""What ``!sbg`` says, and audits, when the gateway did not do what was asked."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from maubot import MessageEvent

from ... import fmt
from ...confirm import Resume
from ...dmz import DmzError, DmzFailure, DmzUnavailable
from ...gate import Context, Failed, GatedHandler


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


def guarded(resume: Resume) -> Resume:
    """``resume`` with gateway failures turned into replies (for confirmed actions)."""

    @functools.wraps(resume)
    async def run(ctx: Context, payload: Mapping[str, Any]) -> None:
        try:
            await resume(ctx, payload)
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
