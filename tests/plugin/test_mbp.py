"""The built ``.mbp`` loads in real maubot (standalone mode) against a real Synapse."""

from __future__ import annotations

import json
import secrets
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.matrix import MatrixUser
from devstack.maubot import ROOT, Maubot, build_mbp
from devstack.synapse import Synapse

pytestmark = pytest.mark.slow


def test_mbp_holds_the_plugin(tmp_path: Path) -> None:
    mbp = build_mbp(tmp_path)
    assert mbp.name == "org.bastion.chatops-v0.1.0.mbp"
    names = zipfile.ZipFile(mbp).namelist()
    assert {"maubot.yaml", "base-config.yaml", "plugin/__init__.py", "plugin/bot.py"} <= set(names)
    assert "plugin/commands/tokens.py" in names
    assert not any(name.startswith(("dmz_api", "tests", "devstack")) for name in names)


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every key of a nested config as a dotted path, with its value."""
    found: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


def test_mbp_loads_in_standalone_maubot_with_a_partial_config(
    tmp_path: Path, internal_synapse: Synapse, unique: str
) -> None:
    """Standalone maubot does not merge base-config.yaml: the plugin fills in its defaults."""
    hs = internal_synapse
    bot = MatrixUser.register(hs, f"bot{unique}", secrets.token_urlsafe(12))
    staff = MatrixUser.register(hs, f"staff{unique}", secrets.token_urlsafe(12))
    room = staff.create_room()
    export_key = secrets.token_urlsafe(24)
    maubot = Maubot(
        tmp_path / "maubot",
        mbp=build_mbp(tmp_path),
        user_id=bot.user_id,
        homeserver=hs.base_url,
        access_token=bot.token,
        plugin_config={
            "control_rooms": [room],
            "roles": {"operator": [staff.user_id]},
            "identity": {"admin_token": hs.admin_token},
            "dmz": {"api_key": "unused"},
            "sweep_interval": 0,
            "audit": {"export_key": export_key},
        },
    )
    with maubot:
        log = maubot.log()
        assert "Initializing standalone org.bastion.chatops v0.1.0" in log
        assert "Failed" not in log and "Traceback" not in log
        assert "Configuration:" not in log, "no key is missing"
        saved = leaves(maubot.saved_plugin_config())
        base = leaves(yaml.safe_load((ROOT / "base-config.yaml").read_text()))
        assert set(saved) == set(base)
        assert saved["identity.admin_token"] == hs.admin_token
        assert saved["roles.operator"] == [staff.user_id]
        assert (saved["identity.mode"], saved["identity.timeout"]) == ("synapse_admin", "5s")
        assert (saved["token_defaults.expires"], saved["commands.bare_aliases"]) == ("24h", False)
        staff.invite(room, bot.user_id)
        staff.wait_membership(room, bot.user_id)
        reply = staff.ask(room, "!bastion whoami")
        assert reply.startswith(f"You are {staff.user_id}.")
        assert "Roles: operator." in reply and "Account: active" in reply

        request = urllib.request.Request(
            f"{maubot.webapp_url}/audit.jsonl",
            headers={"Authorization": f"Bearer {export_key}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            [entry] = [json.loads(line) for line in response.read().splitlines()]
        assert (entry["command"], entry["sender"], entry["outcome"]) == (
            "bastion whoami",
            staff.user_id,
            "ok",
        )
