"""Durations as people write them in configs and commands: 3600, "90s", "15m", "24h", "7d".

``plugin/durations.py`` holds a twin of ``parse_duration``, copied on purpose: the plugin's
``.mbp`` ships without ``dmz_api``. Change both together; ``tests/plugin/test_durations_twins.py``
runs both on one table. The one difference: the plugin's twin also takes ``3600.0``.
"""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def parse_duration(value: object) -> int:
    """Seconds in ``value``; raises ValueError with a readable reason."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 3600, 90s, 15m, 24h or 7d")
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
    raise ValueError("must be a duration such as 3600, 90s, 15m, 24h or 7d")
