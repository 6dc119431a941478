"""Markdown pieces for replies: user text escaped, users linked through matrix.to."""

from __future__ import annotations

import re
from urllib.parse import quote

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&\"'=:])")
_SAFE_URL = re.compile(r"^https?://[^\s<>\"'`]+$")


def md(text: object) -> str:
    """``text`` shown literally: every markdown and HTML character backslash-escaped."""
    flat = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def user(user_id: str) -> str:
    return f"[{md(user_id)}](https://matrix.to/#/{quote(user_id, safe='@:')})"


def code(text: object) -> str:
    """Inline code for ids; anything that could end the span is dropped."""
    return f"`{str(text).replace('`', '')}`"


def link(url: str) -> str:
    """An autolink for a URL from dmz_api; anything odd is shown as plain text instead."""
    return f"<{url}>" if _SAFE_URL.match(url) else md(url)


def plural(count: int, word: str, words: str | None = None) -> str:
    return f"{count} {word if count == 1 else (words or word + 's')}"
