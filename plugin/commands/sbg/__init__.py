"""``!sbg``, the Secure Border Gateway family, in three layers read top to bottom.

``args`` is the grammar (what may be typed), ``render`` how answers are shown, ``failures``
how gateway errors become replies, and ``family`` the handlers that tie them to the gateway
client. The layers import downwards only: ``family`` uses the others, they use none of it.
"""

from __future__ import annotations

from .family import SbgCommands

__all__ = ["SbgCommands"]
