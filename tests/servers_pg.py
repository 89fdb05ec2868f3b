"""Throwaway servers for the tests that run the registry on its production stack: a PostgreSQL
cluster (``initdb`` into a temporary folder, a free port, its unix socket in that folder) and an
``mlflow server`` backed by it with artifacts on an S3 endpoint.

Every process started here dies with the test process: it runs in its own process group, which a
pytest finalizer and an ``atexit`` handler kill; the process itself gets SIGKILL from the kernel
when its parent dies (``PR_SET_PDEATHSIG``); and a small watchdog kills the whole group (the
uvicorn workers ``mlflow server`` spawns included) when the test process disappears without
running either (SIGKILL).
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import wait_http

PR_SET_PDEATHSIG = 1
_GROUPS: set[int] = set()  # process groups to kill at exit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _GROUPS.discard(pgid)


def _kill_all_groups() -> None:
    for pgid in list(_GROUPS):
        kill_group(pgid)


atexit.register(_kill_all_groups)

# exits quietly once the group is gone (its id may be reused later), kills it once the parent is
_WATCHDOG = ("while kill -0 {parent} 2>/dev/null; do kill -0 -{pgid} 2>/dev/null || exit 0; "
             "sleep 1; done; kill -KILL -{pgid} 2>/dev/null")


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: str | None = None,
          user: str | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a new process group (as ``user`` when given), its output in ``log``,
    killed with the test process whatever way that ends."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True, user=user, preexec_fn=_die_with_parent)
    _GROUPS.add(proc.pid)
    subprocess.Popen(["sh", "-c", _WATCHDOG.format(parent=os.getpid(), pgid=proc.pid)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 15) -> None:
    """Signal ``proc``'s group, wait for ``proc``, then SIGKILL what is left of the group."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    kill_group(proc.pid)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
def postgres_bindir() -> str | None:
    """The folder of ``initdb`` and ``postgres``: Debian's newest /usr/lib/postgresql/N/bin, else
    the one on PATH; None when the server is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return str(Path(found[-1]).parent)
    on_path = shutil.which("initdb")
    return str(Path(on_path).parent) if on_path else None


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: as root the cluster belongs to ``postgres``."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


@dataclass
class Postgres:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:``port``."""

    bindir: str
    root: Path
    port: int
    user: str | None
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def start(self, timeout: float = 60) -> None:
        """initdb (no fsync: a throwaway), start the server, create database ``mlflow``."""
        data = self.root / "data"
        initdb = [f"{self.bindir}/initdb", "-D", str(data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions"]
        res = subprocess.run(initdb, user=self.user, capture_output=True, text=True,
                             timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed ({res.returncode}): {res.stderr[-2000:]}")
        self.proc = spawn([f"{self.bindir}/postgres", "-D", str(data), "-p", str(self.port),
                           "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                           "-c", "fsync=off", "-c", "synchronous_commit=off",
                           "-c", "full_page_writes=off", "-c", "max_connections=60"],
                          self.log, user=self.user)
        self._create_database(timeout)

    def _create_database(self, timeout: float) -> None:
        import psycopg

        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n"
                                   f"{_tail(self.log)}")
            try:
                conn = psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                       dbname="postgres", connect_timeout=2, autocommit=True)
                break
            except psycopg.OperationalError as exc:
                if time.time() > deadline:
                    raise TimeoutError(f"postgres not up after {timeout}s:\n"
                                       f"{_tail(self.log)}") from exc
                time.sleep(0.1)
        with conn:
            conn.execute("CREATE DATABASE mlflow")

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT), then the group's stragglers; the folder is removed."""
        if self.proc is not None:
            stop(self.proc, signal.SIGQUIT, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    """A running throwaway cluster; raises FileNotFoundError when PostgreSQL is not installed."""
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres) not found in "
                                "/usr/lib/postgresql/*/bin or on PATH")
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="refseg-pg-"))
    if user is not None:
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    pg = Postgres(bindir, root, free_port(), user)
    atexit.register(shutil.rmtree, root, True)
    try:
        pg.start()
    except BaseException:
        pg.stop()
        raise
    return pg


# ------------------------------------------------------------------------------------------------
@dataclass
class MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port`` (one uvicorn worker), restartable on that port."""

    backend_uri: str
    artifacts: str  # s3://bucket/prefix
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        self.spawn()
        self.wait_up(timeout)

    def spawn(self) -> None:
        """Start the server without waiting for it (:meth:`wait_up` waits)."""
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server",
               "--backend-store-uri", self.backend_uri, "--artifacts-destination", self.artifacts,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        # no background job runner (huey workers): nothing here uses server-side jobs
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = spawn(cmd, self.root / "mlflow-server.log", env=env, cwd=str(self.root))

    def wait_up(self, timeout: float) -> None:
        wait_http(f"{self.uri}/health", self.proc, timeout, self.root / "mlflow-server.log")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)
            self.proc = None
