"""The two copies of ``parse_duration`` (plugin/ and dmz_api/) read every input alike.

The plugin's ``.mbp`` ships without ``dmz_api``, so each side keeps its own parser; this
table is what keeps them twins. The one known difference has its own row.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dmz_api.durations import parse_duration as service_parse
from plugin.durations import parse_duration as plugin_parse

REASON = "must be a duration such as 3600, 90s, 15m, 24h or 7d"
NOT_POSITIVE = "must be a positive number of seconds"
ZERO = "must be longer than zero"

# (input, seconds) or (input, ValueError message)
TABLE: list[tuple[object, int | str]] = [
    (3600, 3600),
    (1, 1),
    ("3600", 3600),
    ("90s", 90),
    ("15m", 900),
    ("24h", 86400),
    ("7d", 604800),
    ("2w", 1209600),
    (" 5 m ", 300),
    ("0", ZERO),
    ("0h", ZERO),
    (0, NOT_POSITIVE),
    (-5, NOT_POSITIVE),
    (True, REASON),
    (False, REASON),
    ("", REASON),
    ("1.5h", REASON),
    ("-5m", REASON),
    ("10y", REASON),
    ("5 m s", REASON),
    ("15M", REASON),
    (1.5, REASON),
    (None, REASON),
    ([60], REASON),
]

PARSERS: dict[str, Callable[[object], int]] = {"plugin": plugin_parse, "dmz_api": service_parse}


def check(parse: Callable[[object], int], value: object, expected: int | str) -> None:
    if isinstance(expected, int):
        assert parse(value) == expected
    else:
        with pytest.raises(ValueError) as raised:
            parse(value)
        assert str(raised.value) == expected


@pytest.mark.parametrize("side", PARSERS)
@pytest.mark.parametrize(("value", "expected"), TABLE, ids=repr)
def test_both_parsers_agree(side: str, value: object, expected: int | str) -> None:
    check(PARSERS[side], value, expected)


def test_the_one_difference_a_whole_float() -> None:
    check(plugin_parse, 3600.0, 3600)
    check(service_parse, 3600.0, REASON)
