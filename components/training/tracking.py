"""MLflow tracking of a training run, on rank 0 only: params once, metrics buffered and sent in
batches (every ``log_every`` steps), tags, artifacts. The experiment is
:data:`components.provenance.EXPERIMENT`; the tracking URI is ``--tracking-uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from components import provenance
from components.provenance import EXPERIMENT

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names


def flatten(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    """``{"lr": 0.1}`` -> ``{"train.lr": "0.1"}`` (lists and dicts as JSON): MLflow params."""
    return {f"{prefix}.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in d.items()}


class Tracker:
    """MLflow on rank 0 (``enabled``); every call is a no-op elsewhere."""

    def __init__(self, enabled: bool, tracking_uri: str | None):
        self.enabled = enabled
        self.run_id: str | None = None
        self.uri = provenance.tracking_uri(tracking_uri)
        self._buf: list = []
        self.client = None

    def start(self, run_id: str | None, run_name: str) -> str | None:
        """Continue ``run_id`` (status back to RUNNING) or create a run in the experiment."""
        if not self.enabled:
            return None
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
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def tags(self, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def metrics(self, values: dict[str, float], step: int) -> None:
        """Buffer metric values at ``step`` (sent by :meth:`flush`)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buf += [Metric(k, float(v), ts, int(step)) for k, v in values.items()]

    def flush(self) -> None:
        if not self.enabled or not self._buf:
            return
        for i in range(0, len(self._buf), 1000):
            self.client.log_batch(self.run_id, metrics=self._buf[i:i + 1000])
        self._buf = []

    def artifact(self, path: str, artifact_path: str) -> None:
        if not self.enabled:
            return
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    def end(self, status: str) -> None:
        if not self.enabled or self.run_id is None:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
