"""A throwaway PostgreSQL cluster on loopback, from Debian's server binaries.

``initdb`` refuses to run as root, so as root the cluster is made and run by the
``postgres`` account the Debian package creates, in a directory outside any private
temporary directory. Trust authentication on loopback only; fsync off (throwaway data).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from .ports import free_port


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL server's ``bin`` directory."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class Postgres:
    def __init__(self, user: str = "bastion") -> None:
        bindir = server_binaries()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL is missing: `make test` installs it (apt-get install postgresql)"
            )
        self.bindir = bindir
        self.user = user
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
        self.data = self.workdir / "data"
        self.url = f"postgres://{user}@127.0.0.1:{self.port}/postgres"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
            self._run_as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, check: bool = True) -> None:
        subprocess.run([*self._run_as, *argv], check=check, capture_output=True, timeout=120)

    def start(self) -> Postgres:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust")
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.workdir / "pg.log"),
            "-o", options, "-w", "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop",
                  check=False)  # fmt: skip
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def new_database(self) -> str:
        """The URL of a new, empty database in this cluster."""
        import asyncpg

        name = f"t_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            await conn.execute(f"CREATE DATABASE {name}")  # a generated identifier, not input
        finally:
            await conn.close()
        return f"{self.url.rsplit('/', 1)[0]}/{name}"

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
