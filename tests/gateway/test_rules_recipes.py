"""docs/rules.md section 15 (Recipes): each YAML block there, judged on the cases the doc lists.

The rules come from the document itself, so a recipe edited in the doc is tested as edited.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmz_api.gateway.policy.compile import CompiledRuleset
from dmz_api.gateway.policy.evaluate import explain
from dmz_api.gateway.policy.matrix_paths import request_info
from dmz_api.gateway.policy.model import RequestClass, RequestInfo, Source
from dmz_api.gateway.policy.rules import Rule, new_rule, parse_instant

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"
SATURDAY = "2027-03-06T10:00:00Z"
WEDNESDAY = "2027-03-03T10:00:00Z"


def recipes() -> dict[str, Rule]:
    text = DOC.read_text()
    section = text[text.index("## 15. Recipes") :]
    found: dict[str, Rule] = {}
    for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
        spec: dict[str, Any] = yaml.safe_load(block)
        found[spec["id"]] = new_rule(spec, rule_id=spec["id"], author=None, now=0)
    return found


def fed(origin: str, path: str, method: str = "GET", at: str = WEDNESDAY) -> RequestInfo:
    info = request_info(method, path, [f'X-Matrix origin="{origin}",key="ed25519:a",sig="s"'])
    instant = parse_instant(at, "at")
    assert instant is not None
    info.at = instant / 1000
    return info


def sends_encryption(user: str) -> RequestInfo:
    """A user's m.room.encryption state event, as the check_event_for_spam callback sees it."""
    server = user.partition(":")[2]
    local = server == "corp.example"
    return RequestInfo(
        RequestClass.CLIENT if local else RequestClass.FEDERATION,
        "POST",
        "/v1/antispam/check_event_for_spam",
        origin=None if local else server,
        user=user,
        event_types=("m.room.encryption",),
        room="!r:corp.example",
        source=Source.ANTISPAM,
    )


def outcome(rule: Rule, req: RequestInfo) -> str:
    compiled = CompiledRuleset([rule], 3).decide(req)
    reference = explain([rule], req, 3).decision
    assert compiled == reference
    return compiled.outcome.value


SEND = "/_matrix/federation/v1/send/1"
MEDIA = "/_matrix/federation/v1/media/download/abc"


def join(room: str, origin: str) -> str:
    return f"/_matrix/federation/v1/make_join/{room}/@x:{origin}"


CASES = [
    ("partners-business-days", fed("partner.example", SEND, "PUT", SATURDAY), "block"),
    ("partners-business-days", fed("hs.partner.org", SEND, "PUT", SATURDAY), "block"),
    ("partners-business-days", fed("partner.example", SEND, "PUT", WEDNESDAY), "allow"),
    ("partners-business-days", fed("other.example", SEND, "PUT", SATURDAY), "allow"),
    ("media-eu-only", fed("partner.eu", MEDIA), "allow"),
    ("media-eu-only", fed("partner.us", MEDIA), "block"),
    ("media-eu-only", fed("partner.us", SEND, "PUT"), "allow"),
    (
        "regulator-audit-rooms",
        fed("regulator.example", join("!audit-2027:corp.example", "regulator.example")),
        "allow",
    ),
    (
        "regulator-audit-rooms",
        fed("regulator.example", join("!board:corp.example", "regulator.example")),
        "block",
    ),
    (
        "regulator-audit-rooms",
        fed("partner.example", join("!board:corp.example", "partner.example")),
        "allow",
    ),
    ("no-e2ee-but-archiver", sends_encryption("@alice:corp.example"), "block"),
    ("no-e2ee-but-archiver", sends_encryption("@archiver:corp.example"), "allow"),
    ("no-e2ee-but-archiver", sends_encryption("@bob:partner.example"), "allow"),
]


def test_every_recipe_has_cases() -> None:
    assert set(recipes()) == {name for name, _, _ in CASES}


@pytest.mark.parametrize(("name", "req", "expected"), CASES)
def test_recipe(name: str, req: RequestInfo, expected: str) -> None:
    assert outcome(recipes()[name], req) == expected
