"""A second SIGTERM or SIGINT while dmz_api stops does not cut its clean-up short.

aiohttp's own signal handlers raise on every signal; a second one during clean-up left the
databases open and the process waiting forever on their worker threads. It happened for
real when the demo was killed outright: Linux sends the parent-death signal again each time
a thread of the dying (multi-threaded) parent exits.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devstack.dmz import DmzApi
from devstack.ports import free_port
from devstack.process import http_json, url_answers, wait_until

# An app whose clean-up takes a second, served exactly as ``python -m dmz_api`` serves one.
SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from aiohttp import web
    from dmz_api.__main__ import serve
    from dmz_api.config import ServerConfig

    done = Path(sys.argv[2])

    async def slow_cleanup(app):
        yield
        done.write_text("cleaning")
        await asyncio.sleep(1.0)
        done.write_text("cleaned")

    async def healthz(request):
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.cleanup_ctx.append(slow_cleanup)
    app.router.add_get("/healthz", healthz)
    port = int(sys.argv[1])
    serve(app, ServerConfig("127.0.0.1", port, f"http://127.0.0.1:{port}", event_loop=sys.argv[3]))
    """
)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_waits_for_the_clean_up(
    tmp_path: Path, loop: str, signum: signal.Signals
) -> None:
    port = free_port()
    done = tmp_path / "cleanup"
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(done), loop],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(url_answers(f"http://127.0.0.1:{port}/healthz"), 20, what="the app answers")
        process.send_signal(signum)
        wait_until(done.exists, 10, what="the clean-up began")
        process.send_signal(signum)  # while it is cleaning up
        time.sleep(0.1)
        process.send_signal(signum)
        assert process.wait(20) == 0, process.stderr.read() if process.stderr else ""
        assert done.read_text() == "cleaned"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_stalled_api_request_does_not_hold_the_stop(tmp_path: Path) -> None:
    """A request still being read when SIGTERM comes is ended after ``shutdown_timeout``,
    and the stop still writes the decision log (a long wait would meet systemd's SIGKILL)."""
    proxy_port = free_port()
    gateway = DmzApi(
        tmp_path,
        {
            "log_level": "INFO",
            "server": {"shutdown_timeout": 1},
            "gateway": {
                "server_name": "corp.example",
                "listen": {"host": "127.0.0.1", "port": proxy_port},
                "upstream": "http://127.0.0.1:9",
                # Written only when the gateway stops.
                "decision_log": {"flush_interval": 3600},
            },
        },
        name="stalled-stop",
    )
    gateway.start()
    try:
        status, _ = gateway.call(
            "POST",
            "/v1/rules",
            {
                "id": "quiet",
                "kind": "event_type_block",
                "params": {"event_types": ["m.room.encryption"]},
            },
            acting_user="@sec:corp.example",
        )
        assert status == 201
        status, refused = http_json(
            "PUT",
            f"http://127.0.0.1:{proxy_port}/_matrix/client/v3/rooms/!r:corp.example/state/m.room.encryption/",
            {"algorithm": "m.megolm.v1.aes-sha2"},
            token="any",
        )
        assert status == 403 and "quiet" in refused["error"], refused
        # An API request whose body never comes: its handler waits for it.
        stalled = socket.create_connection(("127.0.0.1", gateway.port))
        stalled.sendall(
            b"POST /v1/rules HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + gateway.api_key.encode() + b"\r\n"
            b'Content-Length: 1000\r\n\r\n{"id":'
        )
        time.sleep(0.3)
        proc = gateway.process.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, gateway.process.log_tail()
        stalled.close()
    finally:
        gateway.stop()
    with sqlite3.connect(tmp_path / "dmz_api.db") as db:
        rows = db.execute("SELECT rule_id, outcome FROM gateway_decisions").fetchall()
    assert rows == [("quiet", "block")]
