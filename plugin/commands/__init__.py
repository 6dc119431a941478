"""Every command family, one module each (``sbg/`` a package): handler classes the bot registers."""

from __future__ import annotations

from .audit import AuditCommands
from .base import CommandFamily
from .bastion import BastionCommands
from .guests import GuestCommands
from .sbg import SbgCommands
from .tokens import TokenCommands

__all__ = [
    "AuditCommands",
    "BastionCommands",
    "CommandFamily",
    "GuestCommands",
    "SbgCommands",
    "TokenCommands",
]
