"""Register a training run's model in the MLflow Model Registry and promote the ``champion``.

``register(run_id)`` downloads the run's ``checkpoints/best.pt`` and ``tokenizer/``, logs the pyfunc
(``components.pyfunc_model``) into that run, creates a version of ``bilingual-refseg-<lang>``
carrying its metrics and provenance as tags, then moves the ``champion`` alias.

Promotion rules (all versions created by this module carry their gate value, margin and floor as
tags, written in the same transaction that creates the version):
- gate metric missing -> ValueError (run ``refseg evaluate`` first). ``*_crf`` falls back to the
  plain metric when the run has no CRF metric (CRF was off).
- gate metric NaN/inf -> REFUSED: nothing is registered (a model that cannot be measured does not
  enter the registry); the run gets tags ``refseg.registry.status=refused`` and
  ``refseg.registry.reason``; the result says ``status: refused``.
- any other metric NaN -> registered, never champion: ``challenger`` with the reason.
- no champion yet: the version becomes champion when its gate value >= ``floor``.
- else: champion moves when gate > champion's value of the same metric + ``margin``.
- a version tagged ``refseg.excluded`` (set by an operator, e.g. to roll back) is skipped.

Concurrency (several client processes, one tracking server): the champion is defined as a pure
function of the registry's versions: a fold over eligible versions in version order applying the
rules above (what sequential registrations would give). Version numbers and their tags are
created atomically by the server, so each registrant runs a compare-and-set loop: read all versions
and the alias, compute the target, set the alias if it differs, and repeat until a read shows the
alias already on target. Whichever process writes last re-reads afterwards, and the process whose
final read is last sees every version, so the alias ends on the fold over all versions: exactly
one champion, the better one, whatever the interleaving.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

CHAMPION = "champion"
MODEL_PREFIX = "bilingual-refseg"
TAG_PREFIX = "refseg."
T_RUN = "refseg.run_id"
T_GATE_METRIC = "refseg.gate_metric"
T_GATE_VALUE = "refseg.gate_value"
T_MARGIN = "refseg.margin"
T_FLOOR = "refseg.floor"
T_ELIGIBLE = "refseg.eligible"
T_INELIGIBLE = "refseg.ineligible_reason"
T_EXCLUDED = "refseg.excluded"
T_STATUS = "refseg.status"  # promoted | challenger (decision when the version arrived)
T_CHALLENGER = "challenger"
T_REASON = "reason"
METRIC_TAG = "metric."


@dataclass
class VersionInfo:
    version: int
    gate_metric: str
    gate_value: float
    margin: float
    floor: float
    eligible: bool
    ineligible_reason: str
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_tags(cls, version: int | str, tags: dict[str, str]) -> VersionInfo | None:
        """None for versions not created by this module (or excluded by an operator)."""
        if T_GATE_VALUE not in tags or T_GATE_METRIC not in tags:
            return None
        if tags.get(T_EXCLUDED, "").lower() in ("1", "true", "yes"):
            return None
        metrics = {k[len(METRIC_TAG):]: _float(v) for k, v in tags.items()
                   if k.startswith(METRIC_TAG)}
        return cls(version=int(version), gate_metric=tags[T_GATE_METRIC],
                   gate_value=_float(tags[T_GATE_VALUE]), margin=_float(tags.get(T_MARGIN, "0")),
                   floor=_float(tags.get(T_FLOOR, "0")),
                   eligible=tags.get(T_ELIGIBLE, "false") == "true",
                   ineligible_reason=tags.get(T_INELIGIBLE, ""), metrics=metrics)

    def value_of(self, metric: str) -> tuple[float, str]:
        """This version's value for ``metric`` (falling back to its own gate metric)."""
        if metric in self.metrics:
            return self.metrics[metric], metric
        return self.gate_value, self.gate_metric


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def decide(versions: list[VersionInfo]) -> tuple[int | None, dict[int, tuple[str, str]]]:
    """Fold over versions in version order. Returns (champion version or None,
    {version: (status, reason)}) with status ``promoted`` or ``challenger``. A version's decision
    depends only on itself and the versions before it, so it never changes afterwards."""
    champ: VersionInfo | None = None
    decisions: dict[int, tuple[str, str]] = {}
    for v in sorted(versions, key=lambda v: v.version):
        if not v.eligible:
            decisions[v.version] = ("challenger", v.ineligible_reason or "not eligible")
            continue
        if champ is None:
            if v.gate_value >= v.floor:
                decisions[v.version] = ("promoted", f"first model: {v.gate_metric} "
                                        f"{_fmt(v.gate_value)} >= floor {_fmt(v.floor)}")
                champ = v
            else:
                decisions[v.version] = ("challenger", f"no champion yet and {v.gate_metric} "
                                        f"{_fmt(v.gate_value)} < floor {_fmt(v.floor)}")
            continue
        ref, ref_metric = champ.value_of(v.gate_metric)
        if not math.isfinite(ref) or v.gate_value > ref + v.margin:
            decisions[v.version] = ("promoted", f"{v.gate_metric} {_fmt(v.gate_value)} beats "
                                    f"champion v{champ.version}'s {ref_metric} {_fmt(ref)} "
                                    f"by more than margin {_fmt(v.margin)}")
            champ = v
        else:
            decisions[v.version] = ("challenger", f"{v.gate_metric} {_fmt(v.gate_value)} does "
                                    f"not beat champion v{champ.version}'s {ref_metric} "
                                    f"{_fmt(ref)} by more than margin {_fmt(v.margin)}")
    return (champ.version if champ else None), decisions


# ------------------------------------------------------------------------------------------------
def model_name(lang: str) -> str:
    return f"{MODEL_PREFIX}-{lang}"


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _versions(client, name: str) -> list[tuple[int, dict[str, str]]]:
    out = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000,
                                            page_token=token)
        out.extend((int(mv.version), dict(mv.tags or {})) for mv in page)
        token = page.token
        if not token:
            return out


def _current_champion(client, name: str) -> int | None:
    aliases = client.get_registered_model(name).aliases or {}
    v = aliases.get(CHAMPION)
    return int(v) if v is not None else None


def converge(client, name: str, max_rounds: int = 40, pause_s: float = 0.05
             ) -> tuple[int | None, dict[int, tuple[str, str]]]:
    """Compare-and-set loop: move the alias until a read shows it on the fold's target."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(max_rounds):
        raw = _versions(client, name)
        ours = {v: info for v, tags in raw if (info := VersionInfo.from_tags(v, tags))}
        target, decisions = decide(list(ours.values()))
        current = _current_champion(client, name)
        if target is None:
            tool_made = {v for v, tags in raw if T_GATE_VALUE in tags}
            if current is not None and current in tool_made:
                # The alias sits on one of our versions that no longer qualifies (excluded).
                client.delete_registered_model_alias(name, CHAMPION)
                continue
            return current, decisions  # none, or a champion set by hand: left alone
        if current == target:
            return target, decisions
        client.set_registered_model_alias(name, CHAMPION, str(target))
        time.sleep(pause_s * (1 + rng.random()))  # let a concurrent writer land, then re-read
    raise RuntimeError(f"{name}: champion alias did not settle after {max_rounds} rounds")


# ------------------------------------------------------------------------------------------------
def _ensure_registered_model(client, name: str, lang: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, tags={"lang": lang},
            description=f"Bilingual referring image segmentation, {lang} expressions. "
                        "pyfunc: image + text -> mask. Alias 'champion' = promoted version.")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise


def _git_commit(run) -> str:
    tag = run.data.tags.get("mlflow.source.git.commit") or os.environ.get("GIT_COMMIT")
    if tag:
        return tag
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
        return res.stdout.strip() if res.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _pick_gate(metrics: dict[str, float], gate_metric: str, run_id: str) -> str:
    if gate_metric in metrics:
        return gate_metric
    if gate_metric.endswith("_crf") and gate_metric[: -len("_crf")] in metrics:
        return gate_metric[: -len("_crf")]
    known = ", ".join(sorted(metrics)) or "none"
    raise ValueError(f"run {run_id} has no metric {gate_metric!r} (nor its non-CRF form); run "
                     f"`refseg evaluate --run-id {run_id}` first. Metrics present: {known}")


def _existing_version(client, name: str, run_id: str) -> int | None:
    for v, tags in _versions(client, name):
        if tags.get(T_RUN) == run_id:
            return v
    return None


def register(run_id: str, name: str | None = None, lang: str | None = None,
             gate_metric: str = "val_overall_iou_crf", margin: float = 0.0, floor: float = 0.3,
             tracking_uri: str | None = None, pipeline_run: str | None = None) -> dict:
    """Register ``run_id``'s model and apply the promotion rules (module docstring).

    Returns ``{"name", "version" (int, None when refused), "champion" (bool: this version holds
    the alias when the call returns), "champion_version", "status" (promoted | challenger |
    refused | already-registered statuses), "reason", "gate_metric", "gate_value", "model_uri"}``.
    Registering the same run twice reuses its version (rerunnable pipeline step).
    """
    import mlflow

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    params, metrics = run.data.params, dict(run.data.metrics)
    lang = lang or params.get("lang") or run.data.tags.get("lang")
    if lang not in ("zh", "en"):
        raise ValueError(f"run {run_id}: language unknown (param 'lang' is {lang!r}); pass --lang")
    name = name or model_name(lang)
    gate = _pick_gate(metrics, gate_metric, run_id)
    gate_value = float(metrics[gate])
    pipeline_run = pipeline_run or os.environ.get("REFSEG_PIPELINE_RUN") or ""
    result: dict[str, Any] = {"name": name, "run_id": run_id, "gate_metric": gate,
                              "gate_value": gate_value, "lang": lang}

    if not math.isfinite(gate_value):
        reason = f"gate metric {gate} is {gate_value}: not registered"
        client.set_tag(run_id, "refseg.registry.status", "refused")
        client.set_tag(run_id, "refseg.registry.reason", reason)
        return {**result, "version": None, "champion": False,
                "champion_version": _champion_or_none(client, name), "status": "refused",
                "reason": reason, "model_uri": None}

    _ensure_registered_model(client, name, lang)
    version = _existing_version(client, name, run_id)
    if version is None:
        version, model_uri = _log_and_create(client, run, name, lang, gate, gate_value, margin,
                                             floor, metrics, pipeline_run, tracking_uri)
    else:
        model_uri = client.get_model_version(name, str(version)).source

    champion, decisions = converge(client, name)
    status, reason = decisions.get(version, ("challenger", "excluded by an operator"))
    vtags = {T_STATUS: status, T_REASON: reason}
    if status == "challenger":
        vtags[T_CHALLENGER] = "true"
    for k, v in vtags.items():
        client.set_model_version_tag(name, str(version), k, v)
    client.set_tag(run_id, "refseg.registry.status", status)
    client.set_tag(run_id, "refseg.registry.version", f"{name}/{version}")
    return {**result, "version": int(version), "champion": champion == version,
            "champion_version": champion, "status": status, "reason": reason,
            "model_uri": model_uri}


def _champion_or_none(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return _current_champion(client, name)
    except MlflowException:
        return None


def _log_and_create(client, run, name, lang, gate, gate_value, margin, floor, metrics,
                    pipeline_run, tracking_uri) -> tuple[int, str]:
    import mlflow

    from components.pyfunc_model import log_pyfunc_model

    run_id = run.info.run_id
    nan_metrics = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
    with tempfile.TemporaryDirectory(prefix="refseg-register-") as tmp:
        ckpt = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/best.pt",
                                                   dst_path=tmp, tracking_uri=tracking_uri)
        tok = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="tokenizer",
                                                  dst_path=tmp, tracking_uri=tracking_uri)
        from model.checkpoint import read_checkpoint

        extra = read_checkpoint(ckpt)["extra"]
        fingerprint = (run.data.params.get("data_fingerprint")
                       or run.data.tags.get("data_fingerprint") or extra.get("data_fingerprint")
                       or "")
        tags = {
            T_RUN: run_id,
            T_GATE_METRIC: gate,
            T_GATE_VALUE: repr(gate_value),
            T_MARGIN: repr(float(margin)),
            T_FLOOR: repr(float(floor)),
            T_ELIGIBLE: "false" if nan_metrics else "true",
            "lang": lang,
            "dataset_fingerprint": str(fingerprint),
            "git_commit": _git_commit(run),
            "pipeline_run_id": pipeline_run,
            "config": str(run.data.params.get("config", "")),
        }
        if nan_metrics:
            tags[T_INELIGIBLE] = f"metric(s) not finite: {', '.join(nan_metrics)}"
        tags.update({f"{METRIC_TAG}{k}": repr(float(v)) for k, v in sorted(metrics.items())})
        # Re-open the training run only to attach the model to it (and restore the tracking URI).
        # The run keeps its status and end time (start_run/end_run would mark it FINISHED).
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(tracking_uri)
        status, end_time = run.info.status, run.info.end_time
        try:
            with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
                info = log_pyfunc_model(ckpt, tok, lang, os.path.join(tmp, "pyfunc"),
                                        tags={"lang": lang})
        finally:
            mlflow.set_tracking_uri(previous)
            if status == "RUNNING" or end_time is None:
                client.update_run(run_id, status=status)
            else:
                client.set_terminated(run_id, status=status, end_time=end_time)
        mv = client.create_model_version(name, source=info.model_uri, run_id=run_id, tags=tags,
                                         model_id=info.model_id,
                                         description=f"{gate}={gate_value:.4f} from run {run_id}")
    return int(mv.version), info.model_uri


# ------------------------------------------------------------------------------------------------
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN_ID", help="MLflow run of the training")
    p.add_argument("--name", default=None, help="registered model name "
                   "(default bilingual-refseg-<lang>)")
    p.add_argument("--lang", choices=("zh", "en"), default=None,
                   help="model language (default: the run's 'lang' param)")
    p.add_argument("--gate-metric", default="val_overall_iou_crf",
                   help="metric that decides promotion (default %(default)s; falls back to the "
                        "non-CRF metric when CRF was off)")
    p.add_argument("--margin", type=float, default=0.0,
                   help="champion moves only when the gate beats it by more than this")
    p.add_argument("--floor", type=float, default=0.3,
                   help="minimum gate value for the first champion (default %(default)s)")
    p.add_argument("--pipeline-run", default=None,
                   help="pipeline run id recorded as a tag (default $REFSEG_PIPELINE_RUN)")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")


def run(args) -> int:
    res = register(args.run, name=args.name, lang=args.lang, gate_metric=args.gate_metric,
                   margin=args.margin, floor=args.floor, tracking_uri=args.tracking_uri,
                   pipeline_run=args.pipeline_run)
    print(json.dumps(res, indent=2, default=str))
    if res["status"] == "refused":
        print(f"refused: {res['reason']}")
        return 3
    where = "champion" if res["champion"] else f"challenger (champion is v{res['champion_version']})"
    print(f"registered {res['name']} v{res['version']}: {where}; {res['reason']}")
    return 0
