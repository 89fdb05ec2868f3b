"""Servers that tests start (``mlflow server``, ``mlflow models serve``) die with the test process,
however it ends: a normal teardown, an exception, SIGTERM (a CI timeout) or SIGKILL.

:func:`start_server` runs the command under ``tests/server_guard.py`` in its own session and
process group, with ``PR_SET_PDEATHSIG`` (Linux) armed before the guard starts: the kernel tells
the guard when the test process dies, and the guard stops the whole group, grandchildren
included. While a server runs, a SIGTERM handler in the test process also stops every server
before the process dies (this covers systems without PDEATHSIG)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

GUARD = Path(__file__).with_name("server_guard.py")
PR_SET_PDEATHSIG = 1

_RUNNING: dict[int, subprocess.Popen] = {}
_previous_handler = None
_watching = False
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the thread that started it ends."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_server(cmd: list[str], log: Path, env: dict | None = None, cwd=None) -> subprocess.Popen:
    """Start ``cmd`` (output to ``log``) so that it dies with this process; stop it with
    :func:`stop_server`. Call it from the main thread (PDEATHSIG follows the starting thread)."""
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(GUARD), str(os.getpid()), *map(str, cmd)],
                                env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_die_with_parent if _LIBC is not None else None)
    _RUNNING[proc.pid] = proc
    _watch_sigterm()
    return proc


def stop_server(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a server started by :func:`start_server`, with every process it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:  # stragglers of the group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(5)
    _RUNNING.pop(proc.pid, None)
    if not _RUNNING:
        _unwatch_sigterm()


def _watch_sigterm() -> None:
    global _previous_handler, _watching
    if _watching:
        return
    try:
        _previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        _watching = True
    except ValueError:  # not the main thread: PDEATHSIG still covers Linux
        pass


def _unwatch_sigterm() -> None:
    global _watching
    if _watching:
        try:
            signal.signal(signal.SIGTERM, _restorable(_previous_handler))
            _watching = False
        except ValueError:
            pass


def _restorable(handler):
    return handler if handler is not None else signal.SIG_DFL


def _on_sigterm(signum, frame) -> None:
    """Stop every server, then let SIGTERM do what it did before."""
    previous = _restorable(_previous_handler)
    for proc in list(_RUNNING.values()):
        stop_server(proc, timeout=5)
    signal.signal(signal.SIGTERM, previous)
    if callable(previous):
        previous(signum, frame)
    else:
        os.kill(os.getpid(), signal.SIGTERM)


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Until ``url`` answers 200; the log's tail in the error when ``proc`` exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")
