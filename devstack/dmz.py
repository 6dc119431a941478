"""``dmz_api`` as a real subprocess with a generated config (registrar and/or gateway)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

from .ports import free_port
from .process import ManagedProcess, http_json, url_answers


class DmzApi:
    """Run ``python -m dmz_api --config FILE``; ``config`` is the YAML document as a dict.

    ``server.port`` and ``database`` are filled in when absent. ``api_key`` (given, or a
    fresh one) is a key with every scope unless ``config["api_keys"]`` is given.
    """

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        name: str = "dmz_api",
        env: dict[str, str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        # A registrar and a gateway the same bot talks to share one key (one ``dmz.api_key``).
        self.api_key = api_key or secrets.token_urlsafe(32)
        server = config.setdefault("server", {})
        server.setdefault("host", "127.0.0.1")
        server.setdefault("port", free_port())
        self.port = int(server["port"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        server.setdefault("public_url", self.base_url)
        config.setdefault("database", f"sqlite:{self.workdir / 'dmz_api.db'}")
        config.setdefault(
            "api_keys",
            [
                {
                    "name": "chatops-bot",
                    "key": self.api_key,
                    "scopes": ["tokens", "guests", "rules", "decisions", "audit"],
                }
            ],
        )
        self.config = config
        self.config_path = self.workdir / "dmz_api.yaml"
        self.process = ManagedProcess(
            name,
            [sys.executable, "-m", "dmz_api", "--config", str(self.config_path)],
            log_path=self.workdir / "dmz_api.log",
            cwd=self.workdir,
            env=env,
        )

    def start(self, timeout: float = 30.0) -> DmzApi:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.process.start_until(url_answers(f"{self.base_url}/healthz"), timeout)
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> DmzApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        acting_user: str | None = None,
        **headers: str,
    ) -> tuple[int, Any]:
        extra = dict(headers)
        if acting_user:
            extra["X-Acting-User"] = acting_user
        return http_json(method, f"{self.base_url}{path}", body, token=self.api_key, headers=extra)
