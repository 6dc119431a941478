"""The onboarding page's languages: which one a request gets, and its gettext catalogue.

* ``LANGUAGES`` lists what the page speaks; English is the source language (the msgids) and
  the fallback. Catalogues are compiled ``.mo`` files shipped in
  ``locale/<lang>/LC_MESSAGES/onboarding.mo`` (made from the ``.po`` beside them with Babel;
  a test checks they are current and complete). No Babel at run time.
* ``choose`` picks the language: an explicit ``lang`` (the page's switch, carried through the
  form) wins, else the best ``Accept-Language`` entry by quality value, else English.
* ``N_`` marks a message for extraction where it is written (names.py, service.py); the page
  translates it when it shows it.
* ``format_expiry`` writes a moment in UTC the way the language writes dates.
"""

from __future__ import annotations

import gettext
from datetime import UTC, datetime
from functools import cache
from importlib import resources

DOMAIN = "onboarding"
DEFAULT = "en"
# Code, and the language's name in itself (what the switch shows).
LANGUAGES: dict[str, str] = {"en": "English", "de": "Deutsch", "fr": "Français"}


def N_(message: str) -> str:
    """Mark ``message`` for extraction; it is translated where it is shown."""
    return message


MONTHS = (
    N_("January"),
    N_("February"),
    N_("March"),
    N_("April"),
    N_("May"),
    N_("June"),
    N_("July"),
    N_("August"),
    N_("September"),
    N_("October"),
    N_("November"),
    N_("December"),
)
# Translators: the moment an invitation link stops working; keep the placeholders.
EXPIRY_FORMAT = N_("{month} {day}, {year}, {time} UTC")


@cache
def translations(lang: str) -> gettext.NullTranslations:
    """The catalogue of ``lang`` (English: the msgids themselves)."""
    if lang == DEFAULT or lang not in LANGUAGES:
        return gettext.NullTranslations()
    path = resources.files(__package__).joinpath(f"locale/{lang}/LC_MESSAGES/{DOMAIN}.mo")
    with path.open("rb") as f:
        return gettext.GNUTranslations(f)


def _accepted(header: str) -> list[tuple[float, int, str]]:
    ranked = []
    for position, item in enumerate(header.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and 0 < quality <= 1:
            # Higher quality first; among equals, the order the client gave.
            ranked.append((-quality, position, tag.strip().lower()))
    return sorted(ranked)


def choose(explicit: str | None, accept_language: str | None) -> str:
    """The language to answer in (always one of ``LANGUAGES``)."""
    if explicit and explicit in LANGUAGES:
        return explicit
    for _, _, tag in _accepted(accept_language or ""):
        if tag == "*":
            return DEFAULT
        primary = tag.split("-")[0]
        if primary in LANGUAGES:
            return primary
    return DEFAULT


def format_expiry(lang: str, seconds: float) -> str:
    """``seconds`` since the epoch as a date and time in UTC, written as ``lang`` writes it."""
    moment = datetime.fromtimestamp(seconds, UTC)
    tr = translations(lang)
    return tr.gettext(EXPIRY_FORMAT).format(
        month=tr.gettext(MONTHS[moment.month - 1]),
        day=moment.day,
        year=moment.year,
        time=moment.strftime("%H:%M"),
    )
