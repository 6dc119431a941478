"""docs/rules.md, section by section: every example, through both evaluators."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dmz_api.errors import InvalidParam
from dmz_api.gateway.enforce.federation import (
    BAD_TRANSACTION,
    NOT_DELIVERED,
    judge_transaction,
    reference_event_id,
)
from dmz_api.gateway.policy.compile import CompiledRuleset, unavailable_decision
from dmz_api.gateway.policy.evaluate import explain
from dmz_api.gateway.policy.matrix_paths import request_info
from dmz_api.gateway.policy.model import Decision, Mode, Outcome, RequestClass, RequestInfo, Source
from dmz_api.gateway.policy.rules import PRESETS, Rule

from .conftest import make_rule

ENC = "m.room.encryption"
ENC_B = ENC.encode()


def judge(rules: Sequence[Rule], req: RequestInfo) -> Decision:
    """The decision, after checking that the compiled and reference evaluators agree."""
    compiled = CompiledRuleset(rules, 7).decide(req)
    reference = explain(rules, req, 7).decision
    assert compiled == reference, (compiled, reference)
    return compiled


def outcome(rules: Sequence[Rule], req: RequestInfo) -> tuple[str, str | None]:
    decision = judge(rules, req)
    return decision.outcome.value, decision.rule_id


def fed(
    origin: str | None, path: str = "/_matrix/federation/v1/send/1", method: str = "PUT"
) -> RequestInfo:
    auth = [f'X-Matrix origin="{origin}",key="ed25519:a",sig="s"'] if origin else []
    return request_info(method, path, auth)


def client(
    path: str = "/_matrix/client/v3/rooms/!r:corp/send/m.room.message/1",
    method: str = "PUT",
    user_agent: str | None = "Element/1.11 (iOS)",
    ip: str | None = "203.0.113.5",
    body: bytes | None = None,
) -> RequestInfo:
    return request_info(method, path, user_agent=user_agent, ip=ip, body=body)


def antispam_event(sender: str, event_type: str, room: str, local: str = "corp") -> RequestInfo:
    server = sender.partition(":")[2]
    if server == local:
        return RequestInfo(
            RequestClass.CLIENT,
            "POST",
            "/v1/antispam/check_event_for_spam",
            user=sender,
            event_types=(event_type,),
            room=room,
            source=Source.ANTISPAM,
        )
    return RequestInfo(
        RequestClass.FEDERATION,
        "POST",
        "/v1/antispam/check_event_for_spam",
        origin=server,
        user=sender,
        event_types=(event_type,),
        room=room,
        source=Source.ANTISPAM,
    )


def test_no_rules_allows_everything() -> None:
    assert outcome([], fed("anyone.example")) == ("allow", None)
    assert outcome([], client()) == ("allow", None)
    assert judge([], client()).reason == "Allowed: no gateway rule objects"


# ---- 2.1 server names and globs


def test_server_globs_and_ports() -> None:
    def blocks(pattern: str, origin: str) -> bool:
        rules = [make_rule("b", "server_block", {"servers": [pattern]})]
        return judge(rules, fed(origin)).outcome is Outcome.BLOCK

    assert blocks("partner.example", "partner.example")
    assert blocks("partner.example", "partner.example:8448")
    assert blocks("Partner.Example", "PARTNER.example")
    assert blocks("localhost:8448", "localhost:8448")
    assert not blocks("localhost:8448", "localhost:8449")
    assert not blocks("localhost:8448", "localhost")
    assert blocks("localhost:*", "localhost:1234")
    assert blocks("*.example.org", "a.example.org")
    assert blocks("*.example.org", "a.b.example.org:443")
    assert not blocks("*.example.org", "example.org")
    assert not blocks("*.example.org", "badexample.org")
    assert blocks("*", "whatever.test")
    assert blocks("hs-??.corp.test", "hs-01.corp.test")
    assert not blocks("hs-??.corp.test", "hs-001.corp.test")
    assert blocks("*partner*", "mypartner.example")
    assert blocks("[::1]:8448", "[::1]:8448")
    assert blocks("10.0.0.?:8448", "10.0.0.7:8448")


def test_every_spelling_of_a_server_is_that_server() -> None:
    rules = [make_rule("b", "server_block", {"servers": ["Evil.Example.:08448"]})]
    assert rules[0].params["servers"] == ["evil.example:8448"]
    for origin in ("evil.example:8448", "evil.example:008448", "evil.example:+8448",
                   "evil.example:8_448", "evil.example: 8448", "EVIL.EXAMPLE:8448"):  # fmt: skip
        assert outcome(rules, fed(origin)) == ("block", "b"), origin
    assert outcome(rules, fed("evil.example:8449")) == ("allow", None)


def test_an_unreadable_x_matrix_origin_is_malformed() -> None:
    for origin in ("evil.example:0x20fb", "evil_example", "evil.example."):
        assert outcome([], fed(origin)) == ("block", "builtin:malformed"), origin


# ---- 2.2 server_allow


def test_server_allow_example() -> None:
    rules = [make_rule("A", "server_allow", {"servers": ["partner.example", "*.partner.org"]})]
    assert outcome(rules, fed("partner.example")) == ("allow", "A")
    assert outcome(rules, fed("hs1.partner.org:8448")) == ("allow", "A")
    assert outcome(rules, fed("other.example")) == ("block", "A")
    assert outcome(rules, fed(None)) == ("block", "A")
    assert outcome(rules, fed(None, "/_matrix/key/v2/server", "GET")) == ("allow", None)
    assert outcome(rules, fed(None, "/.well-known/matrix/server", "GET")) == ("allow", None)
    assert outcome(rules, fed(None, "/_matrix/federation/v1/version", "GET")) == ("allow", None)
    assert outcome(rules, client()) == ("allow", None)
    blocked = judge(rules, fed("other.example"))
    assert blocked.status == 403 and blocked.mode is Mode.ENFORCE
    assert blocked.reason == "This server is not on the gateway's federation allow list (rule A)"


def test_server_allow_lists_form_one_list() -> None:
    rules = [
        make_rule("A", "server_allow", {"servers": ["a.example"]}, priority=10),
        make_rule("B", "server_allow", {"servers": ["b.example"]}, priority=20),
    ]
    assert outcome(rules, fed("a.example")) == ("allow", "A")
    assert outcome(rules, fed("b.example")) == ("allow", "B")
    assert outcome(rules, fed("c.example")) == ("block", "A")


def test_disabled_allow_rule_does_not_close_the_gate() -> None:
    rules = [make_rule("A", "server_allow", {"servers": ["a.example"]}, enabled=False)]
    assert outcome(rules, fed("c.example")) == ("allow", None)


def test_remote_invitee_is_an_origin() -> None:
    rules = [make_rule("A", "server_allow", {"servers": ["partner.example"]})]
    invite = RequestInfo(
        RequestClass.CLIENT,
        "POST",
        "/v1/antispam/user_may_invite",
        origin="stranger.example",
        user="@alice:corp",
        event_types=("m.room.member",),
        source=Source.ANTISPAM,
    )
    assert outcome(rules, invite) == ("block", "A")
    invite.origin = "partner.example"
    assert outcome(rules, invite) == ("allow", "A")


# ---- 2.3 server_block


def test_server_block_wins_over_allow() -> None:
    rules = [
        make_rule("A", "server_allow", {"servers": ["*.example"]}, priority=1),
        make_rule("B", "server_block", {"servers": ["evil.example"]}, priority=500),
    ]
    assert outcome(rules, fed("evil.example")) == ("block", "B")
    assert outcome(rules, fed("good.example")) == ("allow", "A")
    assert judge(rules, fed("evil.example")).reason == (
        "Federation with this server is blocked by gateway rule B"
    )


def test_server_block_ignores_client_requests() -> None:
    rules = [make_rule("B", "server_block", {"servers": ["*"]})]
    assert outcome(rules, client()) == ("allow", None)
    assert outcome(rules, fed(None)) == ("allow", None)


# ---- 2.4 client_allow


def test_client_allow_example() -> None:
    rules = [
        make_rule("A", "client_allow", {"user_agents": ["^Element/", "Element Desktop"]}),
        make_rule("B", "client_allow", {"networks": ["10.0.0.0/8"]}),
    ]
    assert outcome(rules, client(user_agent="Element/1.11 (iOS)", ip="203.0.113.5")) == (
        "allow",
        "A",
    )
    assert outcome(rules, client(user_agent="curl/8", ip="10.1.2.3")) == ("allow", "B")
    assert outcome(rules, client(user_agent="curl/8", ip="203.0.113.5")) == ("block", "A")
    assert outcome(rules, client(user_agent="Mozilla Element Desktop/1", ip="1.2.3.4")) == (
        "allow",
        "A",
    )
    assert outcome(rules, client(user_agent="x", ip="::ffff:10.9.9.9")) == ("allow", "B")
    assert outcome(rules, fed("any.example")) == ("allow", None)


def test_client_allow_rule_needs_every_criterion() -> None:
    rules = [
        make_rule("A", "client_allow", {"user_agents": ["^Element/"], "networks": ["10.0.0.0/8"]})
    ]
    assert outcome(rules, client(user_agent="Element/1", ip="10.0.0.1")) == ("allow", "A")
    assert outcome(rules, client(user_agent="Element/1", ip="11.0.0.1")) == ("block", "A")
    assert outcome(rules, client(user_agent="curl", ip="10.0.0.1")) == ("block", "A")
    assert outcome(rules, client(user_agent="Element/1", ip=None)) == ("block", "A")
    assert outcome(rules, client(user_agent="Element/1", ip="not-an-ip")) == ("block", "A")


def test_client_allow_missing_user_agent_is_empty() -> None:
    rules = [make_rule("A", "client_allow", {"user_agents": ["^Element/"]})]
    assert outcome(rules, client(user_agent="")) == ("block", "A")
    anything = [make_rule("A", "client_allow", {"user_agents": [".*"]})]
    assert outcome(anything, client(user_agent="")) == ("allow", "A")


def test_client_allow_skipped_without_connection_details() -> None:
    rules = [make_rule("A", "client_allow", {"user_agents": ["^Element/"]})]
    event = antispam_event("@alice:corp", "m.room.message", "!r:corp")
    assert outcome(rules, event) == ("allow", None)
    login = RequestInfo(
        RequestClass.CLIENT,
        "POST",
        "/v1/antispam/check_login_for_spam",
        user="@alice:corp",
        user_agent="curl/8",
        ip="1.2.3.4",
        source=Source.ANTISPAM,
    )
    assert outcome(rules, login) == ("block", "A")


# ---- 2.5 event_type_block


def test_event_type_block_example() -> None:
    rules = [make_rule("A", "event_type_block", {"event_types": [ENC], "scope": "client"})]
    state = f"/_matrix/client/v3/rooms/!r:corp/state/{ENC}/"
    assert outcome(rules, client(state)) == ("block", "A")
    assert outcome(
        rules, client("/_matrix/client/r0/rooms/!r:corp/state/m%2Eroom%2Eencryption")
    ) == ("block", "A")
    body = b'{"initial_state": [{"type": "m.room.encryption", "content": {}}]}'
    assert outcome(rules, client("/_matrix/client/v3/createRoom", "POST", body=body)) == (
        "block",
        "A",
    )
    assert outcome(rules, antispam_event("@p:partner.example", ENC, "!r:corp")) == ("allow", None)
    assert outcome(rules, antispam_event("@alice:corp", ENC, "!r:corp")) == ("block", "A")
    assert outcome(rules, client(state, "GET")) == ("allow", None)
    assert (
        judge(rules, client(state)).reason
        == "Event type m.room.encryption is blocked by gateway rule A"
    )


def test_event_type_block_scopes() -> None:
    fed_only = [make_rule("F", "event_type_block", {"event_types": [ENC], "scope": "federation"})]
    both = [make_rule("B", "event_type_block", {"event_types": [ENC]})]
    remote = antispam_event("@p:partner.example", ENC, "!r:corp")
    local = antispam_event("@alice:corp", ENC, "!r:corp")
    assert outcome(fed_only, remote) == ("block", "F")
    assert outcome(fed_only, local) == ("allow", None)
    assert outcome(both, remote) == ("block", "B")
    assert outcome(both, local) == ("block", "B")


def test_event_type_match_is_exact() -> None:
    rules = [make_rule("A", "event_type_block", {"event_types": [ENC]})]
    assert outcome(rules, client("/_matrix/client/v3/rooms/!r/send/M.room.encryption/1")) == (
        "allow",
        None,
    )
    assert outcome(rules, client("/_matrix/client/v3/rooms/!r/send/m.room.encryption.x/1")) == (
        "allow",
        None,
    )


def test_event_type_block_actions_example() -> None:
    rules = [make_rule("B", "event_type_block", {"actions": ["account.erase", "e2ee.keys"]})]
    deactivate = "/_matrix/client/v3/account/deactivate"
    assert outcome(rules, client(deactivate, "POST", body=b'{"erase": true}')) == ("block", "B")
    assert judge(rules, client(deactivate, "POST", body=b'{"erase": true}')).reason == (
        "The action account.erase is blocked by gateway rule B"
    )
    assert outcome(rules, client(deactivate, "POST", body=b'{"erase": false}')) == ("allow", None)
    assert outcome(rules, client(deactivate, "POST", body=b'{"erase": "yes"}')) == ("allow", None)
    assert outcome(rules, client("/_matrix/client/v3/keys/upload", "POST")) == ("block", "B")
    assert outcome(rules, client("/_matrix/client/r0/keys/upload/DEV", "POST")) == ("block", "B")
    assert outcome(rules, client("/_matrix/client/v3/keys/query", "POST")) == ("allow", None)
    claim = fed("partner.example", "/_matrix/federation/v1/user/keys/claim", "POST")
    assert outcome(rules, claim) == ("block", "B")
    query = fed("partner.example", "/_matrix/federation/v1/user/keys/query", "POST")
    assert outcome(rules, query) == ("allow", None)


def test_section_one_actions_by_request() -> None:
    def actions(method: str, path: str, body: bytes | None = None) -> tuple[str, ...]:
        return request_info(method, path, body=body).actions

    keys = ("e2ee.keys",)
    assert actions("POST", "/_matrix/client/v3/keys/claim") == keys
    assert actions("POST", "/_matrix/client/v3/keys/device_signing/upload") == keys
    assert actions("POST", "/_matrix/client/v3/keys/signatures/upload") == keys
    assert actions("PUT", "/_matrix/client/v3/room_keys/keys/!r/s?version=1") == keys
    assert actions("DELETE", "/_matrix/client/v3/room_keys/version/1") == keys
    assert actions("GET", "/_matrix/client/v3/room_keys/version") == ()
    assert (
        actions("PUT", "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device") == keys
    )
    assert actions("POST", "/_matrix/client/v3/keys/changes") == ()
    ban = "/_matrix/client/v3/rooms/!r:corp/ban"
    flagged = b'{"user_id": "@g:corp", "org.matrix.msc4293.redact_events": true}'
    assert actions("POST", ban, flagged) == ("membership.redact_events",)
    assert actions("POST", ban.replace("ban", "kick"), flagged) == ("membership.redact_events",)
    assert actions("POST", ban, b'{"user_id": "@g:corp"}') == ()


def test_actions_respect_scope() -> None:
    rules = [make_rule("C", "event_type_block", {"actions": ["e2ee.keys"], "scope": "client"})]
    claim = fed("partner.example", "/_matrix/federation/v1/user/keys/claim", "POST")
    assert outcome(rules, claim) == ("allow", None)
    assert outcome(rules, client("/_matrix/client/v3/keys/upload", "POST")) == ("block", "C")


def test_unknown_actions_are_refused() -> None:
    with pytest.raises(InvalidParam, match="is not an action"):
        make_rule("X", "event_type_block", {"actions": ["e2ee.everything"]})
    with pytest.raises(InvalidParam, match="at least one event type"):
        make_rule("X", "event_type_block", {"event_types": [], "actions": []})


# ---- 2.6 partner_scope


def test_partner_scope_example() -> None:
    rules = [
        make_rule(
            "A",
            "partner_scope",
            {
                "servers": ["partner.example"],
                "rooms": ["!shared:corp"],
                "event_types": ["m.room.member", "m.room.message"],
            },
        )
    ]
    make_join = "/_matrix/federation/v1/make_join/{}/@p:partner.example"
    assert outcome(rules, fed("partner.example", make_join.format("!shared:corp"), "GET")) == (
        "allow",
        None,
    )
    assert outcome(rules, fed("partner.example", make_join.format("!secret:corp"), "GET")) == (
        "block",
        "A",
    )
    assert outcome(rules, antispam_event("@p:partner.example", "m.reaction", "!shared:corp")) == (
        "block",
        "A",
    )
    assert outcome(
        rules, antispam_event("@p:partner.example", "m.room.message", "!shared:corp")
    ) == ("allow", None)
    assert outcome(rules, fed("partner.example")) == ("allow", None)
    assert outcome(rules, fed("other.example", make_join.format("!secret:corp"), "GET")) == (
        "allow",
        None,
    )


def test_partner_scopes_are_separate_constraints() -> None:
    rules = [
        make_rule(
            "A", "partner_scope", {"servers": ["p.example"], "rooms": ["!one:corp"]}, priority=1
        ),
        make_rule(
            "B",
            "partner_scope",
            {"servers": ["*.example"], "event_types": ["m.room.member"]},
            priority=2,
        ),
    ]
    path = "/_matrix/federation/v2/send_join/{}/$e"
    assert outcome(rules, fed("p.example", path.format("!one:corp"))) == ("allow", None)
    assert outcome(rules, fed("p.example", path.format("!two:corp"))) == ("block", "A")
    assert outcome(rules, antispam_event("@u:p.example", "m.room.message", "!one:corp")) == (
        "block",
        "B",
    )


# ---- 3 pipeline order


def test_priority_decides_which_rule_is_recorded() -> None:
    block = make_rule("blk", "server_block", {"servers": ["evil.example"]}, priority=50)
    allow = make_rule("alw", "server_allow", {"servers": ["good.example"]}, priority=10)
    etb = make_rule("etb", "event_type_block", {"event_types": ["m.room.member"]}, priority=30)
    path = "/_matrix/federation/v1/make_join/!r:corp/@u:evil.example"
    assert outcome([block, allow, etb], fed("evil.example", path, "GET")) == ("block", "alw")
    allow2 = make_rule("alw", "server_allow", {"servers": ["good.example"]}, priority=90)
    assert outcome([block, allow2, etb], fed("evil.example", path, "GET")) == ("block", "etb")
    same = [
        make_rule("b", "server_block", {"servers": ["evil.example"]}),
        make_rule("a", "server_block", {"servers": ["*.example"]}),
    ]
    assert outcome(same, fed("evil.example")) == ("block", "a")


def test_allow_rules_never_exempt_from_blocks() -> None:
    rules = [
        make_rule("A", "server_allow", {"servers": ["partner.example"]}, priority=0),
        make_rule("E", "event_type_block", {"event_types": [ENC]}, priority=999),
    ]
    assert outcome(rules, antispam_event("@p:partner.example", ENC, "!r:corp")) == ("block", "E")


# ---- 3.1 audit and enforce


def test_audit_example() -> None:
    audit = [make_rule("A", "server_block", {"servers": ["evil.example"]}, mode="audit")]
    decision = judge(audit, fed("evil.example"))
    assert (decision.outcome, decision.rule_id, decision.mode, decision.allowed) == (
        Outcome.WOULD_BLOCK,
        "A",
        Mode.AUDIT,
        True,
    )
    assert decision.reason.endswith("(audit mode: allowed)")
    enforced = [make_rule("A", "server_block", {"servers": ["evil.example"]})]
    assert outcome(enforced, fed("evil.example")) == ("block", "A")


def test_audit_server_allow_previews_zero_trust() -> None:
    rules = [make_rule("A", "server_allow", {"servers": ["partner.example"]}, mode="audit")]
    assert outcome(rules, fed("stranger.example")) == ("would_block", "A")
    assert outcome(rules, fed("partner.example")) == ("allow", None)


def test_audit_allow_never_opens_what_enforce_refuses() -> None:
    rules = [
        make_rule("E", "server_allow", {"servers": ["a.example"]}),
        make_rule("P", "server_allow", {"servers": ["b.example"]}, mode="audit"),
    ]
    assert outcome(rules, fed("b.example")) == ("block", "E")
    assert outcome(rules, fed("a.example")) == ("allow", "E")


def test_enforce_block_outranks_audit_block() -> None:
    rules = [
        make_rule(
            "audit-first", "server_block", {"servers": ["evil.example"]}, mode="audit", priority=1
        ),
        make_rule("enforced", "server_block", {"servers": ["evil.example"]}, priority=9),
    ]
    assert outcome(rules, fed("evil.example")) == ("block", "enforced")


# ---- 3.2 built-in refusals, 3.3 failing closed


def test_builtin_refusals_apply_without_rules() -> None:
    a = 'X-Matrix origin="a.example",key="k",sig="s"'
    b = 'X-Matrix origin="b.example",key="k",sig="s"'
    req = request_info("PUT", "/_matrix/federation/v1/send/1", [a, b])
    assert outcome([], req) == ("block", "builtin:malformed")
    dots = client("/_matrix/client/v3/rooms/!r/send/%2E%2E/state/m.room.encryption")
    assert outcome([], dots) == ("block", "builtin:malformed")


def test_unavailable_decision() -> None:
    decision = unavailable_decision(3)
    assert (decision.outcome, decision.status, decision.rule_id) == (
        Outcome.BLOCK,
        503,
        "builtin:unavailable",
    )


# ---- trace


def test_trace_lists_every_rule_in_order() -> None:
    rules = [
        make_rule("z", "server_block", {"servers": ["evil.example"]}, priority=5),
        make_rule("y", "event_type_block", {"event_types": [ENC]}, priority=5, enabled=False),
        make_rule("x", "client_allow", {"networks": ["10.0.0.0/8"]}, priority=1),
    ]
    trace = explain(rules, fed("evil.example"), 1).trace
    assert [(t["rule"], t["result"], t["decisive"]) for t in trace] == [
        ("x", "not_applicable", False),
        ("y", "disabled", False),
        ("z", "block", True),
    ]


def test_unsigned_onbind_needs_allow_unsigned_endpoints() -> None:
    onbind = fed(None, "/_matrix/federation/v1/3pid/onbind")
    profile = fed(None, "/_matrix/federation/v1/query/profile", "GET")
    plain = [make_rule("A", "server_allow", {"servers": ["partner.example"]})]
    assert outcome(plain, onbind) == ("block", "A")
    params = {"servers": ["partner.example"], "allow_unsigned_endpoints": ["3pid/onbind"]}
    rules = [make_rule("A", "server_allow", params)]
    assert outcome(rules, onbind) == ("allow", "A")
    assert outcome(rules, profile) == ("block", "A")
    assert outcome(rules, fed("other.example", "/_matrix/federation/v1/3pid/onbind")) == (
        "block",
        "A",
    )
    # An audit rule that allows it previews nothing blocked; an enforced gate without it
    # still refuses (an audit allow never opens what an enforced rule refuses).
    audit = [*plain, make_rule("B", "server_allow", params, mode="audit")]
    assert outcome(audit, onbind) == ("block", "A")
    assert outcome([make_rule("B", "server_allow", params, mode="audit")], onbind) == (
        "allow",
        None,
    )


# ---- 5 presets


def ledger() -> list[Rule]:
    preset = PRESETS["compliance-ledger"]
    return [make_rule(preset.rule_id, preset.kind, dict(preset.params))]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/_matrix/client/v3/rooms/!r:corp/state/m.room.encryption/", None),
        ("PUT", "/_matrix/client/v3/rooms/!r:corp/send/m.room.encrypted/1", None),
        ("PUT", "/_matrix/client/v3/rooms/!r:corp/redact/$e/1", None),
        ("PUT", "/_matrix/client/v3/rooms/!r:corp/state/m.room.retention/", None),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.room_key/1", None),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/1", None),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.room_key_request/1", None),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.forwarded_room_key/1", None),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.secret.send/1", None),
        ("POST", "/_matrix/client/v3/keys/upload", None),
        ("POST", "/_matrix/client/v3/account/deactivate", b'{"erase": true}'),
        (
            "POST",
            "/_matrix/client/v3/createRoom",
            b'{"initial_state": [{"type": "m.room.encryption"}]}',
        ),
    ],
)
def test_compliance_ledger_refuses(method: str, path: str, body: bytes | None) -> None:
    assert outcome(ledger(), client(path, method, body=body)) == ("block", "compliance-ledger")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/_matrix/client/v3/rooms/!r:corp/send/m.room.message/1", None),
        ("PUT", "/_matrix/client/v3/sendToDevice/m.key.verification.request/1", None),
        ("POST", "/_matrix/client/v3/keys/query", None),
        ("POST", "/_matrix/client/v3/account/deactivate", b'{"erase": false}'),
        ("POST", "/_matrix/client/v3/account/deactivate", b"{}"),
    ],
)
def test_compliance_ledger_allows(method: str, path: str, body: bytes | None) -> None:
    assert outcome(ledger(), client(path, method, body=body)) == ("allow", None)


def test_compliance_ledger_in_federation() -> None:
    for event_type in ("m.room.encryption", "m.room.encrypted", "m.room.redaction"):
        remote = antispam_event("@p:partner.example", event_type, "!r:corp")
        assert outcome(ledger(), remote) == ("block", "compliance-ledger")


# ---- 7.1 federation transactions, event by event


def transaction(rules: Sequence[Rule], body: dict[str, object]) -> object:
    compiled = CompiledRuleset(rules, 7)
    base = fed("partner.example")

    def decide(req: RequestInfo) -> Decision:
        assert compiled.decide(req) == explain(rules, req, 7).decision
        return compiled.decide(req)

    return judge_transaction(decide, base, body)


def test_transaction_example() -> None:
    message = {"type": "m.room.message", "room_id": "!r:corp", "content": {"body": "hi"}}
    encryption = {"type": "m.room.encryption", "room_id": "!r:corp", "content": {}}
    assert transaction(ledger(), {"pdus": [message], "edus": []}) is None
    answer = transaction(ledger(), {"pdus": [message, encryption]})
    assert answer == {
        "pdus": {
            reference_event_id(encryption): {
                "error": "Event type m.room.encryption is blocked by gateway rule compliance-ledger"
            },
            reference_event_id(message): {"error": NOT_DELIVERED},
        }
    }
    key = {"edu_type": "m.direct_to_device", "content": {"type": "m.room_key", "messages": {}}}
    typing = {"edu_type": "m.typing", "content": {"room_id": "!r:corp", "typing": True}}
    assert transaction(ledger(), {"pdus": [], "edus": [typing]}) is None
    assert transaction(ledger(), {"pdus": [], "edus": [typing, key]}) == {"pdus": {}}
    assert transaction(ledger(), {"pdus": [message] * 51}) == BAD_TRANSACTION


def test_transaction_audit_rules_forward() -> None:
    rules = [
        make_rule("A", "event_type_block", {"event_types": ["m.room.encryption"]}, mode="audit")
    ]
    encryption = {"type": "m.room.encryption", "room_id": "!r:corp", "content": {}}
    assert transaction(rules, {"pdus": [encryption]}) is None


def test_transaction_events_meet_partner_scope() -> None:
    rules = [
        make_rule("P", "partner_scope", {"servers": ["partner.example"], "rooms": ["!shared:corp"]})
    ]
    inside = {"type": "m.room.message", "room_id": "!shared:corp", "content": {}}
    outside = {"type": "m.room.message", "room_id": "!secret:corp", "content": {}}
    assert transaction(rules, {"pdus": [inside]}) is None
    answer = transaction(rules, {"pdus": [inside, outside]})
    assert isinstance(answer, dict)
    assert "gateway rule P" in answer["pdus"][reference_event_id(outside)]["error"]
