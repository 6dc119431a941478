"""The free-space floor on a real, small file system: a tmpfs the test mounts (root only;
skipped elsewhere) holds the SQLite database; full allow records fill it until the floor
is crossed, then allows are aggregated and every block is still written."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mautrix.util.async_db import Database

from dmz_api.gateway.decisions import DecisionLog, GatewayMetrics
from dmz_api.gateway.migrations import upgrade_table
from dmz_api.gateway.store import DecisionQuery, RuleStore
from dmz_api.metrics import Metrics

from .test_decision_volume import log_config, rec

pytestmark = pytest.mark.slow

SIZE = 8 * 1024**2
FLOOR = 5 * 1024**2


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


async def test_a_filling_disk_degrades_to_aggregates_and_keeps_blocks(small_disk: Path) -> None:
    db = Database.create(f"sqlite:{small_disk / 'gw.db'}", upgrade_table=upgrade_table)
    await db.start()
    store = RuleStore(db)
    metrics = Metrics()
    log = DecisionLog(
        store, log_config(allow="full", min_free_bytes=FLOOR), GatewayMetrics(metrics)
    )
    try:
        assert log.disk_path == small_disk.resolve()
        assert log.check_disk() is False and log.allow_mode == "full"
        n = 0
        for _ in range(200):  # bounded: ~8 MiB of records fills the disk long before
            for _ in range(500):
                log.record(rec(n), "client_send")
                n += 1
            assert await log.flush()
            if log.check_disk():
                break
        assert log.degraded, "the disk never reached the floor"
        assert log.free_bytes is not None and log.free_bytes < FLOOR
        full_allows = len(await store.query_decisions(DecisionQuery(outcome="allow", limit=10**6)))
        # Below the floor: allows are counted, blocks still written whole.
        for k in range(300):
            log.record(rec(n + k), "client_send")
            log.record(rec(n + k, "block"), "client_send")
        assert log.pending == 300
        assert await log.flush()
        await log.flush_allows(everything=True)
        blocks = await store.query_decisions(DecisionQuery(outcome="block", limit=1000))
        assert len(blocks) == 300
        allows = await store.query_decisions(DecisionQuery(outcome="allow", limit=10**6))
        assert len(allows) == full_allows  # no new full allow record
        counted = await store.query_allows(DecisionQuery(limit=1000))
        assert sum(a["count"] for a in counted) == 300
        assert log.dropped == 0 and log.status()["degraded"] is True
        text = metrics.render().decode()
        assert "dmz_api_gateway_decision_log_degraded 1.0" in text
    finally:
        await db.stop()
