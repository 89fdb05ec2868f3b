"""Table 4 of the paper from the ablation pipeline's evaluations: one row per ablation row, its
modules, and Overall IoU and P@0.5 ... P@0.9 without and with DenseCRF on one split, each as the
mean and spread (sample standard deviation, min, max) over the seeds the row was trained with.

:func:`ablation_table` builds the JSON document (schema in docs/pipeline.md, "The ablation
pipeline"); :mod:`components.evaluation.ablation_page` draws it as HTML.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from components.errors import InputError
from components.evaluation.metrics import PREC_THRESHOLDS_PCT

SCHEMA_VERSION = 1
METRICS = ("overall_iou", *(f"prec_{p}" for p in PREC_THRESHOLDS_PCT))
MODULES = ("use_mutan", "use_le", "use_la", "use_claf", "use_convlstm")


def spread(values: list[float]) -> dict[str, Any]:
    """mean, std (sample, ddof 1; None for one value), min, max, n and the values."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values), "values": list(values)}


def row_modules(model: dict[str, Any]) -> dict[str, Any]:
    """The Table 4 columns of a row's resolved model section: the switches and the levels."""
    out: dict[str, Any] = {m[len("use_"):]: bool(model.get(m, False)) for m in MODULES}
    out["levels"] = list(model.get("levels") or [])
    return out


def _metric_names(crf: bool) -> list[str]:
    return list(METRICS) + ([f"{m}_crf" for m in METRICS] if crf else [])


def ablation_table(plan: list[dict[str, Any]], evaluations: Iterable[dict[str, Any]], *,
                   split: str, crf: bool, modules: dict[str, dict[str, Any]],
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The table: ``plan`` lists the trained (row, config, seed) items in row order, each
    evaluation carries ``train`` ({config, seed, run_id}) and ``metrics`` (the evaluate step's
    names, ``{split}_overall_iou`` ...); ``modules`` maps a row to :func:`row_modules`. Every
    planned item must have exactly one evaluation holding the split's metrics."""
    by_item = {}
    for ev in evaluations:
        train = ev.get("train") or {}
        by_item[(str(train.get("config")), int(train.get("seed", 0)))] = ev
    names = _metric_names(crf)
    rows: dict[str, dict[str, Any]] = {}
    for item in plan:
        key = (str(item["config"]), int(item["seed"]))
        if key not in by_item:
            raise InputError(f"ablation row {item['row']} seed {item['seed']}: no evaluation "
                             f"(got {sorted(by_item)})")
        ev = by_item[key]
        row = rows.setdefault(item["row"], {
            "row": item["row"], "number": int(item["row"][3:].split("_")[0]),
            "config": item["config"], "modules": modules[item["row"]], "seeds": [],
            "runs": {}, "_values": {m: [] for m in names}})
        row["seeds"].append(int(item["seed"]))
        row["runs"][str(item["seed"])] = (ev.get("train") or {}).get("run_id")
        for m in names:
            value = ev["metrics"].get(f"{split}_{m}")
            if value is None:
                raise InputError(f"ablation row {item['row']} seed {item['seed']}: metric "
                                 f"{split}_{m} missing (evaluated: {sorted(ev['metrics'])[:8]} ...)")
            row["_values"][m].append(float(value))
    out_rows = []
    for row in rows.values():
        values = row.pop("_values")
        row["n_seeds"] = len(row["seeds"])
        row["metrics"] = {m: spread(v) for m, v in values.items()}
        out_rows.append(row)
    return {"schema_version": SCHEMA_VERSION, **(meta or {}), "split": split, "crf": bool(crf),
            "metrics": names, "rows": out_rows}


def parent_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """The table as MLflow metrics of the parent run: ``row<N>_<metric>`` (the mean over seeds)
    and ``row<N>_<metric>_std`` when there are several seeds."""
    out: dict[str, float] = {}
    for row in doc["rows"]:
        for m, s in row["metrics"].items():
            out[f"row{row['number']}_{m}"] = s["mean"]
            if s["std"] is not None:
                out[f"row{row['number']}_{m}_std"] = s["std"]
    return out
