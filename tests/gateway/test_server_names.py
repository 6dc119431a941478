"""Server names as Synapse reads them (docs/rules.md 2.1): one parser, one canonical spelling,
for X-Matrix origins, rules, antispam callbacks and dry runs."""

from __future__ import annotations

import pytest

from dmz_api.errors import InvalidParam
from dmz_api.gateway.enforce.antispam import CallbackMapper
from dmz_api.gateway.policy import server_names
from dmz_api.gateway.policy.compile import compile_ruleset
from dmz_api.gateway.policy.evaluate import explain
from dmz_api.gateway.policy.matrix_paths import classify, request_info
from dmz_api.gateway.policy.model import Outcome
from dmz_api.gateway.policy.rules import Kind, new_rule, validate_params

# (as sent, canonical); every one of these Synapse 1.163 takes for a server name.
SPELLINGS = [
    ("evil.example", "evil.example"),
    ("evil.example:8448", "evil.example:8448"),
    ("evil.example:008448", "evil.example:8448"),
    ("evil.example:+8448", "evil.example:8448"),
    ("evil.example:8_448", "evil.example:8448"),
    ("evil.example: 8448", "evil.example:8448"),
    ("evil.example:8448 ", "evil.example:8448"),
    ("evil.example:\u0668\u0664\u0664\u0668", "evil.example:8448"),  # Arabic-Indic digits
    ("EVIL.Example", "evil.example"),
    ("EVIL.Example:00443", "evil.example:443"),
    ("evil.example:-1", "evil.example:-1"),  # int() reads it; no port pattern matches it
    ("[::1]", "[::1]"),
    ("[0:0::1]:08448", "[::1]:8448"),
    ("[2001:DB8::1]", "[2001:db8::1]"),
    ("127.0.0.1:8448", "127.0.0.1:8448"),
]
# What Synapse refuses ("Malformed Authorization header"), so do we.
INVALID = [
    "",
    "evil.example:",
    "evil.example:0x20fb",
    "evil.example:84 48",
    "evil_example",
    "evil..example",
    ".evil.example",
    "evil.example:8448:1",
    "[::1",
    "[zz::1]",
    "[]",
    "[fe80::1%eth0]",
    "évil.example",
    "evil.example/x",
]


@pytest.mark.parametrize(("name", "canonical"), SPELLINGS)
def test_every_spelling_synapse_accepts_is_parsed_and_normalised(name: str, canonical: str) -> None:
    assert server_names.canonical(name) == canonical
    assert server_names.canonical(canonical) == canonical


@pytest.mark.parametrize("name", INVALID)
def test_what_synapse_refuses_is_no_server_name(name: str) -> None:
    assert server_names.canonical(name) is None


def test_a_trailing_dot_is_the_same_host_but_not_in_the_header() -> None:
    assert server_names.canonical("evil.example.") == "evil.example"
    assert server_names.canonical("Evil.Example.:008448") == "evil.example:8448"
    assert server_names.parse("evil.example.", trailing_dot=False) is None
    header = 'X-Matrix origin="evil.example.",key="k",sig="s"'
    assert server_names.parse_header(header) is None


def header(origin: str, *, quoted: bool = True) -> str:
    value = f'"{origin}"' if quoted else origin
    return f'X-Matrix origin={value},destination="corp.example",key="ed25519:a",sig="c2ln"'


@pytest.mark.parametrize(("name", "canonical"), SPELLINGS)
def test_x_matrix_origin_is_canonical_and_keeps_the_raw_spelling(name: str, canonical: str) -> None:
    found = server_names.x_matrix([header(name)])
    assert found.problem is None
    assert found.origin == canonical
    assert found.raw == (None if name == canonical else name)


@pytest.mark.parametrize(
    "value",
    [
        header("evil.example:0x20fb"),
        header("evil_example"),
        'X-Matrix origin="evil.example",key="k"',  # no sig
        'X-Matrix origin="evil.example",key="k",sig="s",junk',  # a parameter without =
        'X-Matrix origin= evil.example,key="k",sig="s"',  # Synapse does not strip values
        "X-Matrixorigin=evil.example",
        "X-Matrix",
    ],
)
def test_an_unparseable_x_matrix_header_is_malformed_not_unsigned(value: str) -> None:
    found = server_names.x_matrix([value])
    assert found.origin is None
    assert found.problem == "an X-Matrix Authorization header cannot be parsed"
    info = request_info("PUT", "/_matrix/federation/v1/send/1", [value])
    assert info.malformed is not None
    # Even without any rule the request is refused, never judged as unsigned.
    decision = compile_ruleset([], 1).decide(info)
    assert decision.outcome is Outcome.BLOCK and decision.rule_id == "builtin:malformed"


def test_quotes_are_stripped_as_synapse_strips_them() -> None:
    # A leading quote drops the first and last characters, closing quote or not.
    assert server_names.parse_header('X-Matrix origin="a.example:84489,key=k,sig=s') == (
        "a.example:8448"
    )
    assert server_names.parse_header(header("a\\.example")) == "a.example"
    assert server_names.parse_header(header("a.example", quoted=False)) == "a.example"


def test_two_spellings_of_one_server_are_one_origin_two_servers_conflict() -> None:
    same = server_names.x_matrix([header("a.example:08448"), header("A.example:8448")])
    assert same.origin == "a.example:8448" and same.problem is None
    other = server_names.x_matrix([header("a.example:8448"), header("a.example:8449")])
    assert other.problem == "conflicting X-Matrix origins"
    assert server_names.x_matrix(["Bearer syt_x"]).origin is None
    assert server_names.x_matrix([]).problem is None


@pytest.mark.parametrize(
    ("pattern", "canonical"),
    [
        ("Partner.Example.", "partner.example"),
        ("partner.example:08448", "partner.example:8448"),
        ("*.Example.ORG", "*.example.org"),
        ("*.example.org.", "*.example.org"),
        ("host:*", "host:*"),
        ("Host.:*", "host:*"),
        ("[0::1]:*", "[::1]:*"),
        ("host?:0443", "host?:443"),
        ("[::1]:8448", "[::1]:8448"),
        ("*", "*"),
    ],
)
def test_rule_patterns_are_stored_canonical(pattern: str, canonical: str) -> None:
    assert validate_params(Kind.SERVER_BLOCK, {"servers": [pattern]}) == {"servers": [canonical]}


@pytest.mark.parametrize(
    "pattern",
    ["evil_example", "host:+*", "*.example:0x1", "a..*", "évil.*", "evil_example:*", "a:b:*"],
)
def test_rule_patterns_that_name_no_server_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidParam, match="is not a server name or glob"):
        validate_params(Kind.SERVER_BLOCK, {"servers": [pattern]})


BLOCK_CASES = [
    (pattern, name)
    for pattern in ("evil.example", "evil.example:8448", "EVIL.example.", "*.example")
    for name, canonical in SPELLINGS
    if "evil" in name.lower()
    # A pattern with a port matches only that port.
    and (not pattern.endswith(":8448") or canonical.endswith(":8448"))
]


@pytest.mark.parametrize(("pattern", "name"), BLOCK_CASES)
def test_a_block_matches_every_spelling(pattern: str, name: str) -> None:
    rule = new_rule(
        {"id": "b", "kind": "server_block", "params": {"servers": [pattern]}},
        rule_id="b",
        author=None,
        now=0,
    )
    info = request_info("PUT", "/_matrix/federation/v1/send/1", [header(name)])
    assert compile_ruleset([rule], 1).decide(info).outcome is Outcome.BLOCK
    assert explain([rule], info, 1).decision.outcome is Outcome.BLOCK


def test_antispam_servers_are_canonical_and_only_the_exact_name_is_local() -> None:
    mapper = CallbackMapper("corp.example")
    event = {"type": "m.room.message", "sender": "@m:Evil.Example:008448", "room_id": "!r:c"}
    info = mapper.check_event_for_spam({"event": event})
    assert info.origin == "evil.example:8448" and info.origin_raw == "Evil.Example:008448"
    assert info.malformed is None
    local = mapper.check_event_for_spam({"event": {**event, "sender": "@a:corp.example"}})
    assert local.origin is None
    # Synapse's is_mine is exact: another spelling of our name is a remote server.
    spoof = mapper.check_event_for_spam({"event": {**event, "sender": "@a:CORP.example"}})
    assert spoof.origin == "corp.example" and spoof.request_class.value == "federation"
    bad = mapper.check_event_for_spam({"event": {**event, "sender": "@a:bad_host"}})
    assert bad.malformed == "the user's server name is invalid"


def test_policy_server_paths_are_federation() -> None:
    info = classify("POST", "/_matrix/policy/v1/sign")
    assert info.request_class.value == "federation" and not info.public
    assert info.endpoint == "policy.sign"
    unstable = classify("POST", "/_matrix/policy/unstable/org.matrix.msc4284/sign")
    assert unstable.endpoint == "policy.sign"


def test_unknown_unsigned_endpoints_are_refused() -> None:
    with pytest.raises(InvalidParam, match="is not an unsigned federation endpoint"):
        validate_params(
            Kind.SERVER_ALLOW, {"servers": ["a.example"], "allow_unsigned_endpoints": ["send"]}
        )
    with pytest.raises(InvalidParam, match="unknown key"):
        validate_params(Kind.SERVER_BLOCK, {"servers": ["a"], "allow_unsigned_endpoints": []})
