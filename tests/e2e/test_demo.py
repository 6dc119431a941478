"""`make demo`'s scripted scenario, run end to end against the real stack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devstack.demo import main


@pytest.mark.slow
def test_demo_scenario_runs_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-wait", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    transcript = (tmp_path / "transcript.txt").read_text()
    assert "✘" not in transcript
    for expected in (
        "!bastion help lists what the staff member may run",
        "single-use onboarding URL",
        "account @bob:partners.localhost created",
        "refused at the gateway",
        "the rule was added in audit mode",
        "(revoked)",
        "the hash chain verifies",
        "Every step went as expected.",
    ):
        assert expected in transcript
    assert "stopped cleanly" in out
    # The transcript shows onboarding URLs, as the bot's replies do; no log of any
    # process (Synapse, dmz_api, maubot) may hold a token.
    tokens = re.findall(r"/register\?token=([A-Za-z0-9_-]+)", transcript)
    assert len(tokens) == 2
    logs = [*tmp_path.rglob("*.log"), *tmp_path.rglob("*.out")]
    assert len(logs) >= 5
    for log in logs:
        text = log.read_text(errors="replace")
        assert not any(token in text for token in tokens), log
