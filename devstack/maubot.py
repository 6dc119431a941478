"""Bastion's maubot plugin, built into an ``.mbp`` and run in maubot's standalone mode.

    mbp = build_mbp(tmp_path)                      # `mbc build` of the repository
    bot = Maubot(tmp_path / "bot", mbp=mbp, user_id="@bastion:corp.test",
                 homeserver=hs.base_url, access_token=token,
                 plugin_config={"control_rooms": [...], ...})
    bot.start()        # extracts the .mbp, writes a fresh config.yaml, waits for start-up
    bot.webapp_url     # the plugin web app (audit export)
    bot.stop()

Standalone mode rewrites its config file on start, so every run gets its own copy; the
``plugin_config`` given is written as is (the plugin fills in its own defaults from its
``base-config.yaml``, which standalone mode does not merge). ``restart()`` keeps the
database (``maubot.db``: the audit trail, pending confirmations, the sync token).
Messages sent before the bot's first sync are ignored: invite the bot after ``start()``
and wait for it to join before sending commands.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import yaml

from .ports import free_port
from .process import ManagedProcess, StartupError

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "Startup completed, running forever"


def build_mbp(output_dir: Path, source: Path = ROOT) -> Path:
    """``mbc build`` of ``source`` into ``output_dir``; returns the ``.mbp`` path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = yaml.safe_load((source / "maubot.yaml").read_text())
    output = output_dir / f"{meta['id']}-v{meta['version']}.mbp"
    output.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "maubot.cli", "build", str(source), "-o", str(output)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not output.exists():
        raise RuntimeError(f"mbc build failed: {result.stdout}{result.stderr}")
    return output


class Maubot:
    """One standalone maubot process running the plugin from an ``.mbp``."""

    def __init__(
        self,
        workdir: Path,
        *,
        mbp: Path,
        user_id: str,
        homeserver: str,
        access_token: str,
        plugin_config: dict[str, Any],
        name: str = "maubot",
    ) -> None:
        self.workdir = Path(workdir)
        self.mbp = mbp
        self.user_id = user_id
        self.homeserver = homeserver
        self.access_token = access_token
        self.plugin_config = plugin_config
        self.port = free_port()
        self.webapp_url = f"http://127.0.0.1:{self.port}"
        self.plugin_dir = self.workdir / "plugin"
        self.config_path = self.workdir / "config.yaml"
        self.log_path = self.workdir / "maubot.log"
        self.process = ManagedProcess(
            name,
            [sys.executable, "-m", "maubot.standalone", "-c", str(self.config_path),
             "-m", "maubot.yaml"],
            log_path=self.workdir / "maubot.out",
            cwd=self.plugin_dir,
            # The parent-death signal can come more than once (devstack.process), and maubot
            # standalone, signalled again inside its own stop(), never closes its database:
            # aiosqlite's worker thread (not a daemon) then keeps it alive for good. Our own
            # stop() escalates to SIGKILL after 10 s; a dead parent cannot, so it kills.
            parent_death_signal=signal.SIGKILL,
        )  # fmt: skip

    def config(self) -> dict[str, Any]:
        return {
            "user": {
                "credentials": {
                    "id": self.user_id,
                    "homeserver": self.homeserver,
                    "access_token": self.access_token,
                    "device_id": None,
                },
                "sync": True,
                "appservice": False,
                "autojoin": True,
                "displayname": "disable",
                "avatar_url": "disable",
                "ignore_initial_sync": True,
                "ignore_first_sync": True,
            },
            "server": {
                "hostname": "127.0.0.1",
                "port": self.port,
                "base_path": "/",
                "public_url": self.webapp_url,
            },
            "database": f"sqlite:{self.workdir / 'maubot.db'}",
            "plugin_config": self.plugin_config,
            "logging": {
                "version": 1,
                "formatters": {
                    "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
                },
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "formatter": "plain",
                        "filename": str(self.log_path),
                    }
                },
                # maubot.client logs every request body at DEBUG, onboarding URLs included.
                "loggers": {
                    "maubot": {"level": "INFO"},
                    "maubot.instance": {"level": "DEBUG"},
                    "mau": {"level": "INFO"},
                    "aiohttp": {"level": "WARNING"},
                },
                "root": {"level": "INFO", "handlers": ["file"]},
            },
        }

    def extract(self) -> None:
        if self.plugin_dir.exists():
            shutil.rmtree(self.plugin_dir)
        self.plugin_dir.mkdir(parents=True)
        with zipfile.ZipFile(self.mbp) as archive:
            # mbc packs whatever __pycache__ the source tree had; Python rebuilds its own.
            names = [n for n in archive.namelist() if "__pycache__" not in n.split("/")]
            archive.extractall(self.plugin_dir, members=names)

    def start(self, timeout: float = 30.0) -> Maubot:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extract()
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.log_path.unlink(missing_ok=True)
        proc = self.process.start()
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log():
            if proc.poll() is not None:
                raise StartupError(
                    f"maubot exited with code {proc.returncode} during start-up\n"
                    f"{self.process.log_tail()}\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise StartupError(f"maubot did not start in {timeout:.0f} s\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.process.stop()

    def restart(self, timeout: float = 30.0) -> Maubot:
        """Stop and start again on the same database (a fresh config file, as on start)."""
        self.stop()
        return self.start(timeout)

    def saved_plugin_config(self) -> dict[str, Any]:
        """The plugin config as maubot saved it back after loading (defaults filled in)."""
        saved = yaml.safe_load(self.config_path.read_text())
        return dict(saved["plugin_config"])

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Maubot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
