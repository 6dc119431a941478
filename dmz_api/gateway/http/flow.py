"""Write flow control for the proxy's asyncio protocols (client side and upstream side).

The transport calls ``pause_writing``/``resume_writing`` around its high-water mark; a
writer awaits ``_writable()`` so a slow peer holds back the sender instead of buffering.
"""

from __future__ import annotations

import asyncio


class WriteFlow(asyncio.Protocol):
    def __init__(self) -> None:
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end_drain(self, error: Exception) -> None:
        """The connection is gone: a writer waiting for room gets ``error``."""
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def _writable(self, loop: asyncio.AbstractEventLoop) -> None:
        """Return once the transport takes more data."""
        if not self._write_paused:
            return
        waiter = loop.create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None
