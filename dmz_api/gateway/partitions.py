"""Day partitions of ``gateway_decisions`` on PostgreSQL: names, bounds and the DDL.

The table is partitioned by range of ``ts`` (ms since the epoch), one partition per UTC
day named ``gateway_decisions_pYYYYMMDD``, plus ``gateway_decisions_default`` for a record
outside every day partition (a clock far off), so an insert never fails for want of one.
Retention drops a day partition whole once its last millisecond is past the cutoff.
Only constant fragments and names built here from dates go into the DDL.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

PARENT = "gateway_decisions"
DEFAULT = "gateway_decisions_default"
_NAME = re.compile(r"^gateway_decisions_p(\d{8})$")
DAY_MS = 86_400_000


def day_of(ts_ms: int) -> date:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).date()


def start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def name(day: date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def day_from_name(table: str) -> date | None:
    """The day a partition holds, or None for a table that is not a day partition."""
    match = _NAME.match(table)
    return datetime.strptime(match.group(1), "%Y%m%d").date() if match else None


def create_sql(day: date) -> str:
    start = start_ms(day)
    return (
        f"CREATE TABLE IF NOT EXISTS {name(day)} PARTITION OF {PARENT}"
        f" FOR VALUES FROM ({start}) TO ({start + DAY_MS})"
    )


def days(first_ms: int, last_ms: int) -> list[date]:
    """Every day from the one holding ``first_ms`` to the one holding ``last_ms``."""
    day, last = day_of(first_ms), day_of(last_ms)
    out: list[date] = []
    while day <= last:
        out.append(day)
        day += timedelta(days=1)
    return out
