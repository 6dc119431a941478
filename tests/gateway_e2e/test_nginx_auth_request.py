"""nginx (Debian) with ``auth_request`` to the gateway's ``GET /v1/authz``, in front of Synapse.

The nginx config is the shipped ``deploy/nginx/gateway-auth-request.conf`` (and its
``authz-secret.conf.example``) with only addresses, ports and file paths substituted, so
the file operators install is the file tested. Every substitution must apply: a change to
the shipped file that this rendering no longer understands fails here instead of testing
something else.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from devstack.nginx import Nginx
from devstack.ports import free_port
from devstack.synapse import Synapse, make_self_signed_cert

from .conftest import AUTHZ_SECRET, Gateway

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).parents[2] / "deploy" / "nginx"
SHIPPED = DEPLOY / "gateway-auth-request.conf"
SECRET_EXAMPLE = DEPLOY / "authz-secret.conf.example"


def substitute(text: str, pattern: str, replacement: str, *, count: int = 0) -> str:
    result, n = re.subn(pattern, replacement, text, count=count, flags=re.MULTILINE)
    assert n, f"{SHIPPED.name} no longer has {pattern!r}: update this rendering"
    return result


def render(
    workdir: Path, *, port: int, gateway_port: int, homeserver_port: int
) -> tuple[str, Path]:
    """(the shipped file for an ``http {}`` block on loopback, the TLS certificate)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = make_self_signed_cert(workdir)
    secret_conf = workdir / "authz-secret.conf"
    secret_conf.write_text(
        substitute(
            SECRET_EXAMPLE.read_text(), r"REPLACE-with-the-gateway-authz-secret", AUTHZ_SECRET
        )
    )
    text = re.sub(r"#[^\n]*", "", SHIPPED.read_text())  # comments name paths and servers too
    text = substitute(text, r"^\s*listen [^;]+;\n", "")
    text = substitute(
        text, r"^(\s*)server_name ", rf"\1listen 127.0.0.1:{port} ssl http2;\n\1server_name "
    )
    text = substitute(text, r"^(\s*ssl_certificate)\s+\S+;", rf"\1 {cert};")
    text = substitute(text, r"^(\s*ssl_certificate_key)\s+\S+;", rf"\1 {key};")
    text = substitute(
        text,
        r"(upstream bastion_homeserver \{[^}]*?server )[^;]+;",
        rf"\g<1>127.0.0.1:{homeserver_port};",
    )
    text = substitute(
        text, r"(upstream bastion_authz \{[^}]*?server )[^;]+;", rf"\g<1>127.0.0.1:{gateway_port};"
    )
    text = substitute(text, r"/var/log/nginx/", f"{workdir}/")
    text = substitute(
        text, r"include /etc/nginx/bastion/authz-secret\.conf;", f"include {secret_conf};"
    )
    assert "/etc/" not in text, text
    return text, cert


class Edge:
    """A client of the homeserver through nginx (HTTPS, trusting the self-signed cert)."""

    def __init__(self, base_url: str, cert: Path, token: str) -> None:
        self.base_url, self.token = base_url, token
        self.context = ssl.create_default_context(cafile=str(cert))
        self.room = ""
        self.txn = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def message(self, text: str) -> tuple[int, Any]:
        self.txn += 1
        return self.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(self.room)}/send/m.room.message/n{self.txn}",
            {"msgtype": "m.text", "body": text},
        )

    def encryption(self, event_type: str) -> tuple[int, Any]:
        return self.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(self.room)}/state/{event_type}/",
            {"algorithm": "m.megolm.v1.aes-sha2"},
        )


def refused_by(result: tuple[int, Any], rule: str) -> bool:
    status, body = result
    return (
        status == 403
        and isinstance(body, dict)
        and body.get("errcode") == "M_FORBIDDEN"
        and f"rule {rule}" in str(body.get("error"))
    )


def test_auth_request_in_front_of_synapse(
    dmz_synapse: Synapse, start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    hs = dmz_synapse
    gateway = start_gateway(hs.server_name, trusted_proxies=["127.0.0.1/32"])
    port = free_port()
    shipped, cert = render(
        tmp_path / "nginx", port=port, gateway_port=gateway.port, homeserver_port=hs.port
    )
    # The launcher's own server block stays unused: the shipped server listens on `port`.
    with Nginx(tmp_path / "nginx", "return 404;", http_extra=shipped):
        token = hs.register_user(f"edge{secrets.token_hex(3)}", secrets.token_urlsafe(12))
        edge = Edge(f"https://127.0.0.1:{port}", cert, token)
        status, body = edge.call("POST", "/_matrix/client/v3/createRoom", {})
        assert status == 200, body
        edge.room = body["room_id"]
        assert edge.message("before any rule")[0] == 200

        gateway.rules_call("POST", "/v1/rules/preset/compliance-ledger")
        for event_type in ("m.room.encryption", "m%2Eroom%2Eencryption", "m.room%2eencryption"):
            result = edge.encryption(event_type)
            assert refused_by(result, "compliance-ledger"), (event_type, result)
        status, body = hs.client(
            "GET", f"/_matrix/client/v3/rooms/{quote(edge.room)}/state/m.room.encryption/", token
        )
        assert status == 404, body  # Synapse never saw any of them
        assert edge.message("on the record")[0] == 200

        blocked = gateway.wait_decisions(
            lambda rows: len(rows) == 3, decision="block", source="authz", rule="compliance-ledger"
        )
        assert {(row["path"], row["event_type"], row["room"]) for row in blocked} == {
            ("/_matrix/client/v3/rooms/{roomId}/state/{eventType}", "m.room.encryption", edge.room)
        }

        # A rule change is in force for the very next request: no restart, no reload.
        gateway.add_rule(
            {
                "id": "quiet-room",
                "kind": "event_type_block",
                "params": {"event_types": ["m.room.message"], "scope": "client"},
            }
        )
        assert refused_by(edge.message("muted"), "quiet-room")
        gateway.delete_rule("quiet-room")
        assert edge.message("heard again")[0] == 200

        # The decision server gone: nginx refuses (500), it never lets the request through.
        gateway.stop()
        started = time.monotonic()
        status, body = edge.message("nobody to ask")
        assert status == 500 and body["errcode"] == "M_UNKNOWN", body
        assert time.monotonic() - started < 5
        assert edge.encryption("m.room.encryption")[0] == 500
        bodies = [
            e["content"].get("body")
            for e in hs.client(
                "GET", f"/_matrix/client/v3/rooms/{quote(edge.room)}/messages?dir=b", token
            )[1]["chunk"]
        ]
        assert "heard again" in bodies and "muted" not in bodies and "nobody to ask" not in bodies


def test_rules_that_name_users_hold_behind_nginx(
    dmz_synapse: Synapse, start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    """With ``user_lookup`` on, the gateway asks the homeserver (``upstream``, which nginx
    fronts) whose token each forwarded client request carries, as the built-in proxy does."""
    hs = dmz_synapse
    gateway = start_gateway(
        hs.server_name,
        trusted_proxies=["127.0.0.1/32"],
        upstream=hs.base_url,
        user_lookup={"enabled": True},
    )
    port = free_port()
    shipped, cert = render(
        tmp_path / "nginx", port=port, gateway_port=gateway.port, homeserver_port=hs.port
    )
    with Nginx(tmp_path / "nginx", "return 404;", http_extra=shipped):
        alice_local, bob_local = f"alice{secrets.token_hex(3)}", f"bob{secrets.token_hex(3)}"
        alice = Edge(f"https://127.0.0.1:{port}", cert, hs.register_user(alice_local, "pw-a" * 4))
        bob = Edge(f"https://127.0.0.1:{port}", cert, hs.register_user(bob_local, "pw-b" * 4))
        status, body = alice.call(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}
        )
        assert status == 200, body
        alice.room = bob.room = body["room_id"]
        assert bob.call("POST", f"/_matrix/client/v3/join/{quote(bob.room)}", {})[0] == 200

        alice_id = hs.user_id(alice_local)
        gateway.add_rule(
            {
                "id": "mute-alice",
                "kind": "expr",
                "params": {
                    "expression": f'request.user == "{alice_id}" '
                    '&& "m.room.message" in request.event_types'
                },
            }
        )
        assert refused_by(alice.message("from alice"), "mute-alice")
        assert bob.message("from bob")[0] == 200
        rows = gateway.wait_decisions(bool, source="authz", rule="mute-alice")
        assert {row["user"] for row in rows} == {alice_id}
        allowed = gateway.wait_decisions(
            lambda rows: any(row["user"] == hs.user_id(bob_local) for row in rows),
            source="authz",
            decision="allow",
        )
        assert allowed
