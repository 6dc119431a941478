"""A real nginx (Debian package) on loopback with a generated config, run in the foreground."""

from __future__ import annotations

import shutil
from pathlib import Path

from .ports import free_port
from .process import ManagedProcess, port_listening

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """``server_block`` is the body of one ``server { ... }`` (``listen`` is added)."""

    def __init__(self, workdir: Path, server_block: str, *, http_extra: str = "") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.workdir / "nginx.conf"
        self.server_block = server_block
        self.http_extra = http_extra
        self.process = ManagedProcess(
            "nginx",
            [NGINX, "-c", str(self.config_path), "-p", str(self.workdir), "-e", "stderr"],
            log_path=self.workdir / "nginx.out",
        )

    def render(self) -> str:
        tmp = self.workdir / "tmp"
        return f"""
daemon off;
worker_processes 1;
pid {self.workdir / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    {self.http_extra}
    server {{
        listen 127.0.0.1:{self.port};
        {self.server_block}
    }}
}}
"""

    def start(self, timeout: float = 10.0) -> Nginx:
        (self.workdir / "tmp").mkdir(exist_ok=True)
        self.config_path.write_text(self.render())
        self.process.start_until(port_listening(self.port), timeout)
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
