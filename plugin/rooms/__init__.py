"""Protected rooms on the bot's side: the state merge (``state``) and the keeper that
protects, checks and restores rooms (``keeper``)."""

from .keeper import Applied, RoomKeeper, state_type
from .state import GUARDED, POLICY, POWER_LEVELS, SERVER_ACL

__all__ = ["GUARDED", "POLICY", "POWER_LEVELS", "SERVER_ACL", "Applied", "RoomKeeper", "state_type"]
