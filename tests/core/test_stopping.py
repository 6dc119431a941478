"""A second SIGTERM or SIGINT while dmz_api stops does not cut its clean-up short.

aiohttp's own signal handlers raise on every signal; a second one during clean-up left the
databases open and the process waiting forever on their worker threads. It happened for
real when the demo was killed outright: Linux sends the parent-death signal again each time
a thread of the dying (multi-threaded) parent exits.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.process import url_answers, wait_until

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
