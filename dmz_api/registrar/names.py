"""Names a guest may not take, so that no guest can pass for staff or for the service.

* Usernames: ``reserved_usernames`` are refused whatever separators or case are used
  (``Ad.Min``, ``a_d-m_i_n`` are ``admin``); ``reserved_patterns`` are regular
  expressions searched in the lower-case localpart (``^it-``, ``helpdesk``).
* Display names: one that names an ``internal_domains`` entry (``Alice (corp.example)``),
  looks like a Matrix ID, or reads as a reserved username (``Admin``, ``S U P P O R T``) is
  refused. Compared after Unicode NFKC folding, so full-width or mathematical-bold
  letters do not slip past.

Each check returns the message the page shows (an English msgid, translated by the page), or
None.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from .i18n import N_

DEFAULT_RESERVED = (
    "admin",
    "administrator",
    "root",
    "support",
    "helpdesk",
    "security",
    "abuse",
    "postmaster",
    "moderator",
    "staff",
    "system",
    "official",
    "bastion",
)
_MATRIX_ID = re.compile(r"@[^\s:]+:[A-Za-z0-9.\-]+")


def fold(text: str) -> str:
    """Lower case, compatibility-normalised: what a reader would take the text to say."""
    return unicodedata.normalize("NFKC", text).casefold()


def letters(text: str) -> str:
    """Only the letters and digits of ``text`` (folded): separators cannot hide a name."""
    return "".join(c for c in fold(text) if c.isalnum())


@dataclass(frozen=True)
class NamePolicy:
    reserved: frozenset[str] = frozenset(DEFAULT_RESERVED)
    patterns: tuple[re.Pattern[str], ...] = ()
    internal_domains: tuple[str, ...] = field(default=())

    @classmethod
    def build(
        cls, reserved: Iterable[str], patterns: Iterable[str], internal_domains: Iterable[str]
    ) -> NamePolicy:
        return cls(
            reserved=frozenset(letters(name) for name in reserved if letters(name)),
            patterns=tuple(re.compile(p) for p in patterns),
            internal_domains=tuple(fold(d).strip(".") for d in internal_domains if d.strip()),
        )

    def check_username(self, localpart: str) -> str | None:
        if letters(localpart) in self.reserved or any(p.search(localpart) for p in self.patterns):
            return N_("This username is reserved. Please choose another one.")
        return None

    def check_display_name(self, display_name: str) -> str | None:
        folded = fold(display_name)
        for domain in self.internal_domains:
            if domain in folded.replace(" ", ""):
                return N_(
                    "A display name may not name our organisation's domain; "
                    "please use your own name."
                )
        if _MATRIX_ID.search(folded):
            return N_("A display name may not look like a Matrix ID; please use your own name.")
        if letters(display_name) in self.reserved:
            return N_("This display name is reserved; please use your own name.")
        return None
