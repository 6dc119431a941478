"""Gateway benchmark: our reverse proxy vs nginx ``proxy_pass`` vs direct, and decision time.

    .venv/bin/python bench/gateway.py [--seconds 8] [--warmup 2] [--connections 32]
        [--event-loop uvloop|asyncio]

Starts, on loopback, one trivial aiohttp upstream (a separate process), nginx
(``proxy_pass`` with a keep-alive upstream pool) and ``python -m dmz_api`` with the gateway
proxy enforcing a 3-rule pipeline (the compliance-ledger preset, a ``server_allow`` and a
``client_allow``). ``wrk`` (one thread) drives the same request, a ``PUT .../send/
m.room.message/{txnId}`` with a small JSON body, at each target in turn: throughput and
p50/p99 latency, as ratios to nginx. Then it times ``GatewayService.decide`` at 10 and
1,000 rules (``bench.decisions``), and reads ``dmz_api_gateway_decisions_dropped_total``
from ``/metrics`` (it must be 0). Prints a table and writes ``bench/results/gateway.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import write_results  # noqa: E402
from devstack.dmz import DmzApi  # noqa: E402
from devstack.nginx import Nginx  # noqa: E402
from devstack.ports import free_port  # noqa: E402
from devstack.process import ManagedProcess, wait_until  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gateway.json"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
PATH = "/_matrix/client/v3/rooms/!bench:corp.example/send/m.room.message/txn1"
USER_AGENT = "Element/1.11.50 (bench)"
WRK_SCRIPT = f"""
wrk.method = "PUT"
wrk.path = "{PATH}"
wrk.body = '{{"msgtype":"m.text","body":"hello from the gateway benchmark"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer syt_YmVuY2g_benchmarktoken_0000"
wrk.headers["User-Agent"] = "{USER_AGENT}"
"""
RULES: list[dict[str, Any]] = [
    {"kind": "server_allow", "params": {"servers": ["*.partner.example"]}, "note": "partners"},
    {
        "kind": "client_allow",
        "params": {"user_agents": ["^Element/", "Element Desktop"], "networks": ["127.0.0.0/8"]},
        "note": "approved apps on approved networks",
    },
]


# ---- the upstream (run as a separate process: ``bench/gateway.py --upstream PORT``) ------


def serve_upstream(port: int) -> None:
    from aiohttp import web

    body = b'{"event_id":"$WLGTSEFSEBfyCuD6sm6XYSb6bfRFXAs0UG4GP4tkuFg"}'

    whoami = b'{"user_id":"@bench:corp.example"}'

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if request.path == "/_matrix/client/v3/account/whoami":  # the gateway's user lookup
            return web.Response(body=whoami, content_type="application/json")
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---- wrk -------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2)], 3)


def run_wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, Any]:
    output = subprocess.run(
        [
            WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
            "-s", str(script), url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    total = re.search(r"(\d+) requests in", output)
    if not (rate and p50 and p99 and total):
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    return {
        "requests_per_s": round(float(rate.group(1)), 1),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "requests": int(total.group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else None,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    name: str, url: str, script: Path, args: argparse.Namespace, pid: int | None = None
) -> dict[str, Any]:
    """One warm-up and one measured wrk run; with ``pid``, that process's CPU per request."""
    run_wrk(url, script, args.warmup, args.connections)
    before = cpu_seconds(pid) if pid else 0.0
    result = run_wrk(url, script, args.seconds, args.connections)
    if pid:
        used = cpu_seconds(pid) - before
        result["cpu_us_per_request"] = round(used / result["requests"] * 1e6, 1)
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(f"{name}: failed requests during the run: {result}")
    return result


# ---- the stack -------------------------------------------------------------------------


def start_upstream(workdir: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    process = ManagedProcess(
        "upstream",
        [sys.executable, str(Path(__file__).resolve()), "--upstream", str(port)],
        log_path=workdir / "upstream.log",
    )
    proc = process.start()

    def answers() -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", b"{}", method="PUT")
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)

    wait_until(answers, 15, "upstream", proc)
    return process, port


def start_nginx(workdir: Path, upstream_port: int) -> Nginx:
    return Nginx(
        workdir / "nginx",
        """
        location / {
            proxy_pass http://upstream_pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }
        """,
        http_extra=f"upstream upstream_pool {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}",
    ).start()


def start_gateway(
    workdir: Path, upstream_port: int, event_loop: str, user_lookup: bool = False
) -> tuple[DmzApi, str]:
    proxy_port = free_port()
    dmz = DmzApi(
        workdir / ("dmz_api-lookup" if user_lookup else "dmz_api"),
        {
            "log_level": "WARNING",
            "server": {"event_loop": event_loop},
            "gateway": {
                "server_name": "corp.example",
                "upstream": f"http://127.0.0.1:{upstream_port}",
                "listen": {"host": "127.0.0.1", "port": proxy_port},
                "user_lookup": {"enabled": user_lookup},
            },
        },
        name="dmz_api-bench-lookup" if user_lookup else "dmz_api-bench",
    ).start()
    status, body = dmz.call(
        "POST", "/v1/rules/preset/compliance-ledger", {}, acting_user="@bench:corp.example"
    )
    assert status in (200, 201), (status, body)
    for rule in RULES:
        status, body = dmz.call("POST", "/v1/rules", rule, acting_user="@bench:corp.example")
        assert status == 201, (status, body)
    status, body = dmz.call("GET", "/v1/rules")
    assert status == 200 and len(body["rules"]) == 3, body
    return dmz, f"http://127.0.0.1:{proxy_port}"


def metric(dmz: DmzApi, name: str) -> float:
    with urllib.request.urlopen(f"{dmz.base_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- the run ---------------------------------------------------------------------------


def ratios(result: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    return {
        "throughput": round(result["requests_per_s"] / base["requests_per_s"], 2),
        "p50": round(result["p50_ms"] / base["p50_ms"], 2),
        "p99": round(result["p99_ms"] / base["p99_ms"], 2),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from bench.decisions import decide_benchmark

    script = workdir / "put.lua"
    script.write_text(WRK_SCRIPT)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    upstream, upstream_port = start_upstream(workdir)
    nginx: Nginx | None = None
    dmz: DmzApi | None = None
    try:
        nginx = start_nginx(workdir, upstream_port)
        dmz, proxy_url = start_gateway(workdir, upstream_port, args.event_loop)
        http: dict[str, Any] = {
            "direct": measure("direct", f"http://127.0.0.1:{upstream_port}", script, args),
            "nginx": measure("nginx", nginx.base_url, script, args),
            "gateway": measure("gateway", proxy_url, script, args, dmz.process.proc.pid),
        }
        time.sleep(1.0)  # one more flush interval of the decision log
        decisions = metric(dmz, "dmz_api_gateway_decisions_total")
        dropped = metric(dmz, "dmz_api_gateway_decisions_dropped_total")
        written = metric(dmz, "dmz_api_gateway_decisions_written_total")
        dmz.stop()
        dmz = None
        # The same gateway with the user lookup on: one token, so after the first request
        # every lookup is a cache hit (what a steady client costs).
        dmz, proxy_url = start_gateway(workdir, upstream_port, args.event_loop, user_lookup=True)
        http["gateway_user_lookup"] = measure(
            "gateway_user_lookup", proxy_url, script, args, dmz.process.proc.pid
        )
        asked = metric(dmz, 'dmz_api_gateway_user_lookups_total{result="asked"}')
        cached = metric(dmz, 'dmz_api_gateway_user_lookups_total{result="cached"}')
    finally:
        if dmz is not None:
            dmz.stop()
        if nginx is not None:
            nginx.stop()
        upstream.stop()
    decide = {str(n): decide_benchmark(n, iterations=args.iterations) for n in (10, 1000)}
    return {
        "request": f"PUT {PATH} (small JSON body)",
        "event_loop": args.event_loop,
        "wrk": {
            "threads": 1,
            "connections": args.connections,
            "seconds": args.seconds,
            "warmup_seconds": args.warmup,
        },
        "http": http,
        "ratio_to_nginx": {
            "direct": ratios(http["direct"], http["nginx"]),
            "gateway": ratios(http["gateway"], http["nginx"]),
            "gateway_user_lookup": ratios(http["gateway_user_lookup"], http["nginx"]),
        },
        "user_lookup_vs_off": ratios(http["gateway_user_lookup"], http["gateway"]),
        "user_lookups": {"asked": asked, "cached": cached},
        "decision_log": {"decisions": decisions, "written": written, "dropped": dropped},
        "decide_us": {
            n: {k: round(v, 2) for k, v in r.items() if k not in ("rules", "dropped")}
            for n, r in decide.items()
        },
        "targets": {
            "gateway_throughput_vs_nginx": 0.5,
            "decide_p99_us_at_1000_rules": 50,
        },
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            # Other work on the machine skews every figure: a load above ~0.5 before the run
            # means the ratios are not to be trusted.
            "load_1min_before": round(load_before, 2),
        },
    }


def table(result: dict[str, Any]) -> str:
    http, ratio = result["http"], result["ratio_to_nginx"]
    lines = [
        f"{result['request']}, wrk 1 thread, {result['wrk']['connections']} connections,"
        f" {result['wrk']['seconds']:g} s each",
        f"{'':22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs nginx':>9}",
    ]
    for name in ("direct", "nginx", "gateway", "gateway_user_lookup"):
        data = http[name]
        vs = f"{ratio[name]['throughput']:.2f}x" if name in ratio else "1.00x"
        label = f"gateway ({result['event_loop']})" if name == "gateway" else name
        lines.append(
            f"{label:22} {data['requests_per_s']:>9.0f} {data['p50_ms']:>8.2f}"
            f" {data['p99_ms']:>8.2f} {vs:>9}"
        )
    lines.append(
        f"gateway latency vs nginx: p50 {ratio['gateway']['p50']:.2f}x,"
        f" p99 {ratio['gateway']['p99']:.2f}x;"
        f" gateway CPU {http['gateway']['cpu_us_per_request']:.0f} µs per request"
    )
    for n, data in result["decide_us"].items():
        lines.append(
            f"decide at {n:>4} rules: p50 {data['decide_p50_us']:.1f} µs,"
            f" p99 {data['decide_p99_us']:.1f} µs (with path classification:"
            f" p50 {data['classify_decide_p50_us']:.1f} µs,"
            f" p99 {data['classify_decide_p99_us']:.1f} µs)"
        )
    lookup = result["user_lookup_vs_off"]
    lines.append(
        f"user lookup on vs off: throughput {lookup['throughput']:.2f}x,"
        f" p50 {lookup['p50']:.2f}x, p99 {lookup['p99']:.2f}x"
        f" ({result['user_lookups']['asked']:.0f} whoami asked,"
        f" {result['user_lookups']['cached']:.0f} from the cache)"
    )
    log = result["decision_log"]
    lines.append(
        f"decision log: {log['decisions']:.0f} decisions, {log['written']:.0f} written,"
        f" {log['dropped']:.0f} dropped"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured wrk run per target")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk run before")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--iterations", type=int, default=50_000, help="timed decisions")
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the gateway's server.event_loop (default: uvloop, as deployed)",
    )
    parser.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.upstream:
        serve_upstream(args.upstream)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-gateway-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    write_results(RESULTS, result)
    failures = []
    if result["decision_log"]["dropped"]:
        failures.append("decision records were dropped")
    if result["ratio_to_nginx"]["gateway"]["throughput"] < 0.5:
        failures.append("the gateway proxy is below 0.5x nginx throughput")
    for failure in failures:
        print(f"TARGET MISSED: {failure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
