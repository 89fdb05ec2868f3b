"""MLflow Model Registry operations: the versions of a registered model and their tags, the
``champion`` alias and the compare-and-set loop that moves it, and the creation of a version
from a training run (the pyfunc logged into that run).

Concurrency (several client processes, one tracking server): version numbers and their tags are
created atomically by the server, so each registrant runs :func:`converge`: read all versions and
the alias, compute the target with :func:`~components.registry.promotion.decide`, set the alias if
it differs, and repeat until a read shows the alias already on target. Whichever process writes
last re-reads afterwards, and the process whose final read is last sees every version, so the
alias ends on the fold over all versions: exactly one champion, the better one, whatever the
interleaving.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

from components.errors import MissingInputError
from components.registry.promotion import (
    CHAMPION,
    T_GATE_VALUE,
    T_RUN,
    T_RUN_REASON,
    T_RUN_STATUS,
    T_RUN_VERSION,
    VersionInfo,
    decide,
    decision_tags,
)
from components.training.layout import ARTIFACT_CHECKPOINT, ARTIFACT_TOKENIZER


def open_client(tracking_uri: str | None):
    """A client whose tracking and registry URIs are both ``tracking_uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def versions(client, name: str) -> list[tuple[int, dict[str, str]]]:
    """Every version of ``name`` with its tags (all pages)."""
    out = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000,
                                            page_token=token)
        out.extend((int(mv.version), dict(mv.tags or {})) for mv in page)
        token = page.token
        if not token:
            return out


def current_champion(client, name: str) -> int | None:
    aliases = client.get_registered_model(name).aliases or {}
    v = aliases.get(CHAMPION)
    return int(v) if v is not None else None


def champion_or_none(client, name: str) -> int | None:
    """The champion, or None when the registered model does not exist (yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return current_champion(client, name)
    except MlflowException:
        return None


def converge(client, name: str, max_rounds: int = 40, pause_s: float = 0.05
             ) -> tuple[int | None, dict[int, tuple[str, str]]]:
    """Compare-and-set loop: move the alias until a read shows it on the fold's target. Two
    writers setting the alias at the same instant can make the store refuse one of them (a SQL
    store's unique key on the alias row): that writer re-reads and tries again."""
    from mlflow.exceptions import MlflowException

    rng = random.Random(os.getpid() ^ time.time_ns())
    last_error: MlflowException | None = None
    for _ in range(max_rounds):
        raw = versions(client, name)
        ours = {v: info for v, tags in raw if (info := VersionInfo.from_tags(v, tags))}
        target, decisions = decide(list(ours.values()))
        current = current_champion(client, name)
        if target is None:
            tool_made = {v for v, tags in raw if T_GATE_VALUE in tags}
            if current is not None and current in tool_made:
                # The alias sits on one of our versions that no longer qualifies (excluded).
                client.delete_registered_model_alias(name, CHAMPION)
                continue
            return current, decisions  # none, or a champion set by hand: left alone
        if current == target:
            return target, decisions
        try:
            client.set_registered_model_alias(name, CHAMPION, str(target))
        except MlflowException as exc:  # a concurrent write of the same alias row
            last_error = exc
        time.sleep(pause_s * (1 + rng.random()))  # let a concurrent writer land, then re-read
    detail = f" (last store error: {last_error})" if last_error is not None else ""
    raise RuntimeError(f"{name}: champion alias did not settle after {max_rounds} rounds{detail}")


# ------------------------------------------------------------------------------------------------
def ensure_registered_model(client, name: str, lang: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, tags={"lang": lang},
            description=f"Bilingual referring image segmentation, {lang} expressions. "
                        "pyfunc: image + text -> mask. Alias 'champion' = promoted version.")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise


def existing_version(client, name: str, run_id: str) -> int | None:
    """The version already created from ``run_id`` (a rerun of the step reuses it)."""
    for v, tags in versions(client, name):
        if tags.get(T_RUN) == run_id:
            return v
    return None


def get_run(client, run_id: str, tracking_uri: str):
    """The run ``run_id``; an id the tracking store does not know is a MissingInputError."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise MissingInputError(f"run {run_id!r}: no such run in {tracking_uri} (pass the "
                                "training run's id, and --tracking-uri or $MLFLOW_TRACKING_URI "
                                "of its store)") from None


def download_run_model(run_id: str, dst: str, tracking_uri: str) -> tuple[str, str]:
    """The run's ``checkpoints/best.pt`` and ``tokenizer/`` folder, downloaded under ``dst``; a
    run without them is a MissingInputError."""
    return (_download(run_id, ARTIFACT_CHECKPOINT, dst, tracking_uri),
            _download(run_id, ARTIFACT_TOKENIZER, dst, tracking_uri))


def _download(run_id: str, artifact: str, dst: str, tracking_uri: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                   dst_path=dst, tracking_uri=tracking_uri)
    except (MlflowException, OSError) as exc:
        folder, _, name = artifact.rpartition("/")
        listed = mlflow.MlflowClient(tracking_uri).list_artifacts(run_id, folder or None)
        if name in {f.path.rpartition("/")[2] for f in listed}:
            raise  # it is there: the download itself failed
        raise MissingInputError(f"run {run_id} has no artifact {artifact!r} (register takes a "
                                "run of `refseg train`, which logs checkpoints/best.pt and "
                                "tokenizer/)") from exc


def log_into_run(client, run, tracking_uri: str, log_model: Callable[[], Any]) -> Any:
    """Re-open the training run only to call ``log_model()`` in it (and restore the tracking URI).
    The run keeps its status and end time (start_run/end_run would mark it FINISHED)."""
    import mlflow

    run_id = run.info.run_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    status, end_time = run.info.status, run.info.end_time
    try:
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            return log_model()
    finally:
        mlflow.set_tracking_uri(previous)
        if status == "RUNNING" or end_time is None:
            client.update_run(run_id, status=status)
        else:
            client.set_terminated(run_id, status=status, end_time=end_time)


def create_version(client, name: str, info, run_id: str, tags: dict[str, str],
                   description: str) -> int:
    """A new version of ``name`` for the logged model ``info``, created with its tags."""
    mv = client.create_model_version(name, source=info.model_uri, run_id=run_id, tags=tags,
                                     model_id=info.model_id, description=description)
    return int(mv.version)


def version_source(client, name: str, version: int) -> str:
    return client.get_model_version(name, str(version)).source


def record_refusal(client, run_id: str, reason: str) -> None:
    client.set_tag(run_id, T_RUN_STATUS, "refused")
    client.set_tag(run_id, T_RUN_REASON, reason)


def record_decision(client, name: str, version: int, run_id: str, status: str,
                    reason: str) -> None:
    """The decision on the version's tags and the run's (``refseg.registry.*``)."""
    for k, v in decision_tags(status, reason).items():
        client.set_model_version_tag(name, str(version), k, v)
    client.set_tag(run_id, T_RUN_STATUS, status)
    client.set_tag(run_id, T_RUN_VERSION, f"{name}/{version}")
