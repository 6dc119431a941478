"""deploy/synapse/ on a real Synapse: the log config keeps registration tokens out of the
log through a whole token lifecycle, and Synapse starts with the antispam snippet."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from devstack.ports import free_port
from devstack.process import http_json
from devstack.synapse import Synapse

from .conftest import DEPLOY, load_yaml

pytestmark = pytest.mark.slow

PASSWORD = "guest-password-0123"


def register(hs: Synapse, username: str, token: str) -> int:
    """The two-stage UIA registration; the status of the final step."""
    url = f"{hs.base_url}/_matrix/client/v3/register"
    body: dict[str, Any] = {"username": username, "password": PASSWORD}
    _, first = http_json("POST", url, body)
    session = first["session"]
    auth = {"type": "m.login.registration_token", "token": token, "session": session}
    http_json("POST", url, {**body, "auth": auth})
    status, _ = http_json(
        "POST", url, {**body, "auth": {"type": "m.login.dummy", "session": session}}
    )
    return status


def test_no_registration_token_in_the_synapse_log(tmp_path: Path) -> None:
    workdir = tmp_path / "synapse"
    workdir.mkdir()
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    log_config = tmp_path / "log.yaml"
    log_config.write_text(
        (DEPLOY / "synapse" / "logging.yaml")
        .read_text()
        .replace("/var/log/matrix-synapse/", f"{log_dir}/")
    )
    (module,) = load_yaml(DEPLOY / "synapse" / "antispam.yaml")["modules"]
    secret_path = tmp_path / "antispam.secret"
    secret_path.write_text(secrets.token_urlsafe(24))
    # Nobody answers there: Synapse must still start (the module fails closed per call).
    module["config"]["base_url"] = f"http://127.0.0.1:{free_port()}/v1/antispam"
    module["config"]["authorization_path"] = str(secret_path)
    extra = {"log_config": str(log_config), "modules": [module]}

    unknown = "Unknown-token-" + secrets.token_hex(6)
    with Synapse(workdir, name="dmz", extra_config=extra) as hs:
        token = hs.create_registration_token(uses_allowed=1)
        validity = "/_matrix/client/v1/register/m.login.registration_token/validity?token="
        assert http_json("GET", hs.base_url + validity + token) == (200, {"valid": True})
        assert register(hs, "guest1", token) == 200
        assert register(hs, "guest2", token) == 401  # used up
        assert http_json("GET", hs.base_url + validity + token) == (200, {"valid": False})
        admin = "/_synapse/admin/v1/registration_tokens/"
        assert hs.admin("GET", admin + token)[0] == 200
        assert hs.admin("DELETE", admin + token)[0] == 200
        assert hs.admin("DELETE", admin + token)[0] == 404
        assert hs.admin("GET", admin + unknown)[0] == 404
        assert http_json("GET", hs.base_url + validity + unknown) == (200, {"valid": False})
    # Synapse buffers INFO lines and flushes them when it stops.
    log = (log_dir / "homeserver.log").read_text()
    assert " - INFO - " in log and "synapse_http_antispam" in log
    assert token not in log and unknown not in log
    assert token not in (workdir / "synapse.out").read_text(errors="replace")
