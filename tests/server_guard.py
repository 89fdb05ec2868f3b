"""Run a server command so that it, and every process it starts, dies with the test process.

``python tests/server_guard.py PARENT_PID CMD...`` is what :func:`tests.servers.start_server`
starts, in a new session (its own process group) with ``PR_SET_PDEATHSIG = SIGTERM``: when the
test process dies, even by SIGKILL, the kernel sends this guard SIGTERM. The guard runs CMD in
its process group and, on SIGTERM (or SIGINT, SIGHUP), stops the whole group: SIGTERM, a few
seconds, then SIGKILL. That reaches grandchildren too (``mlflow server`` runs uvicorn as a child
process), which PDEATHSIG alone would not. Standard library only: it starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_S = 5.0


def stop_group(signum: int | None = None, _frame=None) -> None:
    """SIGTERM to every other process of the group, a few seconds, SIGKILL to what is left;
    called for a signal, the guard then exits."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signal_others(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and _others():
        time.sleep(0.1)
    _signal_others(signal.SIGKILL)
    if signum is not None:
        os._exit(128 + signum)


def _signal_others(sig: int) -> None:
    for pid in _others():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _others() -> list[int]:
    """The live processes of this group but the guard (its own exited children reaped)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    me, group, found = os.getpid(), os.getpgid(0), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != b"Z":
            found.append(int(entry))
    return found


def main(argv: list[str]) -> int:
    parent, cmd = int(argv[0]), argv[1:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop_group)
    if os.getppid() != parent:  # the test process died before PDEATHSIG was armed
        return 1
    child = subprocess.Popen(cmd)
    rc = child.wait()
    stop_group()  # the server exited on its own: what it left behind goes with it
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
