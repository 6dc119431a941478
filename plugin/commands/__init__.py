"""One module per command family; each family is a handler class the bot registers."""

from __future__ import annotations

from .audit import AuditCommands
from .base import CommandFamily
from .guests import GuestCommands
from .misc import MiscCommands
from .tokens import TokenCommands

__all__ = ["AuditCommands", "CommandFamily", "GuestCommands", "MiscCommands", "TokenCommands"]
