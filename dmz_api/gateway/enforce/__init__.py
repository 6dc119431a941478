"""The enforcement points: each describes a request and asks ``GatewayService.decide``.

* ``proxy`` — the built-in reverse proxy in front of the homeserver (``gateway.listen``);
* ``authz`` — the forward-auth endpoint for nginx ``auth_request`` and similar proxies;
* ``antispam`` — the synapse-http-antispam callbacks a Synapse module calls per event.
"""
