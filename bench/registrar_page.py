"""Where a ``GET /register`` form request's time goes, in one process (no homeserver, no wrk).

    .venv/bin/python bench/registrar_page.py [--requests 500] [--lang de] [--instructions]

Builds the dmz_api app (registrar on a throwaway SQLite database, homeserver never called:
the token is the registrar's own), mints a token and sends ``--requests`` form-page GETs in
``--lang`` through aiohttp's test client. First unprofiled, timing the handler and the
template render on every request (``perf_counter`` around ``OnboardingPage.get_register``
and ``OnboardingPage.render``); then the same again under cProfile, whose cumulative times
per request are what an in-process profile reports (the profiler's own overhead included:
about three times the unprofiled figures). Prints both and writes
``bench/results/registrar_page.json``.

``--instructions`` also counts what the server executes per request, which the load on a
shared machine does not change: ``python -m dmz_api`` runs under valgrind's callgrind
(Debian's ``valgrind``; collection on only while ``--requests`` GETs of the form page, then
of the unknown-token page, are sent by 4 connections), and the instructions (all threads,
user space) are divided by the requests.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import platform
import pstats
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import summary, write_results  # noqa: E402
from devstack.dmz import DmzApi  # noqa: E402
from devstack.process import http_json  # noqa: E402
from dmz_api.app import init_app  # noqa: E402
from dmz_api.config import parse_config  # noqa: E402
from dmz_api.registrar.onboarding import OnboardingPage  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "registrar_page.json"
API_KEY = "bench-registrar-page-" + "k" * 24
# What the profile reports, per request: (label, file suffix, function name).
FUNCTIONS = [
    ("handler", "registrar/onboarding.py", "get_register"),
    ("template render", "registrar/onboarding.py", "render"),
    ("token lookup", "registrar/service.py", "page_token"),
]


def registrar_section() -> dict[str, Any]:
    return {
        "homeserver": {
            "kind": "synapse",
            "url": "http://127.0.0.1:9",  # never called: the tokens are the registrar's own
            "server_name": "dmz.test",
            "admin_token": "unused",
        },
        "secret": secrets.token_urlsafe(32),
        "show_sponsor": True,
        "rate_limit": {"per_minute": 1_000_000, "burst": 1_000_000},
    }


def config(database: str) -> Any:
    return parse_config(
        {
            "server": {"public_url": "http://dmz.test"},
            "database": database,
            "log_level": "WARNING",
            "api_keys": [{"name": "bench", "key": API_KEY, "scopes": ["tokens"]}],
            "registrar": registrar_section(),
        }
    )


def timed(samples: list[float], method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (sync or async) that also appends its duration to ``samples``."""
    if asyncio.iscoroutinefunction(method):

        async def wrapper_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - started)

        return wrapper_async

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            samples.append(time.perf_counter() - started)

    return wrapper


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    app = init_app(config(f"sqlite:{workdir / 'dmz_api.db'}"))
    route = next(r for r in app.router["register_page"] if r.method == "GET")
    page = getattr(route.handler, "__self__", None)
    assert isinstance(page, OnboardingPage), route.handler
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(
            "/v1/tokens",
            json={},
            headers={"Authorization": f"Bearer {API_KEY}", "X-Acting-User": "@bench:corp"},
        )
        assert resp.status == 201, resp.status
        token = (await resp.json())["token"]
        headers = {"Accept-Language": args.lang}

        async def requests(count: int) -> None:
            for _ in range(count):
                async with client.get("/register", params={"token": token}, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status

        await requests(50)  # warm-up: templates compiled, connections open
        # Unprofiled: the handler and the render timed on each request.
        handler_times: list[float] = []
        render_times: list[float] = []
        original_render, original_handler = page.render, route.handler
        # The route keeps its handler in ``_handler``; both are put back afterwards.
        setattr(page, "render", timed(render_times, original_render))  # noqa: B010
        setattr(route, "_handler", timed(handler_times, original_handler))  # noqa: B010
        try:
            await requests(args.requests)
        finally:
            setattr(page, "render", original_render)  # noqa: B010
            setattr(route, "_handler", original_handler)  # noqa: B010
        # Profiled.
        profile = cProfile.Profile()
        profile.enable()
        await requests(args.requests)
        profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    profiled: dict[str, float] = {}
    for label, suffix, function in FUNCTIONS:
        cumulative = sum(
            value[3]
            for (filename, _line, name), value in stats.items()
            if filename.endswith(suffix) and name == function
        )
        profiled[label] = round(cumulative / args.requests * 1000, 3)
    return {
        "requests": args.requests,
        "lang": args.lang,
        "unprofiled": {"handler": summary(handler_times), "template_render": summary(render_times)},
        "cprofile_ms_per_request": profiled,
        "machine": {"python": platform.python_version()},
    }


async def send(url: str, count: int, status: int, lang: str, connections: int = 4) -> None:
    async with aiohttp.ClientSession() as session:
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.get(url, headers={"Accept-Language": lang}) as resp:
                    await resp.read()
                    assert resp.status == status, resp.status

        await asyncio.gather(*(worker() for _ in range(connections)))


def instructions(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Millions of instructions dmz_api executes per form page and per unknown-token page."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if not valgrind or not control:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    dmz = DmzApi(workdir, {"log_level": "WARNING", "registrar": registrar_section()})
    out = workdir / "callgrind.out"
    dmz.process.argv = [
        valgrind, "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out}.%p", *dmz.process.argv,
    ]  # fmt: skip
    dmz.start(timeout=300)
    try:
        status, body = http_json(
            "POST",
            f"{dmz.base_url}/v1/tokens",
            {},
            token=dmz.api_key,
            headers={"X-Acting-User": "@bench:corp"},
        )
        assert status == 201, (status, body)
        assert dmz.process.proc is not None
        pid = str(dmz.process.proc.pid)
        result = {}
        for page, token, expected in (("form", body["token"], 200), ("unknown", "nope", 404)):
            url = f"{dmz.base_url}/register?token={token}"
            asyncio.run(send(url, 50, expected, args.lang))  # warm-up, not counted
            subprocess.run([control, "--instr=on", pid], check=True, capture_output=True)
            asyncio.run(send(url, args.requests, expected, args.lang))
            subprocess.run([control, "--instr=off", pid], check=True, capture_output=True)
            subprocess.run([control, "--dump", pid], check=True, capture_output=True)
            subprocess.run([control, "--zero", pid], check=True, capture_output=True)
            dump = max(workdir.glob(f"callgrind.out.{pid}.*"), key=lambda f: f.stat().st_mtime)
            totals = re.search(r"^totals:\s*(\d+)", dump.read_text(), re.MULTILINE)
            assert totals, f"no totals in {dump}"
            result[f"{page}_mega_instructions_per_request"] = round(
                int(totals.group(1)) / args.requests / 1e6, 3
            )
            dump.unlink()
        return result
    finally:
        dmz.stop()


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['requests']} form-page GETs in {result['lang']!r}, one process"]
    for label, key in (("handler", "handler"), ("template render", "template_render")):
        data = result["unprofiled"][key]
        lines.append(
            f"  unprofiled {label:16} mean {data['mean_ms']:6.3f} ms"
            f"  p50 {data['p50_ms']:6.3f}  p99 {data['p99_ms']:6.3f}"
        )
    for label, ms in result["cprofile_ms_per_request"].items():
        lines.append(f"  cProfile   {label:16} {ms:6.3f} ms per request (cumulative)")
    for key, value in result.get("server_instructions", {}).items():
        page = key.split("_")[0]
        lines.append(f"  dmz_api    {page:16} {value:6.3f} M instructions per request (callgrind)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="measured GETs per pass")
    parser.add_argument("--lang", default="de", help="the Accept-Language sent")
    parser.add_argument(
        "--instructions", action="store_true", help="also count dmz_api's instructions"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bastion-bench-page-") as workdir:
        result = asyncio.run(run(args, Path(workdir)))
        if args.instructions:
            result["server_instructions"] = instructions(args, Path(workdir) / "callgrind")
    print(table(result))
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
