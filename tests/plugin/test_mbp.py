"""The built ``.mbp`` loads in real maubot (standalone mode) against a real Synapse."""

from __future__ import annotations

import json
import secrets
import urllib.request
import zipfile
from pathlib import Path

import pytest

from devstack.matrix import MatrixUser
from devstack.maubot import Maubot, build_mbp
from devstack.synapse import Synapse

pytestmark = pytest.mark.slow


def test_mbp_holds_the_plugin(tmp_path: Path) -> None:
    mbp = build_mbp(tmp_path)
    assert mbp.name == "org.bastion.chatops-v0.1.0.mbp"
    names = zipfile.ZipFile(mbp).namelist()
    assert {"maubot.yaml", "base-config.yaml", "plugin/__init__.py", "plugin/bot.py"} <= set(names)
    assert "plugin/commands/tokens.py" in names
    assert not any(name.startswith(("dmz_api", "tests", "devstack")) for name in names)


def test_mbp_loads_in_standalone_maubot(
    tmp_path: Path, internal_synapse: Synapse, unique: str
) -> None:
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
            "identity": {"mode": "synapse_admin", "admin_token": hs.admin_token},
            "dmz": {"api_key": "unused"},
            "sweep_interval": 0,
            "audit": {"export_key": export_key},
        },
    )
    with maubot:
        log = maubot.log()
        assert "Initializing standalone org.bastion.chatops v0.1.0" in log
        assert "Failed" not in log and "Traceback" not in log
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
