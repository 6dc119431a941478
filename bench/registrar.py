"""Registrar benchmark: mint latency through dmz_api vs Synapse's admin API, page throughput.

    .venv/bin/python bench/registrar.py [--mints 300] [--seconds 5] [--concurrency 32]
        [--database sqlite|postgres]

Starts a throwaway Synapse and ``python -m dmz_api`` (registrar, kind synapse) on loopback,
on SQLite or on a throwaway PostgreSQL (where the page's rate limits live in the database).
Mints alternate between dmz_api (``POST /v1/tokens``: auth, validation, database insert; no
homeserver call, the token is the registrar's own) and Synapse's own token-creating admin
call made directly (the reference: what a mint cost when tokens were native), so both see
the same conditions; then ``GET /register?token=`` is driven at a fixed concurrency. Prints a table
and writes ``bench/results/registrar.json`` (``registrar-postgres.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import summary, write_results  # noqa: E402
from devstack.dmz import DmzApi  # noqa: E402
from devstack.postgres import Postgres  # noqa: E402
from devstack.synapse import Synapse  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "registrar.json"


async def mint_latencies(
    session: aiohttp.ClientSession, dmz: DmzApi, hs: Synapse, count: int
) -> tuple[list[float], list[float]]:
    via_dmz: list[float] = []
    direct: list[float] = []
    dmz_headers = {
        "Authorization": f"Bearer {dmz.api_key}",
        "X-Acting-User": "@bench:corp.example",
    }
    hs_headers = {"Authorization": f"Bearer {hs.admin_token}"}
    expiry = int((time.time() + 86400) * 1000)
    for i in range(count + 10):
        started = time.perf_counter()
        async with session.post(
            f"{dmz.base_url}/v1/tokens",
            json={"uses": 1, "expires_in": "24h", "note": "bench"},
            headers=dmz_headers,
        ) as resp:
            await resp.read()
            assert resp.status == 201, resp.status
        took_dmz = time.perf_counter() - started
        started = time.perf_counter()
        async with session.post(
            f"{hs.base_url}/_synapse/admin/v1/registration_tokens/new",
            json={"token": secrets.token_urlsafe(24), "uses_allowed": 1, "expiry_time": expiry},
            headers=hs_headers,
        ) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        took_direct = time.perf_counter() - started
        if i >= 10:  # warm-up: connections, caches, JIT-less but still first-call costs
            via_dmz.append(took_dmz)
            direct.append(took_direct)
    return via_dmz, direct


async def page_throughput(
    session: aiohttp.ClientSession, url: str, seconds: float, concurrency: int, status: int
) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
                assert resp.status == status, resp.status
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"requests_per_s": round(len(latencies) / elapsed, 1), **summary(latencies)}


async def run(args: argparse.Namespace, dmz: DmzApi, hs: Synapse) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        via_dmz, direct = await mint_latencies(session, dmz, hs, args.mints)
        headers = {"Authorization": f"Bearer {dmz.api_key}", "X-Acting-User": "@bench:corp"}
        async with session.post(f"{dmz.base_url}/v1/tokens", json={}, headers=headers) as resp:
            token = (await resp.json())["token"]
        form = await page_throughput(
            session,
            f"{dmz.base_url}/register?token={token}",
            args.seconds,
            args.concurrency,
            200,
        )
        unknown = await page_throughput(
            session,
            f"{dmz.base_url}/register?token=no-such-token",
            args.seconds / 2,
            args.concurrency,
            404,
        )
    dmz_summary, direct_summary = summary(via_dmz), summary(direct)
    return {
        "mint_via_dmz_api": dmz_summary,
        "mint_direct_synapse": direct_summary,
        "mint_ratio_p50": round(dmz_summary["p50_ms"] / direct_summary["p50_ms"], 2),
        "mint_ratio_p99": round(dmz_summary["p99_ms"] / direct_summary["p99_ms"], 2),
        "page_get_form": form,
        "page_get_unknown_token": unknown,
        "concurrency": args.concurrency,
        "database": args.database,
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def table(result: dict[str, Any]) -> str:
    rows = [
        ("mint via dmz_api", result["mint_via_dmz_api"], ""),
        ("mint direct (Synapse admin)", result["mint_direct_synapse"], ""),
        ("GET /register (form)", result["page_get_form"], "req/s"),
        ("GET /register (unknown)", result["page_get_unknown_token"], "req/s"),
    ]
    lines = [f"{'':30} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}"]
    for name, data, _ in rows:
        rate = f"{data['requests_per_s']:>8}" if "requests_per_s" in data else f"{'':>8}"
        lines.append(f"{name:30} {data['p50_ms']:>8} {data['p99_ms']:>8} {rate}")
    lines.append(
        f"mint ratio dmz_api/direct: p50 {result['mint_ratio_p50']}x,"
        f" p99 {result['mint_ratio_p99']}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mints", type=int, default=300, help="timed mints per path")
    parser.add_argument("--seconds", type=float, default=5.0, help="page GET duration")
    parser.add_argument("--concurrency", type=int, default=32, help="page GET connections")
    parser.add_argument(
        "--database", choices=("sqlite", "postgres"), default="sqlite", help="dmz_api's database"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-registrar-"))
    hs = Synapse(workdir / "synapse", name="bench")
    dmz: DmzApi | None = None
    postgres: Postgres | None = None
    try:
        hs.start()
        database: dict[str, str] = {}
        if args.database == "postgres":
            postgres = Postgres().start()
            database["database"] = asyncio.run(postgres.new_database())
        dmz = DmzApi(
            workdir / "dmz_api",
            {
                **database,
                "log_level": "WARNING",
                "registrar": {
                    "homeserver": {
                        "kind": "synapse",
                        "url": hs.base_url,
                        "server_name": hs.server_name,
                        "admin_token": hs.admin_token,
                    },
                    "secret": secrets.token_urlsafe(32),
                    # The benchmark is one address: lift the per-IP limit out of the way.
                    "rate_limit": {"per_minute": 1_000_000, "burst": 1_000_000},
                },
            },
            name="dmz_api-bench",
        ).start()
        result = asyncio.run(run(args, dmz, hs))
    finally:
        if dmz is not None:
            dmz.stop()
        if postgres is not None:
            postgres.stop()
        hs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    suffix = "" if args.database == "sqlite" else f"-{args.database}"
    write_results(RESULTS.with_name(f"registrar{suffix}.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
