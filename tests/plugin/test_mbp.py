"""The built ``.mbp`` loads in real maubot (standalone mode) against a real Synapse."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
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


# Loads each .mbp through maubot's own zip loader, in order, in one fresh interpreter.
LOAD_IN_ORDER = """
import asyncio, sys
from maubot.loader.zip import ZippedPluginLoader

async def main():
    for path in sys.argv[1:]:
        loader = ZippedPluginLoader.get(path)
        try:
            await loader.load()
            print(loader.meta.id, "loaded")
        except Exception as e:
            print(loader.meta.id, "failed:", e, "|", e.__context__)

asyncio.run(main())
"""


def other_plugin_named_plugin(tmp_path: Path) -> Path:
    """Another maubot plugin whose top-level module is also ``plugin``."""
    source = tmp_path / "other"
    (source / "plugin").mkdir(parents=True)
    (source / "maubot.yaml").write_text(
        "maubot: 0.6.0\nid: org.example.other\nversion: 1.0.0\nlicense: MIT\n"
        "modules:\n  - plugin\nmain_class: OtherBot\n"
    )
    (source / "plugin" / "__init__.py").write_text("from .bot import OtherBot\n")
    (source / "plugin" / "bot.py").write_text(
        textwrap.dedent(
            """\
            from maubot import Plugin


            class OtherBot(Plugin):
                pass
            """
        )
    )
    return build_mbp(tmp_path / "other-build", source)


def test_a_second_plugin_with_the_module_name_plugin_fails_to_load(tmp_path: Path) -> None:
    """What deploy/README.md says about the module name ``plugin`` on a shared maubot."""
    bastion, other = build_mbp(tmp_path / "bastion-build"), other_plugin_named_plugin(tmp_path)
    for first, second, second_id, missing in (
        (other, bastion, "org.bastion.chatops", "BastionBot"),
        (bastion, other, "org.example.other", "OtherBot"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", LOAD_IN_ORDER, str(first), str(second)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        loaded, failed = result.stdout.splitlines()
        assert loaded.endswith(" loaded") and not loaded.startswith(second_id)
        assert failed.startswith(f"{second_id} failed: Failed to load module plugin | ")
        assert f"cannot import name '{missing}' from 'plugin.bot' ({first}/plugin/bot.py)" in failed
