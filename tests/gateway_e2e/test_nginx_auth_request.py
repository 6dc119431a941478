"""nginx (Debian) with ``auth_request`` to the gateway's ``GET /v1/authz``, in front of Synapse.

The server block is rendered from the shipped ``deploy/nginx/gateway-auth-request.conf``
when it exists, so the file operators copy is the one tested.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from devstack.nginx import Nginx
from devstack.process import http_json
from devstack.synapse import Synapse

from .conftest import AUTHZ_SECRET, Gateway

pytestmark = pytest.mark.slow

SHIPPED = Path(__file__).parents[2] / "deploy" / "nginx" / "gateway-auth-request.conf"

# Used only while deploy/nginx/ ships no config; the same directives the docs describe.
FALLBACK = """
location = /_bastion_authz {
    internal;
    proxy_pass http://127.0.0.1:GATEWAY_PORT/v1/authz;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Original-URI $request_uri;
    proxy_set_header X-Original-Method $request_method;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Authz-Secret "AUTHZ_SECRET";
}
location @bastion_forbidden {
    default_type application/json;
    return 403 '{"errcode":"M_FORBIDDEN","error":"$bastion_authz_reason"}';
}
location ~ ^(/_matrix|/_synapse/client|/\\.well-known/matrix) {
    auth_request /_bastion_authz;
    auth_request_set $bastion_authz_reason $upstream_http_x_authz_reason;
    error_page 403 = @bastion_forbidden;
    proxy_pass http://127.0.0.1:UPSTREAM_PORT;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $remote_addr;
    client_max_body_size 50M;
}
"""


def server_block(gateway_port: int, upstream_port: int) -> tuple[str, str]:
    """(the body of one ``server {}``, the ``http {}`` extras) for these ports."""
    if not SHIPPED.exists():
        text = FALLBACK
        text = text.replace("GATEWAY_PORT", str(gateway_port))
        text = text.replace("UPSTREAM_PORT", str(upstream_port))
        return text.replace("AUTHZ_SECRET", AUTHZ_SECRET), ""
    return render_shipped(SHIPPED.read_text(), gateway_port, upstream_port)


def render_shipped(text: str, gateway_port: int, upstream_port: int) -> tuple[str, str]:
    raise NotImplementedError(text)


class Edge:
    def __init__(self, nginx: Nginx, hs: Synapse, token: str, room: str) -> None:
        self.nginx, self.hs, self.token, self.room = nginx, hs, token, room
        self.txn = 0

    def put(self, path: str, body: object) -> tuple[int, object]:
        return http_json("PUT", f"{self.nginx.base_url}{path}", body, token=self.token)

    def message(self, text: str) -> tuple[int, object]:
        self.txn += 1
        return self.put(
            f"/_matrix/client/v3/rooms/{quote(self.room)}/send/m.room.message/n{self.txn}",
            {"msgtype": "m.text", "body": text},
        )

    def encryption(self, event_type: str) -> tuple[int, object]:
        return self.put(
            f"/_matrix/client/v3/rooms/{quote(self.room)}/state/{event_type}/",
            {"algorithm": "m.megolm.v1.aes-sha2"},
        )


def refused_by(result: tuple[int, object], rule: str) -> bool:
    status, body = result
    return (
        status == 403
        and isinstance(body, dict)
        and body.get("errcode") == "M_FORBIDDEN"
        and rule in str(body.get("error"))
    )


def test_auth_request_in_front_of_synapse(
    dmz_synapse: Synapse, start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    hs = dmz_synapse
    gateway = start_gateway(hs.server_name)
    block, http_extra = server_block(gateway.port, hs.port)
    with Nginx(tmp_path / "nginx", block, http_extra=http_extra) as nginx:
        token = hs.register_user(f"edge{secrets.token_hex(3)}", secrets.token_urlsafe(12))
        status, body = http_json(
            "POST", f"{nginx.base_url}/_matrix/client/v3/createRoom", {}, token=token
        )
        assert status == 200, body
        edge = Edge(nginx, hs, token, body["room_id"])
        assert edge.message("before any rule")[0] == 200

        gateway.rules_call("POST", "/v1/rules/preset/compliance-ledger")
        for event_type in ("m.room.encryption", "m%2Eroom%2Eencryption", "m.room%2eencryption"):
            result = edge.encryption(event_type)
            assert refused_by(result, "compliance-ledger"), (event_type, result)
        status, body = hs.client(
            "GET", f"/_matrix/client/v3/rooms/{quote(edge.room)}/state/m.room.encryption/", token
        )
        assert status == 404, body  # Synapse never saw it
        assert edge.message("on the record")[0] == 200

        blocked = gateway.wait_decision(
            lambda row: row["rule"] == "compliance-ledger", decision="block", source="authz"
        )
        assert blocked["event_type"] == "m.room.encryption"
        print(gateway.decisions(source="authz"))

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
        assert status == 500, body
        assert time.monotonic() - started < 5
        assert edge.encryption("m.room.encryption")[0] == 500


def test_fallback_renders_every_port() -> None:
    block, _ = server_block(1111, 2222)
    assert "1111" in block and "2222" in block and AUTHZ_SECRET in block
    assert not re.search(r"\b(GATEWAY|UPSTREAM)_PORT\b", block)
