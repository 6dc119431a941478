"""Helpers for the deployment kit: the files of deploy/, secrets for *_file keys, and the
nginx sites run for real on loopback with their addresses, ports and paths rewritten.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from devstack.nginx import NGINX
from devstack.ports import free_port
from devstack.process import ManagedProcess, StartupError
from devstack.synapse import make_self_signed_cert

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DMZ_CONFIGS = sorted((DEPLOY / "dmz_api").glob("*.yaml"))
NGINX_SITES = sorted((DEPLOY / "nginx").glob("*.conf"))
AUTHZ_SECRET = "deploy-test-authz-secret-" + "a" * 20

_LISTEN = re.compile(r"^(\s*)listen\s+([^\s;]+)([^;]*);", re.MULTILINE)
_SERVER = re.compile(r"^(\s*)server\s+([^\s;]+:\d+)([^;]*);", re.MULTILINE)
_CERT_DIR = re.compile(r"/etc/ssl/bastion/([^/\s;]+)/")


def secret_files(data: Any) -> list[str]:
    """Every value of a ``*_file`` key anywhere in a parsed YAML document."""
    found: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(key, str) and key.endswith("_file") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(secret_files(value))
    elif isinstance(data, list):
        for item in data:
            found.extend(secret_files(item))
    return found


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def write_secrets(folder: Path, names: list[str]) -> None:
    for index, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"dummy-secret-{index}-" + "s" * 32 + "\n")


class NginxSite:
    """One file of deploy/nginx/, included in a minimal http {} block and run on loopback.

    Every ``listen`` becomes ``127.0.0.1:<free port>`` (IPv6 listens are dropped) and is
    found again with ``port("443")``; ``upstreams`` maps an upstream ``server`` address of
    the file to the address a test server listens on. Certificates, logs and the authz
    secret include get paths in ``workdir``.
    """

    def __init__(
        self,
        conf: Path,
        workdir: Path,
        *,
        upstreams: Mapping[str, str] | None = None,
        authz_secret: str = AUTHZ_SECRET,
    ) -> None:
        self.conf = conf
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.ports: dict[str, int] = {}
        for folder in (self.logs, workdir / "tmp", workdir / "ssl"):
            folder.mkdir(parents=True, exist_ok=True)
        self.site_path = workdir / conf.name
        self.site_path.write_text(self.rewrite(conf.read_text(), upstreams or {}, authz_secret))
        self.config_path = workdir / "nginx.conf"
        self.config_path.write_text(self.wrapper())
        self.process = ManagedProcess(
            "nginx",
            [NGINX, "-p", str(workdir), "-c", str(self.config_path), "-e", "stderr"],
            log_path=workdir / "nginx.out",
        )

    def rewrite(self, text: str, upstreams: Mapping[str, str], authz_secret: str) -> str:
        def listen(match: re.Match[str]) -> str:
            indent, address, options = match.groups()
            if address.startswith("["):
                return f"{indent}# (IPv6 listen dropped for the test)"
            port = self.ports.setdefault(address, free_port())
            return f"{indent}listen 127.0.0.1:{port}{options};"

        def server(match: re.Match[str]) -> str:
            indent, address, options = match.groups()
            return f"{indent}server {upstreams.get(address, address)}{options};"

        text = _LISTEN.sub(listen, text)
        text = _SERVER.sub(server, text)
        cert, key = make_self_signed_cert(self.workdir / "ssl")
        for name in set(_CERT_DIR.findall(text)):
            folder = self.workdir / "ssl" / name
            folder.mkdir(exist_ok=True)
            shutil.copy(cert, folder / "fullchain.pem")
            shutil.copy(key, folder / "privkey.pem")
        secret_conf = self.workdir / "authz-secret.conf"
        example = (DEPLOY / "nginx" / "authz-secret.conf.example").read_text()
        secret_conf.write_text(
            example.replace("REPLACE-with-the-gateway-authz-secret", authz_secret)
        )
        return (
            text.replace("/etc/ssl/bastion/", f"{self.workdir}/ssl/")
            .replace("/var/log/nginx/", f"{self.logs}/")
            .replace("/etc/nginx/bastion/authz-secret.conf", str(secret_conf))
        )

    def wrapper(self) -> str:
        tmp = self.workdir / "tmp"
        return f"""
daemon off;
worker_processes 1;
pid {self.workdir / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {self.site_path};
}}
"""

    def port(self, listen: str) -> int:
        return self.ports[listen]

    def url(self, listen: str, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[listen]}"

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` of the rewritten site."""
        return subprocess.run(
            [NGINX, "-t", "-p", str(self.workdir), "-c", str(self.config_path), "-e", "stderr"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def start(self, timeout: float = 10.0) -> NginxSite:
        proc = self.process.start()
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while not _listening(port):
                if proc.poll() is not None:
                    raise StartupError(f"nginx exited: {self.process.log_tail()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise StartupError(f"nginx did not listen: {self.process.log_tail()}")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.process.stop()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def nginx_sites() -> Iterator[list[NginxSite]]:
    """Sites a test starts are stopped at its end."""
    sites: list[NginxSite] = []
    yield sites
    for site in sites:
        site.stop()


class Recorder:
    """A catch-all HTTP server standing in for a homeserver or the registrar."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, Any]] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = {
            "method": request.method,
            "raw_path": request.raw_path,
            "x_forwarded_for": request.headers.get("X-Forwarded-For"),
            "authz_secret": request.headers.get("X-Authz-Secret"),
            "body": body.decode(errors="replace"),
        }
        self.seen.append(seen)
        return web.json_response({"upstream": self.name, **seen})

    async def start(self) -> Recorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
