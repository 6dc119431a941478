"""Operable as shipped: what a deployer installs runs, with nothing from the test extras.

* dmz_api: the wheel (``pip wheel --no-deps .``) installed into an empty venv **without
  extras** — only what ``pyproject.toml`` declares — runs ``dmz-api --check`` on the example
  config, then serves both roles from that config (ports, paths and the homeserver URL
  changed as a deployer would): ``/healthz`` answers, the gateway proxies to the real
  homeserver and the registrar mints a token on it.
* the plugin: ``mbc build`` makes the ``.mbp`` in a venv that has **only maubot**; maubot's
  server takes it through its management API (``POST /_matrix/maubot/v1/plugins/upload``)
  as an operator's upload would, lists it, and starts an instance whose web app answers:
  the plugin imports nothing maubot does not bring.

Each venv is built once per session, from PyPI through pip's own cache. Measured on the
2-core machine: the dmz_api venv 16 s idle (45 s while other test runs share the machine),
maubot's 23 s (50 s), both tests' own work 5 s and 19 s: about 1 to 2 minutes in all.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.ports import free_port
from devstack.process import ManagedProcess, http_json, port_listening, url_answers
from devstack.synapse import Synapse

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 600


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=PIP_TIMEOUT
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


def new_venv(path: Path) -> Path:
    """An empty venv of the interpreter running the tests (not this one's site-packages)."""
    run(sys.executable, "-m", "venv", path)
    return path / "bin" / "python"


def importable(python: Path, module: str) -> bool:
    check = f"import importlib.util as u; print(bool(u.find_spec({module!r})))"
    found = run(python, "-c", check, cwd=python.parent)  # not the checkout: it is on sys.path
    return found.strip() == "True"


@pytest.fixture(scope="session")
def dmz_api_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bastion wheel in a fresh venv, with its declared dependencies and nothing else."""
    base = tmp_path_factory.mktemp("plain-install")
    wheels = base / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT)
    (wheel,) = wheels.glob("bastion-*.whl")
    python = new_venv(base / "venv")
    run(python, "-m", "pip", "install", "-q", wheel)
    run(python, "-m", "pip", "check")
    for extra in ("synapse", "maubot", "pytest"):  # what the test extras would bring
        assert not importable(python, extra), extra
    return python


@pytest.fixture(scope="session")
def maubot_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with maubot alone, in the version range the project declares for the plugin."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (requirement,) = meta["project"]["optional-dependencies"]["bot"]
    python = new_venv(tmp_path_factory.mktemp("maubot-only") / "venv")
    run(python, "-m", "pip", "install", "-q", requirement)
    assert not importable(python, "dmz_api") and not importable(python, "plugin")
    return python


def deployed_config(tmp_path: Path, hs: Synapse) -> tuple[dict[str, Any], int, int]:
    """The example config with what a deployer changes: ports, paths, the homeserver."""
    config = yaml.safe_load((ROOT / "dmz_api" / "example-config.yaml").read_text())
    port, proxy_port = free_port(), free_port()
    config["server"].update(port=port, public_url=f"http://127.0.0.1:{port}")
    config["database"] = f"sqlite:{tmp_path / 'dmz_api.db'}"
    homeserver = config["registrar"]["homeserver"]
    homeserver.update(url=hs.base_url, server_name=hs.server_name, admin_token=hs.admin_token)
    homeserver["client_url"] = hs.base_url
    config["gateway"].update(server_name=hs.server_name, upstream=hs.base_url)
    config["gateway"]["listen"].update(host="127.0.0.1", port=proxy_port)
    return config, port, proxy_port


@pytest.mark.slow
def test_dmz_api_runs_from_a_plain_install(
    dmz_api_venv: Path, dmz_synapse: Synapse, tmp_path: Path
) -> None:
    bindir = dmz_api_venv.parent
    example = ROOT / "dmz_api" / "example-config.yaml"
    assert run(bindir / "dmz-api", "--check", "--config", example).strip() == "config OK"
    config, port, proxy_port = deployed_config(tmp_path, dmz_synapse)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    base = f"http://127.0.0.1:{port}"
    service = ManagedProcess(
        "dmz_api (plain install)",
        [str(bindir / "dmz-api"), "--config", str(config_path)],
        log_path=tmp_path / "dmz_api.log",
        cwd=tmp_path,
    )
    service.start_until(url_answers(f"{base}/healthz"), 30)
    try:
        status, health = http_json("GET", f"{base}/healthz")
        assert status == 200
        assert health == {"status": "ok", "roles": ["registrar", "gateway"]}
        status, versions = http_json(
            "GET", f"http://127.0.0.1:{proxy_port}/_matrix/client/versions"
        )
        assert status == 200 and "versions" in versions  # through the gateway's proxy
        key = config["api_keys"][0]["key"]
        status, minted = http_json(
            "POST", f"{base}/v1/tokens", {}, token=key,
            headers={"X-Acting-User": "@alice:corp.example"},
        )  # fmt: skip
        assert status == 201, minted
        page = urllib.request.urlopen(f"{minted['url']}", timeout=10)
        assert page.status == 200 and 'name="csrf_token"' in page.read().decode()
        # The URL token is the registrar's own: the homeserver does not know it.
        validity = "/_matrix/client/v1/register/m.login.registration_token/validity?token="
        status, valid = http_json("GET", f"{dmz_synapse.base_url}{validity}{minted['token']}")
        assert (status, valid) == (200, {"valid": False})
    finally:
        service.stop()
    assert "Traceback" not in service.log_path.read_text()


def management(base: str, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    """One call on maubot's management API; ``data``: raw bytes (the .mbp upload)."""
    data = kw.get("data")
    body = data if data is not None else json.dumps(kw["json"]).encode() if "json" in kw else None
    request = urllib.request.Request(f"{base}/_matrix/maubot/v1{path}", data=body, method=method)
    request.add_header(
        "Content-Type", "application/zip" if data is not None else "application/json"
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def maubot_config(workdir: Path, port: int, password: str) -> dict[str, Any]:
    return {
        "database": f"sqlite:{workdir / 'maubot.db'}",
        "plugin_directories": {
            "upload": str(workdir / "plugins"),
            "load": [str(workdir / "plugins")],
            "trash": str(workdir / "trash"),
        },
        "plugin_databases": {"sqlite": str(workdir / "plugins"), "postgres": None},
        "server": {
            "hostname": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "unshared_secret": secrets.token_urlsafe(32),
        },
        "homeservers": {},
        "admins": {"admin": password},
        "logging": {
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "plain",
                    "filename": str(workdir / "maubot.log"),
                }
            },
            "loggers": {"maubot": {"level": "INFO"}, "mau": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["file"]},
        },
    }


@pytest.mark.slow
def test_the_plugin_loads_in_a_maubot_that_has_only_maubot(
    maubot_venv: Path, dmz_synapse: Synapse, tmp_path: Path, unique: str
) -> None:
    meta = yaml.safe_load((ROOT / "maubot.yaml").read_text())
    mbp = tmp_path / f"{meta['id']}-v{meta['version']}.mbp"
    run(maubot_venv.parent / "mbc", "build", ROOT, "-o", mbp)
    workdir = tmp_path / "maubot"
    for folder in ("plugins", "trash"):
        (workdir / folder).mkdir(parents=True)
    port, password = free_port(), secrets.token_urlsafe(16)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(maubot_config(workdir, port, password)))
    base = f"http://127.0.0.1:{port}"
    server = ManagedProcess(
        "maubot (only maubot installed)",
        [str(maubot_venv), "-m", "maubot", "-c", str(config_path)],
        log_path=workdir / "maubot.out",
        cwd=workdir,
    )
    server.start_until(port_listening(port), 60)
    try:
        status, login = management(
            base, "POST", "/auth/login", json={"username": "admin", "password": password}
        )
        assert status == 200, login
        token = login["token"]
        status, uploaded = management(base, "POST", "/plugins/upload", token, data=mbp.read_bytes())
        assert status in (200, 201), uploaded
        assert uploaded["id"] == meta["id"] and uploaded["version"] == meta["version"]
        status, plugins = management(base, "GET", "/plugins", token)
        assert status == 200 and meta["id"] in [p["id"] for p in plugins]

        bot_token = dmz_synapse.register_user(f"bot{unique}", secrets.token_urlsafe(12))
        status, client = management(
            base, "POST", "/client/new", token,
            json={"homeserver": dmz_synapse.base_url, "access_token": bot_token, "sync": False},
        )  # fmt: skip
        assert status == 201, client
        status, instance = management(
            base, "PUT", "/instance/bastion", token,
            json={"type": meta["id"], "primary_user": client["id"], "enabled": True},
        )  # fmt: skip
        assert status == 201, instance
        assert instance["started"] is True, instance
        # The plugin's own code runs: its web app serves the sweep metrics.
        with urllib.request.urlopen(f"{base}/_matrix/maubot/plugin/bastion/metrics") as response:
            assert response.status == 200
            assert "bastion_bot_sweep_last_success_timestamp_seconds" in response.read().decode()
    finally:
        server.stop()
    log = (workdir / "maubot.log").read_text()
    for trouble in ("ImportError", "ModuleNotFoundError", "Traceback"):
        assert trouble not in log, log[-3000:]
