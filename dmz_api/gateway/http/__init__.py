"""HTTP/1.1 transport for the built-in reverse proxy, with nothing of Matrix or rules in it.

* ``listener`` — the client-facing server on asyncio protocols and httptools (pipelining,
  flow control, ``100-continue``, idle sweep, graceful stop);
* ``upstream`` — the pooled keep-alive client to the homeserver;
* ``flow`` — the write flow control both of them share.
"""
