"""Bastion's maubot plugin: ChatOps for the DMZ registrar and the border gateway."""

from .bot import BastionBot

__all__ = ["BastionBot"]
