"""The example configs of deploy/ are valid as shipped and agree with each other."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from mautrix.util.config import RecursiveDict
from ruamel.yaml import YAML

from devstack.synapse import Synapse
from dmz_api import __main__ as dmz_api_main
from dmz_api.config import load_config
from dmz_api.gateway.enforce.antispam import CALLBACKS
from dmz_api.gateway.homeserver_check import check_homeserver_config
from plugin.config import Config

from .conftest import DEPLOY, DMZ_CONFIGS, ROOT, load_yaml, secret_files, write_secrets

UNITS = DEPLOY / "systemd"
ROLE_UNIT = {
    "registrar-synapse.yaml": "dmz-api-registrar.service",
    "registrar-tuwunel.yaml": "dmz-api-registrar.service",
    "gateway.yaml": "dmz-api-gateway.service",
}


def config_copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "config.yaml"
    shutil.copy(source, target)
    return target


def test_every_role_has_an_example() -> None:
    assert {p.name for p in DMZ_CONFIGS} == {
        "registrar-synapse.yaml",
        "registrar-tuwunel.yaml",
        "registrar-conduwuit-matrix.yaml",
        "gateway.yaml",
    }


@pytest.mark.parametrize("source", DMZ_CONFIGS, ids=lambda p: p.name)
def test_dmz_api_config_passes_check(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_copy(source, tmp_path)
    names = secret_files(load_yaml(config))
    assert names, "secrets are given as *_file keys"
    assert all(not Path(name).is_absolute() for name in names), "relative to the config"
    write_secrets(tmp_path, names)
    assert dmz_api_main.main(["--config", str(config), "--check"]) == 0
    assert capsys.readouterr().out.strip() == "config OK"


@pytest.mark.parametrize("source", DMZ_CONFIGS, ids=lambda p: p.name)
def test_missing_secret_file_fails_the_check(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_copy(source, tmp_path)
    names = secret_files(load_yaml(config))
    write_secrets(tmp_path, names[1:])
    assert dmz_api_main.main(["--config", str(config), "--check"]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_no_inline_secrets() -> None:
    for source in DMZ_CONFIGS:
        text = source.read_text()
        for key in ("admin_token", "registration_token", "secret", "key"):
            assert not re.search(rf"^\s*{key}:", text, re.MULTILINE), (source.name, key)


def test_configs_keep_dmz_api_on_loopback(tmp_path: Path) -> None:
    """nginx is the only way in; the decision endpoints trust loopback only."""
    for source in DMZ_CONFIGS:
        config = config_copy(source, tmp_path)
        write_secrets(tmp_path, secret_files(load_yaml(config)))
        loaded = load_config(config)
        assert loaded.server.host == "127.0.0.1", source.name
        assert loaded.server.public_url.startswith("https://")
        if loaded.gateway is not None:
            assert loaded.gateway.listen is not None and loaded.gateway.listen.host == "127.0.0.1"
            assert loaded.gateway.authz.secret is not None
            assert {str(n) for n in loaded.gateway.authz.allowed_peers} <= {
                "127.0.0.1/32",
                "::1/128",
            }


def test_bot_key_matches_the_instance_config() -> None:
    """Both roles list the SHA-256 of the key the sample instance config holds."""
    instance = load_yaml(DEPLOY / "maubot" / "instance-config.yaml")
    digest = hashlib.sha256(instance["dmz"]["api_key"].encode()).hexdigest()
    scopes: set[str] = set()
    for source in DMZ_CONFIGS:
        bot = [k for k in load_yaml(source)["api_keys"] if k["name"] == "bastion-bot"]
        assert len(bot) == 1 and bot[0]["key_sha256"] == digest, source.name
        scopes |= set(bot[0]["scopes"])
    assert scopes == {"tokens", "guests", "rules", "decisions"}


def unit_credentials(unit: Path) -> set[str]:
    return {
        line.split("=", 1)[1].split(":", 1)[0]
        for line in unit.read_text().splitlines()
        if line.startswith("LoadCredential=")
    }


@pytest.mark.parametrize("config_name", sorted(ROLE_UNIT))
def test_units_load_every_secret_the_config_names(config_name: str) -> None:
    names = set(secret_files(load_yaml(DEPLOY / "dmz_api" / config_name)))
    assert unit_credentials(UNITS / ROLE_UNIT[config_name]) == names | {"config.yaml"}


def test_units_run_the_config_from_the_credentials_directory() -> None:
    for name in ("dmz-api-registrar.service", "dmz-api-gateway.service"):
        text = (UNITS / name).read_text()
        assert "ExecStart=/opt/bastion/venv/bin/python -m dmz_api --config %d/config.yaml\n" in text
        for hardening in (
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "StateDirectory=",
            "Restart=",
        ):
            assert hardening in text, (name, hardening)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_units_verify_clean(tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints nothing for a unit without unknown or bad keys."""
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        # verify insists that ExecStart's program exists.
        text = re.sub(r"/opt/\w+/venv/bin/python", sys.executable, text)
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def flat_keys(data: Any, prefix: str = "") -> set[str]:
    if not isinstance(data, dict) or not data:
        return {prefix}
    keys: set[str] = set()
    for key, value in data.items():
        keys |= flat_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


def test_instance_config_has_every_base_config_key() -> None:
    base = load_yaml(ROOT / "base-config.yaml")
    instance = load_yaml(DEPLOY / "maubot" / "instance-config.yaml")
    assert flat_keys(instance) == flat_keys(base)


def test_instance_config_loads_without_problems() -> None:
    yaml = YAML()
    base = RecursiveDict(yaml.load((ROOT / "base-config.yaml").read_text()))
    values = RecursiveDict(yaml.load((DEPLOY / "maubot" / "instance-config.yaml").read_text()))
    config = Config(load=lambda: values, load_base=lambda: base, save=lambda _: None)
    config.load_and_update()
    assert config.problems() == []
    assert config.dmz_url("registrar").startswith("https://")
    assert config.dmz_url("gateway").startswith("https://")
    assert config.identity_mode == "synapse_admin"
    assert (config.token_uses, config.token_expires, config.sweep_interval) == (1, 86400, 300)
    assert len(config.audit_export_key) >= 32


def test_maubot_logging_snippet_keeps_request_bodies_out() -> None:
    logging_config = load_yaml(DEPLOY / "maubot" / "logging-snippet.yaml")["logging"]
    loggers = logging_config["loggers"]
    for name in ("maubot", "mau"):
        assert loggers[name]["level"] in ("INFO", "WARNING")
    assert logging_config["root"]["level"] in ("INFO", "WARNING")


def test_antispam_snippet_fails_closed_on_callbacks_the_gateway_judges() -> None:
    (module,) = load_yaml(DEPLOY / "synapse" / "antispam.yaml")["modules"]
    assert module["module"] == "synapse_http_antispam.HTTPAntispam"
    config = module["config"]
    enabled = config["enabled_callbacks"]
    assert set(enabled) >= {"check_event_for_spam", "user_may_invite", "user_may_join_room"}
    assert set(enabled) <= set(CALLBACKS)
    assert config["fail_open"] == {name: False for name in enabled}
    base_url = config["base_url"]
    assert base_url.startswith("https://") and base_url.endswith("/v1/antispam")
    assert "authorization" not in config and config["authorization_path"].startswith("/")


def test_synapse_logging_holds_token_loggers_at_warning() -> None:
    loggers = load_yaml(DEPLOY / "synapse" / "logging.yaml")["loggers"]
    for name in (
        "synapse.handlers.auth",
        "synapse.handlers.ui_auth",
        "synapse.http.server",
        "synapse.access",
    ):
        assert loggers[name]["level"] == "WARNING", name


_READ_LEDGER_KEYS = """
import json, sys
from synapse.config.homeserver import HomeServerConfig
config = HomeServerConfig.load_config("check", ["-c", sys.argv[1]])
print(json.dumps({
    "encryption_presets": sorted(config.room.encryption_enabled_by_default_for_room_presets),
    "redaction_retention_period": config.server.redaction_retention_period,
    "forgotten_room_retention_period": config.server.forgotten_room_retention_period,
    "retention_enabled": config.retention.retention_enabled,
    "msc4293_enabled": config.experimental.msc4293_enabled,
}))
"""


def synapse_reads(config_path: Path) -> dict[str, Any]:
    """The ledger's keys as Synapse parses them (in a subprocess: importing Synapse here
    would load Twisted and zope.interface into the test process)."""
    done = subprocess.run(
        [sys.executable, "-c", _READ_LEDGER_KEYS, str(config_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow  # Synapse generates a signing key and parses its config in subprocesses
def test_ledger_snippet_as_synapse_reads_it(tmp_path: Path) -> None:
    """deploy/synapse/ledger.yaml merged into a homeserver.yaml, parsed by Synapse itself."""
    snippet = load_yaml(DEPLOY / "synapse" / "ledger.yaml")
    hs = Synapse(tmp_path / "hs", name="ledger", extra_config=snippet)
    hs.write_config()
    assert synapse_reads(hs.config_path) == {
        "encryption_presets": [],
        "redaction_retention_period": None,
        "forgotten_room_retention_period": None,
        "retention_enabled": False,
        "msc4293_enabled": False,
    }
    # Without the snippet Synapse keeps redacted originals for 7 days only.
    plain = Synapse(tmp_path / "plain", name="plain")
    plain.write_config()
    assert synapse_reads(plain.config_path)["redaction_retention_period"] == 7 * 24 * 3600 * 1000
    # The gateway's own reading of the same files (gateway.homeserver_config) agrees.
    assert check_homeserver_config(hs.config_path) == []
    [problem] = check_homeserver_config(plain.config_path)
    assert problem.startswith("redaction_retention_period is not set")


def test_tuwunel_notes_give_the_ledger_settings() -> None:
    notes = (DEPLOY / "synapse" / "tuwunel-notes.md").read_text()
    section = notes.partition("## Behind the gateway with the compliance ledger")[2]
    block = section.partition("```toml\n")[2].partition("```")[0]
    assert tomllib.loads(block) == {
        "allow_encryption": False,
        "save_unredacted_events": True,
        "redaction_retention_seconds": 0,
    }
