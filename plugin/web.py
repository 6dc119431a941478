"""The plugin web app: ``GET /audit.jsonl?since=`` for a SIEM (bearer ``audit.export_key``),
and ``GET /metrics`` (Prometheus text, no secrets in it) with the revocation sweep's state.

``since`` is the last sequence number the caller already has (entries after it are
sent), or a duration such as ``24h`` (entries from that long ago on). Each line is one
entry with every stored field, ``prev_hash`` and ``hash`` included, so the receiver can
re-check the chain on its side.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

from aiohttp import web
from maubot.handlers import web as route

from .audit import AuditLog
from .config import Config
from .durations import parse_duration
from .revocation import Revoker


def _error(status: int, errcode: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status, headers=headers)


class AuditExport:
    def __init__(self, config: Config, audit: AuditLog, log: logging.Logger) -> None:
        self.config = config
        self.audit = audit
        self.log = log

    def _authorized(self, request: web.Request) -> bool:
        expected = self.config.audit_export_key
        kind, _, presented = request.headers.get("Authorization", "").partition(" ")
        if not expected or kind.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), expected.encode())

    @route.get("/audit.jsonl")
    async def export(self, request: web.Request) -> web.StreamResponse:
        if not self.config.audit_export_key:
            return _error(404, "M_NOT_FOUND", "The audit export is turned off")
        if not self._authorized(request):
            return _error(
                401,
                "M_UNKNOWN_TOKEN",
                "Send Authorization: Bearer <audit.export_key>",
                **{"WWW-Authenticate": 'Bearer realm="audit"'},
            )
        since = request.query.get("since", "0").strip() or "0"
        seq, since_ms = 0, 0
        if since.isdigit():
            seq = int(since)
        else:
            try:
                since_ms = int((time.time() - parse_duration(since)) * 1000)
            except ValueError:
                return _error(
                    400, "M_INVALID_PARAM", "since must be a sequence number or a duration like 24h"
                )
        head_seq, head_hash = await self.audit.head()
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Audit-Head-Seq": str(head_seq),
                "X-Audit-Head-Hash": head_hash,
            }
        )
        await response.prepare(request)
        sent = 0
        async for entry in self.audit.after(seq=seq, since_ms=since_ms):
            await response.write(json.dumps(entry.to_json(), ensure_ascii=False).encode() + b"\n")
            sent += 1
        await response.write_eof()
        self.log.info("Exported %d audit entries after #%d", sent, seq)
        return response


class SweepMetrics:
    """``GET /metrics``: when the revocation sweep last ran through, for an alert that it stalls.

    Written by hand: three gauges do not justify a dependency maubot does not bring.
    """

    def __init__(self, config: Config, revoker: Revoker) -> None:
        self.config = config
        self.revoker = revoker

    @route.get("/metrics")
    async def metrics(self, request: web.Request) -> web.Response:
        gauges = (
            ("bastion_bot_sweep_last_success_timestamp_seconds",
             "Unix time the revocation sweep last completed (0: not yet)",
             self.revoker.last_success),
            ("bastion_bot_sweep_last_attempt_timestamp_seconds",
             "Unix time the revocation sweep last started (0: not yet)",
             self.revoker.last_attempt),
            ("bastion_bot_sweep_interval_seconds",
             "Configured seconds between sweeps (0: the sweep is off)",
             float(self.config.sweep_interval)),
        )  # fmt: skip
        lines = []
        for name, doc, value in gauges:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {value!r}"]
        return web.Response(
            text="\n".join(lines) + "\n",
            content_type="text/plain",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )
