"""devstack's children die with their parent (PR_SET_PDEATHSIG), not with the thread that
started them: a parent killed with SIGKILL leaves no child; a short-lived starter thread
takes none with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from devstack.process import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_child_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    child = ManagedProcess("sleeper", ["sleep", "60"], log_path=tmp_path / "sleep.log")
    starter = threading.Thread(target=child.start)
    starter.start()
    starter.join()
    try:
        assert child.proc is not None
        time.sleep(0.3)  # a PDEATHSIG tied to the thread would have fired by now
        assert child.running
    finally:
        child.stop()
    assert not child.running


def test_killing_the_parent_outright_stops_its_children(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, threading, time
        from pathlib import Path
        from devstack.process import ManagedProcess
        a = ManagedProcess("a", ["sleep", "60"], log_path=Path({str(tmp_path)!r}) / "a.log")
        b = ManagedProcess("b", ["sleep", "60"], log_path=Path({str(tmp_path)!r}) / "b.log")
        a.start()
        t = threading.Thread(target=b.start); t.start(); t.join()
        print(a.proc.pid, b.proc.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert all(wait_gone(pid) for pid in pids)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
