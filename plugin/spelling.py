"""How a command is typed under the current configuration.

Commands are named canonically (``token generate``, ``bastion help``): that name is what
the audit trail keeps and what ``@gated`` declares. ``spell`` turns it into what works in
chat now -- ``!token generate``, or ``!bastion token generate`` with ``commands.prefix:
bastion``; Bastion's own root ``bastion`` becomes the prefix itself when one is set.
"""

from __future__ import annotations

from .config import Config

ROOT = "bastion"


def root_word(config: Config) -> str:
    """The word Bastion's own commands (help, whoami) are typed after."""
    return config.command_prefix or ROOT


def spell(config: Config, command: str) -> str:
    """``command`` (canonical) as it is typed now, e.g. ``!bastion sbg rule list``."""
    head, _, rest = command.partition(" ")
    words = [root_word(config), rest] if head == ROOT else [config.command_prefix, command]
    return "!" + " ".join(word for word in words if word)
