"""dmz_api's two log formats: the request id on every line inside a request, none outside."""

from __future__ import annotations

import io
import json
import logging

import pytest

from dmz_api.logs import JsonFormatter, RequestIdFilter, TextFormatter, request_id_var


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_lines_carry_the_request_id_only_inside_a_request(formatter: logging.Formatter) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    log = logging.getLogger("dmz_api.test_logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("outside")
        reset = request_id_var.set("cmd-1234")
        try:
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("inside")
        finally:
            request_id_var.reset(reset)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    text = buffer.getvalue()
    if isinstance(formatter, JsonFormatter):
        outside, inside = (json.loads(line) for line in text.splitlines())
        assert "request_id" not in outside and outside["message"] == "outside"
        assert inside["request_id"] == "cmd-1234" and inside["level"] == "ERROR"
        assert "ValueError: boom" in inside["error"]
    else:
        lines = text.splitlines()
        assert lines[0].endswith("WARNING dmz_api.test_logs: outside")
        assert lines[1].endswith("ERROR dmz_api.test_logs: inside [cmd-1234]")
        assert lines[-1] == "ValueError: boom"
