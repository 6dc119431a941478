"""Durations as people type them ("90s", "15m", "24h", "7d") and times as the bot shows them.

``parse_duration`` is a twin of ``dmz_api/durations.py``'s, copied on purpose: the ``.mbp``
ships ``plugin/`` alone, so the bot cannot import ``dmz_api``. Change both together;
``tests/plugin/test_durations_twins.py`` runs both on one table. The one difference: this
twin also takes a whole-number float (``3600.0``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_REASON = "must be a duration such as 3600, 90s, 15m, 24h or 7d"


def parse_duration(value: object) -> int:
    """Seconds in ``value``; raises ValueError with a readable reason."""
    if isinstance(value, bool):
        raise ValueError(_REASON)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
            if seconds <= 0:
                raise ValueError("must be longer than zero")
            return seconds
    raise ValueError(_REASON)


def format_duration(seconds: float) -> str:
    """The largest whole units: 86400 -> "1d", 5400 -> "1h 30m", 42 -> "42s"."""
    remaining = max(0, int(seconds))
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
        if len(parts) == 2:
            break
    return " ".join(parts)


def parse_timestamp(value: object) -> datetime | None:
    """A time from dmz_api: ISO 8601 text, or a Unix time in seconds or milliseconds."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 10**11 else value
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def format_time(when: datetime | None) -> str:
    if when is None:
        return "never"
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
