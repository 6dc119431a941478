"""A throwaway Bastion stack on loopback: real Synapse, dmz_api, maubot and nginx launchers.

Used by the integration tests, the benchmarks and ``make demo``. Nothing here is for
production; see ``deploy/`` for that.
"""
