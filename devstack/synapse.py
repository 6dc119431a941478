"""A real Synapse homeserver on loopback, configured for tests, benchmarks and the demo.

    hs = Synapse(tmp_path / "dmz", name="dmz")
    hs.start()                      # blocks until /_matrix/client/versions answers
    hs.admin_token                  # an admin user's access token (made at start)
    hs.register_user("alice", "pw") # shared-secret registration -> access token
    hs.stop()

``federation=True`` adds a TLS federation listener (self-signed cert for localhost) and
names the server ``localhost:PORT`` as federation on loopback requires. ``extra_config``
is deep-merged into the generated homeserver.yaml (e.g. ``modules`` for antispam).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .ports import free_port
from .process import ManagedProcess, http_json, url_answers

# Lenient limits: tests fire many requests from one address.
_RATE_LIMIT = {"per_second": 1000, "burst_count": 1000}
_RC_KEYS = (
    "rc_message",
    "rc_registration",
    "rc_joins",
    "rc_3pid_validation",
    "rc_admin_redaction",
    "rc_joins_per_room",
    "rc_media_create",
    "rc_registration_token_validity",
)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    if not cert.exists():
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return cert, key


class Synapse:
    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "hs",
        server_name: str | None = None,
        federation: bool = False,
        extra_config: Mapping[str, Any] | None = None,
        admin_user: str = "admin",
        admin_password: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.port = free_port()
        self.federation_port = free_port() if federation else None
        self.federation = federation
        if server_name is None:
            # Federation on loopback only works with localhost:PORT names (no IP literals).
            server_name = f"localhost:{self.federation_port}" if federation else f"{name}.test"
        self.server_name = server_name
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.shared_secret = secrets.token_urlsafe(32)
        self.extra_config = dict(extra_config or {})
        self.admin_user = admin_user
        self.admin_password = admin_password or secrets.token_urlsafe(12)
        self.admin_token = ""
        self.admin_user_id = f"@{admin_user}:{self.server_name}"
        self.config_path = self.workdir / "homeserver.yaml"
        self.process = ManagedProcess(
            f"synapse-{name}",
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            log_path=self.workdir / "synapse.out",
            cwd=self.workdir,
        )

    @property
    def federation_url(self) -> str:
        assert self.federation_port is not None
        return f"https://127.0.0.1:{self.federation_port}"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def config(self) -> dict[str, Any]:
        data = self.workdir / "data"
        listeners: list[dict[str, Any]] = [
            {
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": True,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ]
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": f"{self.base_url}/",
            "pid_file": str(self.workdir / "homeserver.pid"),
            "listeners": listeners,
            "database": {"name": "sqlite3", "args": {"database": str(data / "homeserver.db")}},
            "media_store_path": str(data / "media"),
            "signing_key_path": str(self.workdir / "signing.key"),
            "log_config": str(self.workdir / "log.yaml"),
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
            "enable_registration": True,
            "registration_requires_token": True,
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "bcrypt_rounds": 4,
            "enable_metrics": False,
            **{key: dict(_RATE_LIMIT) for key in _RC_KEYS},
            "rc_invites": {
                "per_room": dict(_RATE_LIMIT),
                "per_user": dict(_RATE_LIMIT),
                "per_issuer": dict(_RATE_LIMIT),
            },
            "rc_login": {
                "address": dict(_RATE_LIMIT),
                "account": dict(_RATE_LIMIT),
                "failed_attempts": dict(_RATE_LIMIT),
            },
        }
        if self.federation:
            cert, key = make_self_signed_cert(self.workdir)
            listeners.append(
                {
                    "port": self.federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "resources": [{"names": ["federation", "keys"], "compress": False}],
                }
            )
            config.update(
                {
                    "tls_certificate_path": str(cert),
                    "tls_private_key_path": str(key),
                    "federation_verify_certificates": False,
                    "ip_range_whitelist": ["127.0.0.0/8"],
                    "federation": {
                        "destination_min_retry_interval": "3s",
                        "destination_max_retry_interval": "30s",
                    },
                }
            )
        else:
            config["federation_domain_whitelist"] = []
        return deep_merge(config, self.extra_config)

    def log_config(self) -> dict[str, Any]:
        # Registration tokens appear at INFO in Synapse's UI-auth, auth, HTTP-server and access
        # logs: keep them out.
        return {
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "plain",
                    "filename": str(self.workdir / "homeserver.log"),
                }
            },
            "loggers": {
                "synapse.handlers.ui_auth": {"level": "WARNING"},
                "synapse.handlers.auth": {"level": "WARNING"},
                "synapse.http.server": {"level": "WARNING"},
                "synapse.access": {"level": "WARNING"},
                "synapse.storage.SQL": {"level": "WARNING"},
            },
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def write_config(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        (self.workdir / "log.yaml").write_text(yaml.safe_dump(self.log_config(), sort_keys=False))
        if not (self.workdir / "signing.key").exists():
            subprocess.run(
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path),
                 "--generate-keys"],
                cwd=self.workdir,
                check=True,
                capture_output=True,
            )  # fmt: skip

    def start(self, timeout: float = 60.0) -> Synapse:
        self.write_config()
        self.process.start_until(url_answers(f"{self.base_url}/_matrix/client/versions"), timeout)
        self.admin_token = self.register_user(self.admin_user, self.admin_password, admin=True)
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Synapse:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def register_user(
        self, localpart: str, password: str, *, admin: bool = False, displayname: str | None = None
    ) -> str:
        """Create a user through the shared-secret admin API and return its access token."""
        url = f"{self.base_url}/_synapse/admin/v1/register"
        status, body = http_json("GET", url)
        if status != 200:
            raise RuntimeError(f"nonce request failed: {status} {body}")
        nonce = body["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join(
                [nonce.encode(), localpart.encode(), password.encode(),
                 b"admin" if admin else b"notadmin"]
            )
        )  # fmt: skip
        payload: dict[str, Any] = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        if displayname:
            payload["displayname"] = displayname
        status, body = http_json("POST", url, payload)
        if status != 200:
            raise RuntimeError(f"registering {localpart} failed: {status} {body}")
        return str(body["access_token"])

    def login(self, localpart: str, password: str) -> tuple[int, Any]:
        return http_json(
            "POST",
            f"{self.base_url}/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
            },
        )

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A call on the Synapse admin API (``path`` starts with ``/_synapse/admin``)."""
        return http_json(method, f"{self.base_url}{path}", body, token=self.admin_token)

    def client(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, f"{self.base_url}{path}", body, token=token)

    def create_registration_token(self, uses_allowed: int | None = None) -> str:
        body: dict[str, Any] = {"uses_allowed": uses_allowed}
        status, result = self.admin("POST", "/_synapse/admin/v1/registration_tokens/new", body)
        if status != 200:
            raise RuntimeError(f"creating a registration token failed: {status} {result}")
        return str(result["token"])

    def wait_for(self, check: Any, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{what} not reached in {timeout} s on {self.name}")
