"""The decision log writer: the request path appends, a background task writes in batches.

``record`` never waits and never touches the disk: it appends a tuple to a bounded buffer
and returns. The writer task flushes a batch when it is full or every ``flush_interval``.
When the buffer is full, the record is dropped and counted
(``dmz_api_gateway_decisions_dropped_total``). A failed write keeps the batch for the next
attempt as long as the buffer has room.

Blocks and would-blocks are always full records. Allows are full records with
``allow: full``; with ``allow: aggregate`` (the default), and whenever the disk is below
the configured free-space floor (the log is then *degraded*), they are counted per minute
and key (source, class, origin, user, method, endpoint template, room, version) and a
minute's counts are written once it has passed. The writer also streams what it wrote as
JSON lines (``stream.py``), checks free space every few seconds and runs retention hourly
in bounded batches (``RuleStore.prune_decisions``), never past what the stream missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any

from mautrix.util.async_db import Scheme

from ..metrics import Metrics
from .config import DecisionLogConfig
from .policy.model import iso
from .store import DECISION_COLUMNS, AllowAggregate, DecisionRecord, RuleStore
from .stream import DecisionStream, lines

log = logging.getLogger("dmz_api.gateway.decisions")

_PRUNE_EVERY = 3600.0
_DISK_EVERY = 5.0
_MINUTE_MS = 60_000
_TS = DECISION_COLUMNS.index("ts")
_OUTCOME = DECISION_COLUMNS.index("outcome")
# The aggregate key, from a record: source, class, origin, user, method (then endpoint),
# room, version.
_KEY = itemgetter(
    *(DECISION_COLUMNS.index(c) for c in ("source", "class", "origin", "user_id", "method"))
)
_ROOM = DECISION_COLUMNS.index("room")
_VERSION = DECISION_COLUMNS.index("version")

# Free and total bytes of the file system holding a path.
FreeSpace = Callable[[Path], tuple[int, int]]


def disk_free(path: Path) -> tuple[int, int]:
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


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
        self.degraded = metrics.gauge(
            "dmz_api_gateway_decision_log_degraded",
            "1 while free disk space is below the floor: allows are aggregated, blocks kept",
        )
        self.free_bytes = metrics.gauge(
            "dmz_api_gateway_decision_log_free_bytes",
            "Free bytes on the decision log's file system (when it is local)",
        )
        self.aggregated = metrics.counter(
            "dmz_api_gateway_decision_allows_aggregated_total",
            "Allows recorded as per-minute counts rather than full records",
        )
        self.pruned = metrics.counter(
            "dmz_api_gateway_decisions_pruned_total",
            "Decision log rows removed by retention",
            ["table"],
        )
        self.streamed = metrics.counter(
            "dmz_api_gateway_decision_stream_lines_total", "JSON lines handed to the stream"
        )
        self.stream_errors = metrics.counter(
            "dmz_api_gateway_decision_stream_errors_total",
            "Failed stream writes (the lines are kept and retried)",
        )
        self.stream_lost = metrics.counter(
            "dmz_api_gateway_decision_stream_lost_total",
            "Lines the stream could not take in time (the database keeps them: export hold)",
        )


class DecisionLog:
    def __init__(
        self,
        store: RuleStore,
        config: DecisionLogConfig,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.time,
        free_space: FreeSpace = disk_free,
    ) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._free_space = free_space
        self._buffer: list[DecisionRecord] = []
        # (minute ms, source, class, origin, user, method, endpoint, room, version) -> count
        self._allows: dict[tuple[Any, ...], int] = {}
        self._full_allows = config.allow == "full"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self._last_disk = -_DISK_EVERY
        self.dropped = 0
        self.written = 0
        self.aggregates_written = 0
        self.degraded = False
        self.free_bytes: int | None = None
        self.last_prune: dict[str, Any] | None = None
        self.disk_path = config.disk_path or _sqlite_dir(store)
        self.stream = DecisionStream(config.stream) if config.stream is not None else None
        # Lines the stream has not taken yet, and the earliest ts among them.
        self._backlog: list[str] = []
        self._backlog_since: int | None = None
        # The earliest ts of lines the stream lost, until stored as the export hold.
        self._lost_since: int | None = None
        metrics.queue.set_function(lambda: len(self._buffer) + len(self._allows))
        metrics.degraded.set(0)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    @property
    def allow_mode(self) -> str:
        """How allows are being recorded now: ``full`` or ``aggregate``."""
        return "full" if self._full_allows else "aggregate"

    def record(self, record: DecisionRecord, endpoint: str = "") -> None:
        """Queue one record; never blocks. Drops (and counts) it when the buffer is full.
        An allow is counted in its minute's aggregate unless full allows are on."""
        if record[_OUTCOME] == "allow" and not self._full_allows:
            allows = self._allows
            ts: int = record[_TS]  # type: ignore[assignment]
            key = (
                ts - ts % _MINUTE_MS,
                *_KEY(record),
                endpoint or "-",
                record[_ROOM],
                record[_VERSION],
            )
            count = allows.get(key)
            if count is not None:
                allows[key] = count + 1
            elif len(allows) < self._config.queue_size:
                allows[key] = 1
                if len(allows) * 2 >= self._config.queue_size:
                    self._wake.set()
            else:
                self.dropped += 1
                self._metrics.dropped.inc()
                return
            self._metrics.aggregated.inc()
            return
        buffer = self._buffer
        if len(buffer) >= self._config.queue_size:
            self.dropped += 1
            self._metrics.dropped.inc()
            return
        buffer.append(record)
        if len(buffer) >= self._config.batch_size:
            self._wake.set()

    def drain_allows(self) -> list[AllowAggregate]:
        """Take every pending allow aggregate (for tests and benchmarks)."""
        allows, self._allows = self._allows, {}
        return [(*key, count) for key, count in allows.items()]

    def drain(self) -> list[DecisionRecord]:
        """Take every queued record (for tests and benchmarks that run no writer)."""
        records, self._buffer = self._buffer, []
        return records

    def start(self) -> None:
        if self._floor_set:
            self.check_disk()
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
        await self.flush_allows(everything=True)
        self._stream([])
        if self.stream is not None:
            self.stream.close()

    async def _run(self) -> None:
        try:
            await self._store.ensure_partitions(int(self._clock() * 1000))
        except Exception as e:
            log.warning("Cannot create the decision log's day partitions (%s)", e)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.flush_interval)
            self._wake.clear()
            if self._floor_set and time.monotonic() - self._last_disk >= _DISK_EVERY:
                self.check_disk()
            ok = await self.flush()
            ok = await self.flush_allows() and ok
            if not ok:
                await asyncio.sleep(self._config.flush_interval)
            if self._lost_since is not None:
                await self._hold()
            if self._clock() - self._last_prune >= _PRUNE_EVERY:
                await self.prune()

    # ---- disk pressure ---------------------------------------------------------------

    @property
    def _floor_set(self) -> bool:
        c = self._config
        return self.disk_path is not None and (c.min_free_bytes > 0 or c.min_free_percent > 0)

    def check_disk(self) -> bool:
        """Compare free space with the floor; enter or leave degraded mode. True: degraded."""
        self._last_disk = time.monotonic()
        if self.disk_path is None:
            return False
        try:
            free, total = self._free_space(self.disk_path)
        except OSError as e:
            log.warning("Cannot read free space of %s (%s)", self.disk_path, e.strerror)
            return self.degraded
        self.free_bytes = free
        self._metrics.free_bytes.set(free)
        floor = max(self._config.min_free_bytes, int(total * self._config.min_free_percent / 100))
        low = free < floor
        if low != self.degraded:
            self.degraded = low
            self._metrics.degraded.set(1 if low else 0)
            if low:
                log.warning(
                    "Decision log degraded: %d bytes free on %s, below the floor of %d;"
                    " allows are now aggregated, every block is still recorded",
                    free,
                    self.disk_path,
                    floor,
                )
            else:
                log.info(
                    "Decision log recovered: %d bytes free on %s (floor %d); allows as %s",
                    free,
                    self.disk_path,
                    floor,
                    self._config.allow,
                )
        self._full_allows = self._config.allow == "full" and not self.degraded
        return self.degraded

    # ---- writing ---------------------------------------------------------------------

    def _stream(self, new: list[str], since: int | None = None) -> None:
        """Hand ``new`` lines (and any backlog) to the stream; keep what it refuses."""
        if self.stream is None:
            return
        if new:
            self._backlog += new
            if since is not None and (self._backlog_since is None or since < self._backlog_since):
                self._backlog_since = since
        if not self._backlog:
            return
        try:
            self.stream.write(self._backlog)
        except OSError as e:
            self._metrics.stream_errors.inc()
            log.warning(
                "Cannot write %d decision lines to the %s stream (%s); will retry",
                len(self._backlog),
                self.stream.describe,
                e.strerror or type(e).__name__,
            )
            excess = len(self._backlog) - self._config.queue_size
            if excess > 0:
                # The database still has them: keep them from retention (export hold).
                del self._backlog[:excess]
                self._metrics.stream_lost.inc(excess)
                held = [t for t in (self._lost_since, self._backlog_since) if t is not None]
                self._lost_since = min(held) if held else None
            return
        self._metrics.streamed.inc(len(self._backlog))
        self._backlog = []
        self._backlog_since = None

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
            if self.stream is not None:
                self._stream(lines(batch), min(int(r[_TS] or 0) for r in batch))
        return True

    async def flush_allows(self, *, everything: bool = False) -> bool:
        """Write the aggregates of minutes that have passed (all of them with
        ``everything``, or when they fill half the buffer); False when the database
        refused them (they are kept)."""
        if not self._allows:
            return True
        current = int(self._clock() * 1000)
        current -= current % _MINUTE_MS
        if everything or len(self._allows) * 2 >= self._config.queue_size:
            done = self._allows
            self._allows = {}
        else:
            done = {k: v for k, v in self._allows.items() if k[0] < current}
            if not done:
                return True
            for key in done:
                del self._allows[key]
        rows: list[AllowAggregate] = [(*key, count) for key, count in done.items()]
        try:
            await self._store.insert_allows(rows)
        except asyncio.CancelledError:
            self._merge(done)
            raise
        except Exception:
            log.exception("Cannot write %d allow aggregates; will retry", len(rows))
            self._merge(done)
            return False
        self.aggregates_written += len(rows)
        if self.stream is not None:
            self._stream(lines((), rows), min(r[0] for r in rows))
        return True

    def _merge(self, done: dict[tuple[Any, ...], int]) -> None:
        for key, count in done.items():
            self._allows[key] = self._allows.get(key, 0) + count

    # ---- retention -------------------------------------------------------------------

    async def prune(self) -> dict[str, Any] | None:
        """One retention pass; logs and counts what it removed. None when it failed."""
        self._last_prune = self._clock()
        now = int(self._last_prune * 1000)
        cutoff = now - self._config.retention * 1000
        started = time.monotonic()
        try:
            await self._store.ensure_partitions(now)
        except Exception as e:
            # Another replica creating the same day, or rows of that day in the default
            # partition: records still land (in the default partition); pruning goes on.
            log.warning("Cannot create the decision log's day partitions (%s)", e)
        try:
            await self._hold()
            if self._backlog_since is not None:
                cutoff = min(cutoff, self._backlog_since)
            pruned = await self._store.prune_decisions(
                cutoff, batch=self._config.prune_batch, pause=self._config.prune_pause
            )
        except Exception:
            log.exception("Cannot prune old decision records")
            return None
        self._metrics.pruned.labels("decisions").inc(pruned.decisions)
        self._metrics.pruned.labels("allows").inc(pruned.allows)
        seconds = time.monotonic() - started
        self.last_prune = {
            "decisions": pruned.decisions,
            "allows": pruned.allows,
            "partitions": list(pruned.partitions),
            "cutoff_ms": pruned.cutoff,
            "seconds": round(seconds, 3),
        }
        if pruned.decisions or pruned.allows or pruned.partitions:
            log.info(
                "Decision log retention removed %d records, %d allow aggregates and %d day"
                " partitions older than %s in %.1f s",
                pruned.decisions,
                pruned.allows,
                len(pruned.partitions),
                iso(pruned.cutoff),
                seconds,
            )
        if pruned.cutoff < cutoff:
            log.warning(
                "Decision log retention held at %s: the stream has not carried the records"
                " after it (export hold)",
                iso(pruned.cutoff),
            )
        return self.last_prune

    async def _hold(self) -> None:
        if self._lost_since is None:
            return
        try:
            await self._store.hold_export(self._lost_since)
        except Exception:
            log.exception("Cannot store the export hold; will retry")
            return
        log.warning(
            "The decision stream lost lines from %s on: retention keeps the database's"
            " records from then (export hold)",
            iso(self._lost_since),
        )
        self._lost_since = None

    def status(self) -> dict[str, Any]:
        c = self._config
        return {
            "allow": c.allow,
            "allow_now": self.allow_mode,
            "degraded": self.degraded,
            "free_bytes": self.free_bytes,
            "min_free_bytes": c.min_free_bytes,
            "min_free_percent": c.min_free_percent,
            "disk_path": str(self.disk_path) if self.disk_path is not None else None,
            "pending": self.pending + len(self._allows),
            "written": self.written,
            "aggregates_written": self.aggregates_written,
            "dropped": self.dropped,
            "stream": self.stream.describe if self.stream is not None else None,
            "stream_backlog": len(self._backlog),
            "retention_s": c.retention,
            "last_prune": self.last_prune,
        }


def _sqlite_dir(store: RuleStore) -> Path | None:
    """The SQLite database's directory (a PostgreSQL server's disk is not ours to see)."""
    db = getattr(store, "db", None)
    if db is None or db.scheme != Scheme.SQLITE:
        return None
    path = getattr(db, "_path", None)
    return Path(path).resolve().parent if isinstance(path, str) and path != ":memory:" else None
