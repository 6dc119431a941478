"""Session-wide fixtures: real Synapse homeservers on loopback, started once per run.

Tests that use them must not depend on a fresh server: they create uniquely named
users, tokens and rooms (``unique`` fixture).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.browser import CHROMIUM, CHROMIUM_ARGS
from devstack.postgres import Postgres
from devstack.synapse import Synapse

ARTIFACTS = Path(__file__).parent / "artifacts"

_counter = itertools.count()


@pytest.fixture(scope="session")
def dmz_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    """The DMZ homeserver: registration requires a token, admin token available."""
    with Synapse(tmp_path_factory.mktemp("dmz-synapse"), name="dmz") as hs:
        yield hs


@pytest.fixture(scope="session")
def internal_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    """The corporate homeserver where staff and the bot live."""
    with Synapse(tmp_path_factory.mktemp("internal-synapse"), name="corp") as hs:
        yield hs


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on loopback; each user makes its own database."""
    with Postgres() as cluster:
        yield cluster


@pytest.fixture
def unique() -> str:
    """A short name no other test in this run uses (for users, notes, rooms)."""
    return f"t{os.getpid() % 1000}x{next(_counter)}{secrets.token_hex(2)}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium() -> tuple[str, list[str]]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
        )
    return CHROMIUM, list(CHROMIUM_ARGS)
