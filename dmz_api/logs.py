"""Logging set-up: plain text or one JSON object a line, and the request id on every line.

``request_id_var`` holds the id of the API request being served (the bot's
``X-Request-Id``, or one made up); ``RequestIdFilter`` puts it on each record as
``request_id`` so a command can be followed from the bot through dmz_api to its homeserver
calls. Outbound homeserver calls carry the same id (``dmz_api.outbound``).
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]

request_id_var: ContextVar[str | None] = ContextVar("dmz_api_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id``: the current request's id, or ``-`` outside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """The plain line, with ``[request id]`` at its end inside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # before any traceback
        line = super().formatMessage(record)
        rid = getattr(record, "request_id", "-")
        return line if rid == "-" else f"{line} [{rid}]"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ms), level, logger, message, request_id, error."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "-")
        if rid and rid != "-":
            entry["request_id"] = rid
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    """Configure the root logger once, for ``python -m dmz_api``."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The access log would carry onboarding URLs, whose query string is a secret token.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
