"""MLflow tracking of a training run, on rank 0 only: params once, metrics buffered and sent in
batches (every ``log_every`` steps), tags, artifacts. The experiment is
:data:`components.provenance.EXPERIMENT`; the tracking URI is ``--tracking-uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

A tracking server that goes away (restarted, redeployed, its database failing over) does not lose
metrics. MLflow's client retries each request first (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, about
4 minutes of backoff by default); when it gives up, the batch is appended to the run's unsent
file (``OUT/mlflow_unsent.jsonl``), one warning line says so, training goes on, and each later
flush (no more often than a backoff of 5 s doubling to 60 s) sends the file first. At the end
of the run the tracker keeps trying for ``$REFSEG_TRACKING_RETRY_S`` seconds (60); then the run
stops with one error line (:class:`TrackingError`) and the unsent file stays: running the same
command again resumes the run (its checkpoints and ``resume.pt`` are on disk) and sends it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components import logs, provenance
from components.errors import RefsegError
from components.provenance import EXPERIMENT

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names
UNSENT_FILE = "mlflow_unsent.jsonl"  # in the training OUT folder
RETRY_ENV = "REFSEG_TRACKING_RETRY_S"
RETRY_S = 60.0  # how long the end of a run keeps trying an unreachable server
BACKOFF_S = (5.0, 60.0)  # first and longest pause between flush attempts during an outage
# error codes of a server that is there but failing (a 5xx after the client's retries)
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


class TrackingError(RefsegError):
    """The tracking server stayed unreachable: one line and exit 1; the same command resumes."""


def flatten(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    """``{"lr": 0.1}`` -> ``{"train.lr": "0.1"}`` (lists and dicts as JSON): MLflow params."""
    return {f"{prefix}.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in d.items()}


def unreachable(exc: BaseException) -> bool:
    """True for a failure of the connection or the server (worth retrying later), False for a
    request the server refused (a bug: retrying would not help)."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    if isinstance(exc, (RequestException, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        return (str(exc).startswith("API request to")
                or str(exc.error_code) in _TRANSIENT_CODES)
    return False


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


class Tracker:
    """MLflow on rank 0 (``enabled``); every call is a no-op elsewhere. ``unsent`` is the file
    that keeps metric values the server could not take (None: they stay in memory)."""

    def __init__(self, enabled: bool, tracking_uri: str | None, unsent: str | Path | None = None,
                 retry_s: float | None = None):
        self.enabled = enabled
        self.run_id: str | None = None
        self.uri = provenance.tracking_uri(tracking_uri)
        self._buf: list = []
        self.client = None
        self.unsent = Path(unsent) if unsent is not None else None
        self.retry_s = float(os.environ.get(RETRY_ENV, RETRY_S)) if retry_s is None else retry_s
        self._kept: list = []  # unsent values when there is no file
        self._down_since: float | None = None  # monotonic time of the first failure
        self._next_try = 0.0
        self._pause = BACKOFF_S[0]
        self.log = logs.get_logger("train", "mlflow")

    def start(self, run_id: str | None, run_name: str) -> str | None:
        """Continue ``run_id`` (status back to RUNNING) or create a run in the experiment."""
        if not self.enabled:
            return None
        try:
            return self._start(run_id, run_name)
        except Exception as exc:
            if not unreachable(exc):
                raise
            raise TrackingError(f"MLflow tracking server {self.uri} unreachable "
                                f"({_short(exc)}); start it (or pass --tracking-uri) and run "
                                "the same command again") from exc

    def _start(self, run_id: str | None, run_name: str) -> str:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(EXPERIMENT)
            except mlflow.exceptions.MlflowException:  # created by a concurrent process
                exp_id = self.client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            exp_id = exp.experiment_id
        run = self.client.create_run(exp_id, run_name=run_name)
        self.run_id = run.info.run_id
        return self.run_id

    def params(self, params: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self._patiently(lambda b=items[i:i + 100]: self.client.log_batch(self.run_id,
                                                                             params=b),
                            "the run's parameters")

    def tags(self, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._patiently(lambda: self.client.log_batch(self.run_id, tags=batch), "tags")

    def metrics(self, values: dict[str, float], step: int) -> None:
        """Buffer metric values at ``step`` (sent by :meth:`flush`)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buf += [Metric(k, float(v), ts, int(step)) for k, v in values.items()]

    # ---- sending metrics -----------------------------------------------------------------------
    def flush(self) -> None:
        """Send the values kept from an outage, then the buffer. When the server cannot be
        reached they are kept (see the module's docstring) and training goes on."""
        if not self.enabled or not (self._buf or self._has_unsent()):
            return
        if self._down_since is not None and time.monotonic() < self._next_try:
            self._keep()
            return
        try:
            self._send_all()
        except Exception as exc:
            if not unreachable(exc):
                raise
            self._keep()
            self._note_outage(exc)

    def _send_all(self) -> None:
        """The kept values, then the buffer; the outage (if any) is over when both are sent."""
        kept = self._read_unsent()
        if kept:
            self._send(kept)
            self._drop_unsent()
        self._send(self._buf)
        self._buf = []
        if self._down_since is not None:
            self.log.warning(f"MLflow tracking server {self.uri} reachable again after "
                             f"{time.monotonic() - self._down_since:.0f} s: sent the "
                             f"{len(kept)} metric values kept meanwhile")
            self._down_since, self._pause = None, BACKOFF_S[0]

    def _send(self, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def _note_outage(self, exc: BaseException) -> None:
        """One warning per outage; the next attempt after a doubling pause."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            where = self.unsent or "memory"
            self.log.warning(f"MLflow tracking server {self.uri} unreachable ({_short(exc)}); "
                             f"metrics are kept in {where} and sent when it is back; training "
                             "goes on")
        self._next_try = time.monotonic() + self._pause
        self._pause = min(self._pause * 2, BACKOFF_S[1])

    def _keep(self) -> None:
        """Move the buffer to the unsent file (or the in-memory list)."""
        if not self._buf:
            return
        if self.unsent is None:
            self._kept += self._buf
        else:
            self.unsent.parent.mkdir(parents=True, exist_ok=True)
            with open(self.unsent, "a", encoding="utf-8") as fh:
                for m in self._buf:
                    fh.write(json.dumps([m.key, m.value, m.timestamp, m.step]) + "\n")
        self._buf = []

    def _has_unsent(self) -> bool:
        return bool(self._kept) or (self.unsent is not None and self.unsent.exists())

    def _read_unsent(self) -> list:
        from mlflow.entities import Metric

        out = list(self._kept)
        if self.unsent is not None and self.unsent.exists():
            for line in self.unsent.read_text(encoding="utf-8").splitlines():
                if line.strip():  # a line cut by a crash mid-write is skipped
                    try:
                        k, v, ts, step = json.loads(line)
                    except ValueError:
                        continue
                    out.append(Metric(k, float(v), int(ts), int(step)))
        return out

    def _drop_unsent(self) -> None:
        self._kept = []
        if self.unsent is not None:
            self.unsent.unlink(missing_ok=True)

    # ---- calls that must succeed ---------------------------------------------------------------
    def _patiently(self, call: Callable[[], Any], what: str, patience: float | None = None
                   ) -> Any:
        """``call()``, retried with backoff for ``patience`` seconds (``retry_s``) while the
        server is unreachable; then the metrics are kept and a :class:`TrackingError` raised."""
        deadline = time.monotonic() + (self.retry_s if patience is None else patience)
        pause = 1.0
        while True:
            try:
                return call()
            except Exception as exc:
                if not unreachable(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    self._keep()
                    raise TrackingError(self._gave_up(what, exc)) from exc
                self.log.warning(f"MLflow tracking server {self.uri} unreachable while sending "
                                 f"{what} ({_short(exc)}); retrying in {pause:.0f} s")
                time.sleep(pause)
                pause = min(pause * 2, 15.0)

    def _gave_up(self, what: str, exc: BaseException) -> str:
        kept = f"; unsent metric values are kept in {self.unsent}" if self._has_unsent() else ""
        return (f"MLflow tracking server {self.uri} unreachable ({_short(exc)}): {what} of run "
                f"{self.run_id} not sent after {self.retry_s:.0f} s{kept}; the checkpoints and "
                "resume state are saved: start the server and run the same command again to "
                "resume the run and send them")

    def artifact(self, path: str, artifact_path: str) -> None:
        if not self.enabled:
            return
        if os.path.isdir(path):
            self._patiently(lambda: self.client.log_artifacts(self.run_id, path, artifact_path),
                            f"artifacts {artifact_path}/")
        else:
            self._patiently(lambda: self.client.log_artifact(self.run_id, path, artifact_path),
                            f"artifact {artifact_path}/{os.path.basename(path)}")

    def end(self, status: str) -> None:
        """Send every metric value and close the run with ``status``. A FINISHED run waits up to
        ``retry_s`` for an unreachable server; a failed or interrupted one tries once (its own
        error matters more)."""
        if not self.enabled or self.run_id is None:
            return
        patience = None if status == "FINISHED" else 0.0

        def close():
            self._send_all()
            self.client.set_terminated(self.run_id, status=status)

        self._patiently(close, "the last metrics and the run's status", patience)
