"""Matrix signing for the policy server: its key, the events it signs, the servers that ask.

* ``keys`` — the ed25519 policy key (``ed25519:policy_server``), created at first start;
* ``events`` — PDUs as the spec signs them: redaction per room version, reference hashes;
* ``origin`` — ``X-Matrix`` request signatures and the requesting servers' keys.
"""
