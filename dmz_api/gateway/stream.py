"""The decision stream: decisions as JSON lines for the organisation's log engine.

One JSON object per line (schema in docs/operations.md, "Decision stream"): a full record
has ``"kind": "decision"``, an allow aggregate ``"kind": "aggregate"`` and a ``count``.
``to: file`` appends to a file (reopened when it is moved away, so logrotate works),
``stdout`` writes to standard output, ``syslog`` sends one RFC 5424 datagram per object
(facility local0, severity info) to a unix socket (``/dev/log``) or a UDP host:port.
``write`` raises OSError when a line cannot be handed over; the caller keeps it for later.
Sockets are non-blocking: a full syslog socket is an error, never a stalled event loop.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from .config import StreamConfig
from .policy.model import iso
from .store import ALLOW_COLUMNS, DECISION_COLUMNS, AllowAggregate, DecisionRecord

SCHEMA = 1
# Column names as the API spells them.
_RENAMED = {"user_id": "user", "rule_id": "rule"}
_DECISION_KEYS = tuple(_RENAMED.get(c, c) for c in DECISION_COLUMNS)
_ALLOW_KEYS = tuple(_RENAMED.get(c, c) for c in ALLOW_COLUMNS)
_HOST = socket.gethostname()[:255] or "-"
_MAX_DATAGRAM = 60_000


def decision_object(record: DecisionRecord) -> dict[str, Any]:
    data: dict[str, Any] = {"schema": SCHEMA, "kind": "decision", "time": iso(record[0])}
    data.update(zip(_DECISION_KEYS, record, strict=True))
    return data


def aggregate_object(row: AllowAggregate) -> dict[str, Any]:
    data: dict[str, Any] = {"schema": SCHEMA, "kind": "aggregate", "time": iso(row[0])}
    data.update(zip(_ALLOW_KEYS, row, strict=True))
    data["interval_s"] = 60
    data["outcome"] = "allow"
    return data


def lines(
    records: Iterable[DecisionRecord], aggregates: Iterable[AllowAggregate] = ()
) -> list[str]:
    out = [json.dumps(decision_object(r), separators=(",", ":")) for r in records]
    out += [json.dumps(aggregate_object(a), separators=(",", ":")) for a in aggregates]
    return out


class DecisionStream:
    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self._file: IO[str] | None = None
        self._inode: int | None = None
        self._socket: socket.socket | None = None

    @property
    def describe(self) -> str:
        c = self.config
        if c.to == "syslog" and c.host is not None:
            return f"syslog udp {c.host}:{c.port}"
        return f"{c.to} {c.path}" if c.path is not None else c.to

    def write(self, batch: Sequence[str]) -> None:
        if not batch:
            return
        if self.config.to == "stdout":
            sys.stdout.write("\n".join(batch) + "\n")
            sys.stdout.flush()
        elif self.config.to == "file":
            handle = self._open_file()
            handle.write("\n".join(batch) + "\n")
            handle.flush()
        else:
            self._send(batch)

    def _open_file(self) -> IO[str]:
        path = self.config.path
        assert path is not None
        try:
            inode: int | None = os.stat(path).st_ino
        except FileNotFoundError:
            inode = None
        if self._file is None or inode != self._inode:
            self.close()
            self._file = open(path, "a", encoding="utf-8")
            self._inode = os.fstat(self._file.fileno()).st_ino
        return self._file

    def _send(self, batch: Sequence[str]) -> None:
        c = self.config
        if self._socket is None:
            family = socket.AF_INET if c.host is not None else socket.AF_UNIX
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect((c.host, c.port) if c.host is not None else str(c.path))
            except OSError:
                sock.close()
                raise
            self._socket = sock
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        header = f"<134>1 {stamp} {_HOST} dmz_api-gateway {os.getpid()} decision - "
        try:
            for line in batch:
                self._socket.send((header + line).encode()[:_MAX_DATAGRAM])
        except OSError:
            self._socket.close()
            self._socket = None
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
