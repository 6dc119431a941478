"""The OpenAPI document holds against the running service, checked by schemathesis.

``python -m dmz_api`` with both roles (the registrar against the real DMZ Synapse) is
driven by schemathesis from its own ``/v1/openapi.json``: examples, boundary values,
random requests and stateful sequences (mint → read → revoke, add → patch → delete).
Every answer must be no 5xx, a documented status code, of the documented content type,
match its documented schema and carry its documented headers. Generation is seeded, so
a run is repeatable; a failure prints schemathesis' report with a curl line to replay.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.dmz import DmzApi
from devstack.synapse import Synapse

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


@pytest.fixture
def service(tmp_path: Path, dmz_synapse: Synapse) -> Iterator[DmzApi]:
    config = {
        "log_level": "WARNING",
        "registrar": {
            "homeserver": {
                "kind": "synapse",
                "url": dmz_synapse.base_url,
                "server_name": dmz_synapse.server_name,
                "admin_token": dmz_synapse.admin_token,
                "timeout": 10,
            },
            "secret": secrets.token_urlsafe(32),
            # The fuzzer posts the public form thousands of times from one address.
            "rate_limit": {"per_minute": 600_000, "burst": 100_000},
        },
        "gateway": {"server_name": "corp.example"},
    }
    with DmzApi(tmp_path / "dmz_api", config) as dmz:
        yield dmz


def test_the_service_keeps_its_openapi_contract(service: DmzApi) -> None:
    result = subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{service.base_url}/v1/openapi.json",
            "--header", f"Authorization: Bearer {service.api_key}",
            "--header", "X-Acting-User: @contract:corp.example",
            "--checks", CHECKS,
            "--max-examples", "30",
            "--seed", "1",
            "--workers", "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    assert " passed" in report and " failed" not in report, report[-2000:]
    log = (service.workdir / "dmz_api.log").read_text()
    assert "Unhandled error" not in log, log[-4000:]
