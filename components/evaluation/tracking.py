"""The evaluation in MLflow: metrics, tags and the output files logged onto the TRAINING run of the
checkpoint (found from ``--run-id`` or the train output's ``run_id.txt``); the run keeps its
status. Tracking store: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""

from __future__ import annotations

import os
import time
from typing import Any

from components import provenance
from components.data import storage
from components.errors import InputError
from components.logs import get_logger
from components.training.layout import run_id_file_beside

log = get_logger("evaluate")
T_SELECT_SPLIT = "refseg.select_split"  # the split best.pt was selected on
T_GATE_SPLIT = "refseg.gate_split"  # the split(s) the gate_* metrics pool, "testA+testB"


def resolve_run_id(checkpoint: str, run_id: str | None) -> tuple[str | None, str]:
    """(run id, where it came from): an explicit run id, else ``<checkpoint dir>/../run_id.txt``
    when it exists, else (None, "none")."""
    if run_id:
        return run_id, "argument"
    uri = run_id_file_beside(str(checkpoint))
    try:
        if storage.exists(uri):
            text = storage.read_bytes(uri).decode("utf-8").strip()
            if text:
                return text, uri
    except storage.StorageError as exc:  # an unreadable run id: evaluate without MLflow logging
        log.warning("cannot read the run id at %s (%s); metrics are not logged to MLflow", uri, exc)
    return None, "none"


def artifact_path(splits: list[str]) -> str:
    """Where the files go on the run: ``evaluation/val`` for one split,
    ``evaluation/val_testA_testB`` for several."""
    return "evaluation/" + "_".join(splits)


def log_to_mlflow(run_id: str, doc: dict[str, Any], folder: str, files: tuple[str, ...]) -> None:
    """Metrics (per split and ``gate_...``, at the checkpoint's step), tags ``eval.{split}.*``,
    ``refseg.select_split`` and ``refseg.gate_split``, and ``files`` of ``folder`` (those that
    exist) under :func:`artifact_path`."""
    import mlflow
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = provenance.tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise InputError(f"MLflow run {run_id!r} does not exist in {uri} (pass the training "
                         "run's id, or --no-mlflow)") from exc
    ts = int(time.time() * 1000)
    step = int(doc.get("model", {}).get("step") or 0)
    metrics = [Metric(k, float(v), ts, step) for k, v in doc["metrics"].items()]
    tags = [RunTag(T_SELECT_SPLIT, str(doc["select_split"]))]
    if doc.get("gate_split"):
        tags.append(RunTag(T_GATE_SPLIT, str(doc["gate_split"])))
    for split, entry in doc["per_split"].items():
        if "crf_seconds_per_image" in entry:
            metrics.append(Metric(f"{split}_crf_seconds_per_image",
                                  float(entry["crf_seconds_per_image"]), ts, step))
        tags += [RunTag(f"eval.{split}.crf_mode", str(doc["crf"]["mode"])),
                 RunTag(f"eval.{split}.n_samples", str(entry["n_samples"])),
                 RunTag(f"eval.{split}.uses_language", str(entry["sanity"].get("uses_language")))]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    for name in files:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            client.log_artifact(run_id, path, artifact_path=artifact_path(doc["splits"]))
