"""The demo leaves nothing behind: closing its terminal, or killing it outright, stops the
two Synapses, both dmz_api processes and maubot (by the PIDs and ports it recorded).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.process import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "devstack.demo", "--no-scenario"]


def alive(pid: int) -> bool:
    """Running and not a zombie (a reparented child may wait for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    still: Callable[[], object] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            detail = f" ({still()})" if still is not None else ""
            raise AssertionError(f"{what}: still not so after {timeout:.0f} s{detail}")
        time.sleep(0.2)


def wait_up(workdir: Path, demo_alive: Callable[[], bool]) -> dict[str, Any]:
    """The demo's stack.json once it is up, with every process alive and listening."""
    stack_file = workdir / "stack.json"
    wait_for(lambda: stack_file.exists() or not demo_alive(), 240, "the demo came up")
    assert stack_file.exists(), "the demo exited before it was up"
    stack: dict[str, Any] = json.loads(stack_file.read_text())
    processes = stack["processes"]
    assert set(processes) == {"internal", "dmz", "gateway", "registrar", "maubot"}
    for name, entry in processes.items():
        assert alive(entry["pid"]), name
        for port in entry["ports"]:
            assert listening(port), (name, port)
    return stack


def kill_leftovers(workdir: Path) -> None:
    """After a failure: end what the demo recorded and left running, so no test leaks it."""
    try:
        stack = json.loads((workdir / "stack.json").read_text())
    except (OSError, ValueError):
        return
    for entry in stack["processes"].values():
        if alive(entry["pid"]):
            os.killpg(entry["pid"], signal.SIGKILL)  # each child leads its own session


def assert_all_gone(stack: dict[str, Any]) -> None:
    processes = stack["processes"]
    ports = [port for entry in processes.values() for port in entry["ports"]]
    wait_for(
        lambda: not [name for name, entry in processes.items() if alive(entry["pid"])],
        60,
        "every stack process exited",
        still=lambda: [name for name, entry in processes.items() if alive(entry["pid"])],
    )
    wait_for(lambda: not any(listening(port) for port in ports), 10, "every port closed")


@pytest.mark.slow
def test_closing_the_demo_terminal_stops_every_process(tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is missing: `make system-deps` installs it"
    socket_name = f"bastion-demo-{os.getpid()}"
    workdir = tmp_path / "demo"
    command = " ".join(["exec", *DEMO, "--workdir", str(workdir)])
    subprocess.run(
        [tmux, "-L", socket_name, "new-session", "-d", "-s", "demo", "-x", "200", "-y", "50",
         "-c", str(ROOT), command],
        check=True, timeout=30,
    )  # fmt: skip
    try:
        pane = subprocess.run(
            [tmux, "-L", socket_name, "list-panes", "-t", "demo", "-F", "#{pane_pid}"],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        demo_pid = int(pane.stdout.split()[0])
        stack = wait_up(workdir, lambda: alive(demo_pid))
        assert stack["demo_pid"] == demo_pid
        # The terminal closes: tmux hangs up on the demo (SIGHUP).
        subprocess.run([tmux, "-L", socket_name, "kill-session", "-t", "demo"], timeout=30)
        wait_for(lambda: not alive(demo_pid), 60, "the demo exited")
        assert_all_gone(stack)
        # It stopped its stack itself, not through its children's parent-death signal.
        assert (workdir / "stopped.txt").read_text().strip() == "stopped cleanly on SIGHUP"
    finally:
        subprocess.run([tmux, "-L", socket_name, "kill-server"], capture_output=True, timeout=30)
        kill_leftovers(workdir)


@pytest.mark.slow
def test_killing_the_demo_outright_leaves_no_child(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    demo = ManagedProcess(
        "demo", [*DEMO, "--workdir", str(workdir)], log_path=tmp_path / "demo.out", cwd=ROOT
    )
    proc = demo.start()
    try:
        stack = wait_up(workdir, lambda: proc.poll() is None)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert_all_gone(stack)
        assert not (workdir / "stopped.txt").exists()  # it had no chance to stop anything
    finally:
        demo.stop()
        kill_leftovers(workdir)
