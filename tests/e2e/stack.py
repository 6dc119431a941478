"""Moved to ``devstack.stack`` (the demo uses it too); kept for imports written against it."""

from devstack.stack import BotStack, GuestBrowser, onboarding_url, token_id

__all__ = ["BotStack", "GuestBrowser", "onboarding_url", "token_id"]
