"""The Table 4 study as one pipeline run (pipelines/ablation.py): which (row, seed) pairs to train,
the MLflow parent run the rows' training runs nest under, and the table at the end.

- :func:`plan`: the rows (default every file of configs/ablation, in row order) applied on a
  preset (``<preset>:<row>``), times the seeds; checks the names and the reported split.
- :func:`start`: creates the parent run (experiment ``bilingual-refseg``, run name
  ``ablation-<lang>``, tags) and returns the plan's items, each carrying ``parent_run_id``; the
  train step tags its run ``mlflow.parentRunId`` with it.
- :func:`finish`: the table (components.evaluation.ablation_table) as ``ablation.json`` and
  ``ablation.html`` (components.evaluation.ablation_page), logged to the parent run with the
  table's means as its metrics; the parent run ends FINISHED.

The reported split (``split``): ``gate`` by default, the pooled splits that did not select
best.pt (``testA+testB`` on the synthetic set); a single evaluated split may be named, but never
the selection split (``select_split``, ``val``): a figure on it is optimistic.
"""

from __future__ import annotations

import json
import os
from typing import Any

from components import logs
from components.data.names import check_split_name
from components.errors import ConfigError
from components.evaluation.pooling import GATE_PREFIX

GATE = GATE_PREFIX.rstrip("_")
TABLE_JSON, TABLE_HTML = "ablation.json", "ablation.html"
ARTIFACT_DIR = "ablation"


def parse_rows(rows: str | list[str] | None) -> list[str]:
    """``""`` -> every row in order; ``"row1_baseline,4"`` -> names (a number picks row N)."""
    import configs

    known = configs.ablation_names()
    items = [r.strip() for r in (rows.split(",") if isinstance(rows, str) else rows or [])
             if str(r).strip()]
    if not items:
        return known
    by_number = {r[3:].split("_")[0]: r for r in known}
    out = [by_number.get(r, r) for r in items]
    bad = [r for r in out if r not in known]
    if bad:
        raise ConfigError(f"rows: unknown ablation row {bad[0]!r}; known: {', '.join(known)}")
    return sorted(dict.fromkeys(out), key=known.index)


def parse_seeds(seeds: str | list[int] | int) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2] (no repeats; at least one)."""
    items = seeds if isinstance(seeds, list) else str(seeds).split(",")
    try:
        out = list(dict.fromkeys(int(str(s).strip()) for s in items if str(s).strip()))
    except ValueError:
        raise ConfigError(f"seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2"
                          ) from None
    if not out:
        raise ConfigError("seeds: give at least one seed, e.g. 0")
    return out


def select_split(preset: str) -> str:
    """The split the preset's trainer selects best.pt on."""
    from components.training.config import load_run_config

    return load_run_config(preset)[1].select_split


def check_split(split: str, preset: str) -> None:
    chosen = select_split(preset)
    if not split:
        raise ConfigError(f"split must be {GATE!r} or an evaluated split other than {chosen!r}")
    check_split_name(split)
    if split == chosen:
        raise ConfigError(f"split {split!r} is the selection split of {preset} (best.pt is "
                          f"chosen on it: optimistic figures); use {GATE!r} (the pooled splits "
                          "the selection did not see) or another split")


def plan(preset: str, rows: str | list[str] = "", seeds: str | list[int] = "0",
         split: str = GATE) -> list[dict[str, Any]]:
    """The (row, seed) items in row order, seed order: ``{"row", "config", "seed"}``."""
    import configs

    names, seed_list = parse_rows(rows), parse_seeds(seeds)
    for row in names:
        configs.read(f"{preset}:{row}")  # an unknown preset fails here, before any training
    check_split(split, preset)
    return [{"row": row, "config": f"{preset}:{row}", "seed": s} for row in names
            for s in seed_list]


def _client(tracking_uri: str | None):
    import mlflow

    from components.provenance import tracking_uri as resolve

    return mlflow.MlflowClient(tracking_uri=resolve(tracking_uri or None))


def start(lang: str, preset: str, rows: str = "", seeds: str = "0", split: str = GATE,
          steps: int = 0, crf: bool = True, tracking_uri: str | None = None,
          pipeline_run: str = "") -> list[dict[str, Any]]:
    """Check the plan, create the parent run; returns the items with ``parent_run_id``."""
    from components.provenance import EXPERIMENT, git_commit
    from components.training.tracking import Tracker

    items = plan(preset, rows, seeds, split)
    tracker = Tracker(True, tracking_uri or None)
    parent = tracker.start(None, run_name=f"ablation-{lang}")
    tracker.tags({"refseg.step": "ablation", "lang": lang, "refseg.preset": preset,
                  "refseg.rows": ",".join(dict.fromkeys(i["row"] for i in items)),
                  "refseg.seeds": ",".join(map(str, parse_seeds(seeds))),
                  "refseg.split": split, "refseg.steps": str(steps), "refseg.crf": str(crf),
                  "refseg.pipeline_run": pipeline_run, "git_commit": git_commit(),
                  "refseg.experiment": EXPERIMENT})
    logs.get_logger("ablation", lang).info("parent run %s: %d rows x %d seed(s) on %s",
                                           parent, len(items) // len(parse_seeds(seeds)),
                                           len(parse_seeds(seeds)), preset)
    return [{**item, "parent_run_id": parent} for item in items]


def finish(items: list[dict[str, Any]], evaluations: list[dict[str, Any]], split: str,
           crf: bool, out_dir: str, tracking_uri: str | None = None,
           meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the table (JSON and HTML) to ``out_dir``, log both and its metrics to the parent
    run, end the parent run; returns the table document."""
    import configs
    from components.evaluation.ablation_page import page_html
    from components.evaluation.ablation_table import ablation_table, row_modules

    modules = {i["row"]: row_modules(configs.read(i["config"])["model"]) for i in items}
    first = evaluations[0] if evaluations else {}
    detail = first.get("gate_split") if split == GATE else split
    parent = items[0]["parent_run_id"] if items else None
    info = {"lang": first.get("lang"),
            "preset": items[0]["config"].rsplit(":", 1)[0] if items else None,
            "split_detail": detail, "select_split": first.get("select_split"),
            "parent_run_id": parent, **(meta or {})}
    doc = ablation_table(items, evaluations, split=split, crf=crf, modules=modules, meta=info)
    os.makedirs(out_dir, exist_ok=True)
    json_path, html_path = os.path.join(out_dir, TABLE_JSON), os.path.join(out_dir, TABLE_HTML)
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, ensure_ascii=False)
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write(page_html(doc))
    if parent:
        _log_parent(parent, doc, [json_path, html_path], tracking_uri)
    return doc


def _log_parent(parent: str, doc: dict[str, Any], files: list[str], tracking_uri) -> None:
    import time

    from mlflow.entities import Metric

    from components.evaluation.ablation_table import parent_metrics

    client = _client(tracking_uri)
    ts = int(time.time() * 1000)
    metrics = [Metric(k, float(v), ts, 0) for k, v in sorted(parent_metrics(doc).items())]
    for i in range(0, len(metrics), 1000):
        client.log_batch(parent, metrics=metrics[i:i + 1000])
    for path in files:
        client.log_artifact(parent, path, ARTIFACT_DIR)
    client.set_terminated(parent, status="FINISHED")
