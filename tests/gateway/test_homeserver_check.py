"""What compliance-ledger needs of the homeserver: its config read, the problems named, by
``--check`` and in the log whenever a ruleset with the ledger is loaded."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmz_api.gateway import GATEWAY
from dmz_api.gateway.homeserver_check import check_homeserver_config, ledger_problems

from .conftest import gateway_config

LEDGER_OK: dict[str, Any] = {
    "encryption_enabled_by_default_for_room_type": "off",
    "redaction_retention_period": None,
    "retention": {"enabled": False},
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"encryption_enabled_by_default_for_room_type": "all"}, "encryption_enabled_by_default"),
        ({"encryption_enabled_by_default_for_room_type": "invite"}, "'invite'"),
        ({"redaction_retention_period": "7d"}, "redaction_retention_period is '7d'"),
        ({"retention": {"enabled": True}}, "retention.enabled"),
        ({"forgotten_room_retention_period": "28d"}, "forgotten_room_retention_period"),
        ({"experimental_features": {"msc4293_enabled": True}}, "msc4293_enabled"),
    ],
)
def test_each_setting_that_undoes_the_ledger_is_named(change: dict[str, Any], named: str) -> None:
    assert ledger_problems(LEDGER_OK) == []
    [problem] = ledger_problems({**LEDGER_OK, **change})
    assert named in problem


def test_synapse_defaults_keep_redacted_originals_only_seven_days() -> None:
    # An unquoted `off` is YAML false, which Synapse accepts as "off".
    hs = {"encryption_enabled_by_default_for_room_type": False}
    [problem] = ledger_problems(hs)
    assert "redaction_retention_period is not set" in problem and "7 days" in problem


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    assert check_homeserver_config(tmp_path / "missing.yaml") == [
        f"cannot read {tmp_path / 'missing.yaml'} (No such file or directory)"
    ]
    (tmp_path / "list.yaml").write_text("- a\n")
    assert check_homeserver_config(tmp_path / "list.yaml") == [
        f"{tmp_path / 'list.yaml'} does not hold a YAML mapping"
    ]


def test_check_prints_the_problems_and_still_passes(tmp_path: Path) -> None:
    (tmp_path / "homeserver.yaml").write_text(
        yaml.safe_dump({"encryption_enabled_by_default_for_room_type": "all"})
    )
    config = {
        "server": {"public_url": "https://sbg.corp.example"},
        "database": f"sqlite:{tmp_path / 'g.db'}",
        "gateway": {"server_name": "corp.example", "homeserver_config": "homeserver.yaml"},
    }
    (tmp_path / "dmz_api.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "dmz_api", "--check", "-c", str(tmp_path / "dmz_api.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout == "config OK\n"
    warnings = done.stderr.splitlines()
    assert len(warnings) == 2, done.stderr
    assert all(w.startswith("dmz_api: warning: if compliance-ledger is on: ") for w in warnings)
    assert "encryption_enabled_by_default_for_room_type is 'all'" in warnings[0]
    assert "redaction_retention_period is not set" in warnings[1]


async def test_the_gateway_warns_when_the_ledger_is_loaded(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "homeserver.yaml").write_text(
        yaml.safe_dump({**LEDGER_OK, "retention": {"enabled": True}})
    )
    config = gateway_config(tmp_path, homeserver_config=str(tmp_path / "homeserver.yaml"))
    from dmz_api.app import init_app

    client = await aiohttp_client(init_app(config))
    service = client.app[GATEWAY]
    caplog.set_level(logging.WARNING, logger="dmz_api.gateway")
    await service.reload()
    assert "retention.enabled" not in caplog.text  # no ledger rule yet: nothing to say
    await service.apply_preset("compliance-ledger", {}, author="@sec:corp.example")
    await service.reload()
    warned = [r.getMessage() for r in caplog.records if "retention.enabled" in r.getMessage()]
    assert warned == [
        "compliance-ledger is on, but the homeserver's config: retention.enabled is true: "
        "message retention purges history"
    ]
    await service.reload()  # the same version again: said once
    assert sum("retention.enabled" in r.getMessage() for r in caplog.records) == 1
