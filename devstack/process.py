"""Subprocess helpers: start a server, wait until it answers, stop it cleanly.

Every child is started with ``PR_SET_PDEATHSIG`` (Linux): when the process that started
it dies, however it dies (``kill -9`` included), the kernel sends the child SIGTERM (or
the launcher's ``parent_death_signal``: maubot gets SIGKILL), so no Synapse, dmz_api or
maubot outlives the test, benchmark or demo that owns it. The kernel ties that signal to
the *thread* that forked, so every start goes through one long-lived spawner thread: a
test that starts servers from short-lived threads keeps its children. When a process with
several threads dies, the kernel hands each child to another of its threads in turn and
sends the signal again each time (measured with strace: two or three SIGTERMs from the
dead demo's PID), so a child must not mind a second one (dmz_api waits for its clean-up).
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


class StartupError(RuntimeError):
    pass


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """One JSON request with the standard library (usable outside an event loop)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, raw.decode(errors="replace")


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"{what} exited with code {proc.returncode} during start-up")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise StartupError(f"{what} did not become ready in {timeout:.0f} s")


def port_listening(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection((host, port), timeout=1):
            return True

    return check


def url_answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 500)

    return check


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Looked up before any fork: the child between fork and exec may only call, not load.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent(
    parent_pid: int, signum: signal.Signals = signal.SIGTERM
) -> Callable[[], None] | None:
    """A ``preexec_fn``: ``signum`` to this child when its parent dies (Linux; elsewhere none)."""
    prctl = _prctl
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal would ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class _Spawner:
    """One daemon thread that forks every child, so PDEATHSIG means "the process died"."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        while True:
            job, answer = self._jobs.get()
            try:
                answer.put((True, job()))
            except BaseException as e:  # handed to the caller, raised there
                answer.put((False, e))

    def popen(
        self, *args: Any, parent_death_signal: signal.Signals = signal.SIGTERM, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="spawner", daemon=True)
                self._thread.start()
        answer: queue.Queue[Any] = queue.Queue(maxsize=1)
        kwargs["preexec_fn"] = _die_with_parent(os.getpid(), parent_death_signal)
        self._jobs.put((lambda: subprocess.Popen(*args, **kwargs), answer))
        ok, result = answer.get()
        if not ok:
            raise result
        return result  # type: ignore[no-any-return]


_spawner = _Spawner()


def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` whose child gets SIGTERM when this process dies."""
    return _spawner.popen(*args, **kwargs)


class ManagedProcess:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        parent_death_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.parent_death_signal = parent_death_signal
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            parent_death_signal=self.parent_death_signal,
        )
        log.close()
        return self.proc

    def start_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Start, then wait for ``ready``; on failure stop and raise with the log's tail."""
        proc = self.start()
        try:
            wait_until(ready, timeout, self.name, proc)
        except StartupError as e:
            self.stop()
            raise StartupError(f"{e}\n{self.log_tail()}") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_side_by_side(*starters: Callable[[], object]) -> None:
    """Run the blocking ``start`` callables at once (each waits for its server to answer).

    Two Synapses and a gateway start in the time of the slowest rather than of all three;
    the first error is raised once every start has returned.
    """
    errors: list[BaseException] = []

    def run(start: Callable[[], object]) -> None:
        try:
            start()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(start,)) for start in starters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
