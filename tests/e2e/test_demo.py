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
        "its guest will be invited to the project room",
        "created on the page",
        "the guest joined over federation",
        "make_join and send_join passed the gateway",
        "the guest's homeserver asks our policy server before it sends",
        "refused by the guest's own homeserver, on our policy server's answer",
        "ordinary messages still flow both ways",
        "the rule was added in audit mode",
        "server ACL denies evil.example",
        "the guest is out of the project room",
        "the guest's DMZ account is deactivated",
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
