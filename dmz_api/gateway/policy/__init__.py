"""What a request is and what the rules say about it; pure functions, no I/O.

* ``model`` — ``RequestInfo`` (the described request) and ``Decision``;
* ``matrix_paths`` — classifies a Matrix path (federation or client, event types, room);
* ``rules`` — rule kinds, their parameters and validation, presets;
* ``compile`` — a ruleset compiled once per version into the fast judge ``decide`` uses;
* ``evaluate`` — the reference evaluator that explains a decision rule by rule (dry runs).
"""
