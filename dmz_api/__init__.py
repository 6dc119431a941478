"""dmz_api: the DMZ-side service of Bastion (registrar and gateway roles)."""

__version__ = "0.1.0"
