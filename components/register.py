"""``refseg register``: register a training run's model in the MLflow Model Registry and promote
the ``champion``.

:func:`register` downloads the run's ``checkpoints/best.pt`` and ``tokenizer/``, logs the pyfunc
(:mod:`components.serving.pyfunc`) into that run, creates a version of ``bilingual-refseg-<lang>``
carrying its metrics and provenance as tags (among them ``refseg.gate_split``, the split(s) the
gate metric was measured on, and ``refseg.select_split``, the split best.pt was selected on), then
moves the ``champion`` alias. The default gate metric is ``gate_overall_iou_crf``: the evaluate
step's pooled gate split, kept apart from the selection split. The rules are in
:mod:`components.registry.promotion`, the registry operations and the compare-and-set loop that
keeps exactly one champion under concurrent registrations in :mod:`components.registry.store`.

A gate metric that is NaN/inf is refused: nothing is registered (a model that cannot be measured
does not enter the registry); the run gets tags ``refseg.registry.status=refused`` and
``refseg.registry.reason``; the result says ``status: refused``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from components.errors import ConfigError
from components.logs import get_logger
from components.registry import store
from components.registry.promotion import (
    T_GATE_SPLIT,
    T_SELECT_SPLIT,
    gate_split_of,
    pick_gate,
    version_tags,
)
from components.serving import model_name
from components.text.tokenizer import FINGERPRINT_KEY

GATE_METRIC = "gate_overall_iou_crf"
log = get_logger("register")


@dataclass
class RegisterOptions:
    """What ``refseg register`` (and the pipeline's register step) is asked to do."""

    run_id: str
    name: str | None = None  # default bilingual-refseg-<lang>
    lang: str | None = None  # default the run's ``lang`` param
    gate_metric: str = GATE_METRIC
    margin: float = 0.0
    floor: float = 0.3
    tracking_uri: str | None = None  # default $MLFLOW_TRACKING_URI
    pipeline_run: str | None = None  # default $REFSEG_PIPELINE_RUN


def register(run_id: str | RegisterOptions, **options: Any) -> dict:
    """Register the run's model and apply the promotion rules. ``register(run_id, margin=...,
    ...)`` takes :class:`RegisterOptions`' fields as keywords.

    Returns ``{"name", "version" (int, None when refused), "champion" (bool: this version holds
    the alias when the call returns), "champion_version", "status" (promoted | challenger |
    refused), "reason", "gate_metric", "gate_value", "model_uri", "run_id", "lang"}``.
    Registering the same run twice reuses its version (rerunnable pipeline step).
    """
    import mlflow

    opts = run_id if isinstance(run_id, RegisterOptions) else RegisterOptions(run_id, **options)
    tracking_uri = opts.tracking_uri or mlflow.get_tracking_uri()
    client = store.open_client(tracking_uri)
    run = store.get_run(client, opts.run_id, tracking_uri)
    metrics = dict(run.data.metrics)
    lang = opts.lang or run.data.params.get("lang") or run.data.tags.get("lang")
    if lang not in ("zh", "en"):
        raise ConfigError(f"run {opts.run_id}: language unknown (param 'lang' is {lang!r}); "
                          "pass --lang")
    name = opts.name or model_name(lang)
    gate = pick_gate(metrics, opts.gate_metric, opts.run_id)
    gate_value = float(metrics[gate])
    result: dict[str, Any] = {"name": name, "run_id": opts.run_id, "gate_metric": gate,
                              "gate_value": gate_value, "lang": lang}
    log.info("run %s (%s): %s = %.4f", opts.run_id, lang, gate, gate_value)

    if not math.isfinite(gate_value):
        reason = f"gate metric {gate} is {gate_value}: not registered"
        store.record_refusal(client, opts.run_id, reason)
        log.warning("refused: %s", reason)
        return {**result, "version": None, "champion": False,
                "champion_version": store.champion_or_none(client, name), "status": "refused",
                "reason": reason, "model_uri": None}

    store.ensure_registered_model(client, name, lang)
    version = store.existing_version(client, name, opts.run_id)
    if version is None:
        version, model_uri = _new_version(client, tracking_uri, run, opts, name, lang, gate,
                                          gate_value)
        log.info("created %s v%d", name, version)
    else:
        model_uri = store.version_source(client, name, version)
        log.info("run already registered as %s v%d", name, version)

    champion, decisions = store.converge(client, name)
    status, reason = decisions.get(version, ("challenger", "excluded by an operator"))
    store.record_decision(client, name, version, opts.run_id, status, reason)
    log.info("%s v%d: %s (champion v%s); %s", name, version, status, champion, reason)
    return {**result, "version": int(version), "champion": champion == version,
            "champion_version": champion, "status": status, "reason": reason,
            "model_uri": model_uri}


def _new_version(client, tracking_uri: str, run, opts: RegisterOptions, name: str, lang: str,
                 gate: str, gate_value: float) -> tuple[int, str]:
    """Log the pyfunc into the training run and create its version with every tag."""
    from components.serving.pyfunc import log_pyfunc_model
    from model.checkpoint import read_checkpoint

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="refseg-register-") as tmp:
        ckpt, tok = store.download_run_model(run_id, tmp, tracking_uri)
        extra = read_checkpoint(ckpt)["extra"]
        tags = version_tags(run_id, gate, gate_value, opts.margin, opts.floor,
                            dict(run.data.metrics), _provenance(run, lang, extra, opts, gate))
        log.info("logging the pyfunc into run %s", run_id)
        info = store.log_into_run(client, run, tracking_uri, lambda: log_pyfunc_model(
            ckpt, tok, lang, os.path.join(tmp, "pyfunc"), tags={"lang": lang}))
        version = store.create_version(client, name, info, run_id, tags,
                                       description=f"{gate}={gate_value:.4f} from run {run_id}")
    return version, info.model_uri


def _provenance(run, lang: str, extra: dict, opts: RegisterOptions, gate: str) -> dict[str, str]:
    """Where the model comes from: language, the gate and selection splits, dataset fingerprint,
    git commit, pipeline run, config (the run's values first, then the checkpoint's / this
    checkout's)."""
    from components import provenance

    params, tags = run.data.params, run.data.tags
    fingerprint = (params.get("data_fingerprint") or tags.get("data_fingerprint")
                   or extra.get("data_fingerprint") or "")
    commit = tags.get("mlflow.source.git.commit") or provenance.git_commit()
    return {
        "lang": lang,
        T_GATE_SPLIT: gate_split_of(gate, dict(tags)),
        T_SELECT_SPLIT: str(tags.get(T_SELECT_SPLIT) or extra.get("select_split") or ""),
        "dataset_fingerprint": str(fingerprint),
        "vocab_fingerprint": str(extra.get(FINGERPRINT_KEY) or ""),
        "git_commit": "" if commit == provenance.UNKNOWN else commit,
        "pipeline_run_id": opts.pipeline_run or os.environ.get("REFSEG_PIPELINE_RUN") or "",
        "config": str(params.get("config", "")),
    }


# ------------------------------------------------------------------------------------------------
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN_ID", help="MLflow run of the training")
    p.add_argument("--name", default=None, help="registered model name "
                   "(default bilingual-refseg-<lang>)")
    p.add_argument("--lang", choices=("zh", "en"), default=None,
                   help="model language (default: the run's 'lang' param)")
    p.add_argument("--gate-metric", default=GATE_METRIC,
                   help="metric that decides promotion (default %(default)s: the overall IoU "
                        "after DenseCRF on the evaluation's gate split, the splits best.pt was "
                        "not selected on, pooled; falls back to the non-CRF metric when CRF was "
                        "off). The version's tags refseg.gate_split and refseg.select_split say "
                        "which split gated and which selected")
    p.add_argument("--margin", type=float, default=0.0,
                   help="champion moves only when the gate beats it by more than this")
    p.add_argument("--floor", type=float, default=0.3,
                   help="minimum gate value for the first champion (default %(default)s)")
    p.add_argument("--pipeline-run", default=None,
                   help="pipeline run id recorded as a tag (default $REFSEG_PIPELINE_RUN)")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")


def run(args) -> int:
    res = register(RegisterOptions(args.run, name=args.name, lang=args.lang,
                                   gate_metric=args.gate_metric, margin=args.margin,
                                   floor=args.floor, tracking_uri=args.tracking_uri,
                                   pipeline_run=args.pipeline_run))
    print(json.dumps(res, indent=2, default=str))
    if res["status"] == "refused":
        print(f"refused: {res['reason']}")
        return 3
    where = "champion" if res["champion"] else f"challenger (champion is v{res['champion_version']})"
    print(f"registered {res['name']} v{res['version']}: {where}; {res['reason']}")
    return 0
