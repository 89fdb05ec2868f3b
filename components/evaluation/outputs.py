"""The files of an evaluation (``out_dir``, local or s3://): ``metrics.json`` (the document built
here; schema in docs/evaluation.md, "Outputs"), ``per_sample.parquet`` (one row per expression),
``results.json`` (:mod:`.results`) and ``report.html`` (:mod:`.report`)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from components.evaluation.crf import CRFParams
from components.evaluation.evaluator import Predictions, Timings
from components.evaluation.metrics import ious
from components.evaluation.results import RESULTS_FILE

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
PER_SAMPLE_FILE = "per_sample.parquet"
REPORT_FILE = "report.html"
FILES = (METRICS_FILE, REPORT_FILE, PER_SAMPLE_FILE, RESULTS_FILE)


def per_sample_frame(pred: Predictions, with_crf: bool):
    """sample_id, image_id, language, intersection, union, iou, the same with ``_crf`` (null
    without CRF), crf_seconds and iou_shuffled (null where the image had a single object)."""
    import pandas as pd

    rows = pred.rows
    df = pd.DataFrame({
        "sample_id": [r["sample_id"] for r in rows],
        "image_id": np.array([r["image_id"] for r in rows], dtype=np.int64),
        "language": [r["language"] for r in rows],
        "intersection": np.array([r["intersection"] for r in rows], dtype=np.int64),
        "union": np.array([r["union"] for r in rows], dtype=np.int64),
    })
    df["iou"] = ious(df["intersection"].to_numpy(), df["union"].to_numpy())
    if with_crf:
        df["intersection_crf"] = np.array([r["intersection_crf"] for r in rows], dtype=np.int64)
        df["union_crf"] = np.array([r["union_crf"] for r in rows], dtype=np.int64)
        df["iou_crf"] = ious(df["intersection_crf"].to_numpy(), df["union_crf"].to_numpy())
        df["crf_seconds"] = np.array([r["crf_seconds"] for r in rows], dtype=np.float64)
    else:
        for c, dt in (("intersection_crf", "Int64"), ("union_crf", "Int64"),
                      ("iou_crf", "Float64"), ("crf_seconds", "Float64")):
            df[c] = pd.array([None] * len(df), dtype=dt)
    shuf = [pred.shuffled.get(i) for i in range(len(rows))]
    df["iou_shuffled"] = pd.array(
        [None if s is None else (1.0 if s[1] == 0 else s[0] / s[1]) for s in shuf],
        dtype="Float64")
    return df


def crf_summary(enabled: bool, mode: str, params: CRFParams, workers: int, pred: Predictions,
                timings: Timings) -> dict[str, Any]:
    """The ``crf`` entry: settings, and with CRF its seconds and share of the compute time."""
    doc: dict[str, Any] = {"enabled": enabled, "mode": mode, "params": params.to_dict(),
                           "workers": workers}
    if not enabled:
        return doc
    crf_total = float(sum(pred.crf_seconds))
    compute = crf_total + timings.get("forward_s") + timings.get("postprocess_s")
    per_image: dict[int, float] = {}
    for r in pred.rows:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0.0) + r["crf_seconds"]
    doc.update(
        seconds_total=round(crf_total, 4),
        seconds_per_sample=round(crf_total / max(1, len(pred.rows)), 5),
        seconds_per_image=round(float(np.mean(list(per_image.values()))), 5),
        share_of_eval_time=round(crf_total / compute, 4) if compute > 0 else 0.0,
        wall_seconds_waiting=round(timings.get("crf_wait_s"), 4),
    )
    return doc


def metrics_document(opts, *, lang: str, device: str, n_images: int, n_samples: int,
                     metrics: dict[str, float], crf: dict[str, Any], sanity: dict[str, Any],
                     timings: dict[str, float], config_name: str, extra: dict[str, Any],
                     run_id: str | None, run_id_source: str) -> dict[str, Any]:
    """The metrics.json document (``opts``: the step's EvaluateOptions)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "split": "+".join(opts.splits) or None,  # the evaluated splits (set by the step)
        "lang": lang,
        "n_samples": n_samples,
        "n_images": n_images,
        "checkpoint": str(opts.checkpoint),
        "data_dir": str(opts.data_dir),
        "seed": int(opts.seed),
        "device": device,
        "max_samples": opts.max_samples,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "crf": crf,
        "sanity": sanity,
        "timings": timings,
        "model": {"config": config_name, "step": extra.get("step"),
                  "val_overall_iou_at_training": extra.get("val_overall_iou")},
        "mlflow": {"run_id": run_id, "run_id_source": run_id_source, "logged": False},
    }


def write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, ensure_ascii=False, sort_keys=False)
        fh.write("\n")
