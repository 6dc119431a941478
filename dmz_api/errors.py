"""Matrix-style errors: one exception tree and one JSON shape for every response."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An error the client is meant to see: HTTP status, Matrix errcode and one sentence."""

    status: int = 500
    errcode: str = "M_UNKNOWN"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def to_response(self) -> web.Response:
        return json_error(self.status, self.errcode, self.message, headers=self.headers)


class MissingToken(ApiError):
    status, errcode = 401, "M_MISSING_TOKEN"


class UnknownToken(ApiError):
    status, errcode = 401, "M_UNKNOWN_TOKEN"


class Forbidden(ApiError):
    status, errcode = 403, "M_FORBIDDEN"


class NotFound(ApiError):
    status, errcode = 404, "M_NOT_FOUND"


class InvalidParam(ApiError):
    status, errcode = 400, "M_INVALID_PARAM"


class BadJson(ApiError):
    status, errcode = 400, "M_NOT_JSON"


class Conflict(ApiError):
    """A write based on a stale version, or a state that does not allow the change."""

    status, errcode = 409, "M_CONFLICT"


class LimitExceeded(ApiError):
    status, errcode = 429, "M_LIMIT_EXCEEDED"

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_ms // 1000))})
        self.retry_after_ms = retry_after_ms

    def to_response(self) -> web.Response:
        return json_error(
            self.status,
            self.errcode,
            self.message,
            headers=self.headers,
            retry_after_ms=self.retry_after_ms,
        )


class Unavailable(ApiError):
    """A dependency (homeserver, database, rule store) did not answer; nothing was changed."""

    status, errcode = 503, "M_UNAVAILABLE"


def json_error(
    status: int,
    errcode: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    return web.json_response(
        {"errcode": errcode, "error": message, **extra}, status=status, headers=headers
    )
