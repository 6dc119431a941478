"""The decision log writer: the request path appends, a background task writes in batches.

``record`` never waits and never touches the disk: it appends a tuple to a bounded buffer
and returns. The writer task flushes a batch when it is full or every ``flush_interval``.
When the buffer is full, the record is dropped and counted
(``dmz_api_gateway_decisions_dropped_total``). A failed write keeps the batch for the next
attempt as long as the buffer has room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..metrics import Metrics
from .config import DecisionLogConfig
from .store import DecisionRecord, RuleStore

log = logging.getLogger("dmz_api.gateway.decisions")

_PRUNE_EVERY = 3600.0


class GatewayMetrics:
    """The gateway's Prometheus series, bound once so the hot path only increments."""

    def __init__(self, metrics: Metrics) -> None:
        decisions = metrics.counter(
            "dmz_api_gateway_decisions_total", "Gateway decisions by outcome", ["outcome"]
        )
        self.allow = decisions.labels("allow")
        self.block = decisions.labels("block")
        self.would_block = decisions.labels("would_block")
        self.dropped = metrics.counter(
            "dmz_api_gateway_decisions_dropped_total",
            "Decision records dropped because the log buffer was full or the database failed",
        )
        self.written = metrics.counter(
            "dmz_api_gateway_decisions_written_total", "Decision records written to the database"
        )
        self.version = metrics.gauge(
            "dmz_api_gateway_ruleset_version", "The ruleset version the gateway enforces"
        )
        self.rules_loaded = metrics.gauge(
            "dmz_api_gateway_rules_loaded",
            "1 while the gateway enforces a ruleset, 0 while it fails closed",
        )
        self.queue = metrics.gauge(
            "dmz_api_gateway_decision_queue", "Decision records waiting to be written"
        )
        self.store_errors = metrics.counter(
            "dmz_api_gateway_rule_store_errors_total",
            "Failed reads of the rule store (the last loaded ruleset stays in force)",
        )
        self.store_read = metrics.gauge(
            "dmz_api_gateway_rule_store_last_read_timestamp_seconds",
            "Unix time of the last successful read of the rule store",
        )


class DecisionLog:
    def __init__(
        self,
        store: RuleStore,
        config: DecisionLogConfig,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._buffer: list[DecisionRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self.dropped = 0
        self.written = 0
        metrics.queue.set_function(lambda: len(self._buffer))

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, record: DecisionRecord) -> None:
        """Queue one record; never blocks. Drops (and counts) it when the buffer is full."""
        buffer = self._buffer
        if len(buffer) >= self._config.queue_size:
            self.dropped += 1
            self._metrics.dropped.inc()
            return
        buffer.append(record)
        if len(buffer) >= self._config.batch_size:
            self._wake.set()

    def drain(self) -> list[DecisionRecord]:
        """Take every queued record (for tests and benchmarks that run no writer)."""
        records, self._buffer = self._buffer, []
        return records

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-decision-log")

    async def stop(self) -> None:
        """Stop the writer and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.flush_interval)
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(self._config.flush_interval)
            if self._clock() - self._last_prune >= _PRUNE_EVERY:
                await self._prune()

    async def flush(self) -> bool:
        """Write every queued record in batches; False when the database refused one."""
        size = self._config.batch_size
        while self._buffer:
            batch = self._buffer[:size]
            del self._buffer[:size]
            try:
                await self._store.insert_decisions(batch)
            except asyncio.CancelledError:
                self._buffer[:0] = batch
                raise
            except Exception:
                log.exception("Cannot write %d decision records; will retry", len(batch))
                room = self._config.queue_size - len(self._buffer)
                kept = batch[: max(0, room)]
                lost = len(batch) - len(kept)
                if lost:
                    self.dropped += lost
                    self._metrics.dropped.inc(lost)
                self._buffer[:0] = kept
                return False
            self.written += len(batch)
            self._metrics.written.inc(len(batch))
        return True

    async def _prune(self) -> None:
        self._last_prune = self._clock()
        cutoff = int((self._last_prune - self._config.retention) * 1000)
        try:
            await self._store.prune_decisions(cutoff)
        except Exception:
            log.exception("Cannot prune old decision records")
