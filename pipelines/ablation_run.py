"""`refseg ablation` (and `make ablation`): the Table 4 pipeline (pipelines/ablation.py) on this
machine through ``kfp.local``: every ablation row on a preset (default ``small3``) for one
language, times the seeds, then the table on the console, in ``ROOT/ablation.json`` and as the
pipeline's HTML artifact. Without ``--manifest`` it first generates the synthetic set under
``ROOT/data``, as `refseg run-local` does. Everything goes under ``--root`` (default
``runs/ablation``): the artifacts, the MLflow store (parent run ``ablation-<lang>`` with a child
run per row and seed), ``pipeline.log``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from components.errors import InputError

# kfp.local runs at most two iterations of a ParallelFor at once (its executor's cap)
LOCAL_PARALLEL = 2


def run_ablation(manifest_uri: str, *, root: str = "runs/ablation", lang: str = "en",
                 preset: str = "small3_os8", rows: str = "", steps: int = 0, seeds: str = "0",
                 split: str = "gate", crf: bool = True, max_fail_rate: float = 0.05,
                 verbose: bool = False) -> dict:
    """Run the ablation DAG locally; returns the table (also ``ROOT/ablation.json``) with
    ``table`` (``ROOT/ablation.html``), ``table_artifact`` and ``table_json`` (the pipeline's
    artifacts), ``seconds``, ``tracking_uri``, ``log``."""
    from components.ablation import plan
    from pipelines.local_run import _uri_path, init_local, run_locally

    if lang not in ("zh", "en"):
        raise InputError(f"--lang must be zh or en, got {lang!r}")
    items = plan(preset, rows, seeds, split)  # a bad row, seed or split fails before any task
    path = Path(root).resolve()

    def dag(tracking_uri: str) -> str:
        from pipelines.ablation import ablation_pipeline

        init_local(path)
        return ablation_pipeline(manifest_uri=manifest_uri, lang=lang, preset=preset, rows=rows,
                                 steps=steps, seeds=seeds, split=split, crf=crf,
                                 tracking_uri=tracking_uri, max_fail_rate=max_fail_rate).output

    output, info = run_locally(path, verbose, min(LOCAL_PARALLEL, len(items)), dag)
    doc = json.loads(output)
    # the HTML artifact has no file extension (KFP names it after the output): a browser
    # opens ROOT/ablation.html
    page = path / "ablation.html"
    shutil.copyfile(_uri_path(doc["table"]), page)
    doc.update(info, table=str(page), table_artifact=_uri_path(doc.get("table")),
               table_json=_uri_path(doc.get("table_json")))
    (path / "ablation.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    return doc


def print_table(doc: dict) -> None:
    """The table on the console: modules as marks, then overall IoU and P@X (mean ± std, %)."""
    crf = doc["crf"]
    cols = ["prec_50", "prec_60", "prec_70", "prec_80", "prec_90", "overall_iou"]
    print(f"\nTable 4 ({doc.get('lang')}, {doc.get('preset')}, {doc.get('split')} = "
          f"{doc.get('split_detail')}, {doc.get('steps')} steps; mean ± std over seeds, %)")
    head = (f"{'#':>2} {'row':<18} MUTAN LE LA CLAF LSTM lvl n  "
            + " ".join(f"{c.replace('prec_', 'P@.')[:6]:>12}" for c in cols)
            + (f" {'IoU+CRF':>12}" if crf else ""))
    print(head)
    print("-" * len(head))
    for r in doc["rows"]:
        m = r["modules"]

        def mark(key, width, m=m):
            return ("✓" if m[key] else "·").center(width)

        cells = [_stat(r["metrics"][c]) for c in cols]
        if crf:
            cells.append(_stat(r["metrics"]["overall_iou_crf"]))
        print(f"{r['number']:>2} {r['row']:<18} {mark('mutan', 5)} {mark('le', 2)} "
              f"{mark('la', 2)} {mark('claf', 4)} {mark('convlstm', 4)} {len(m['levels']):>3} "
              f"{r['n_seeds']:<2} " + " ".join(f"{c:>12}" for c in cells))
    print(f"\ntable (HTML) : {doc.get('table')}")
    print(f"table (JSON) : {doc.get('table_json')}")
    print(f"MLflow       : parent run {doc.get('parent_run_id')} "
          f"(mlflow ui --backend-store-uri {doc.get('tracking_uri')})")


def _stat(s: dict) -> str:
    sd = "" if s["std"] is None else f"±{100 * s['std']:.1f}"
    return f"{100 * s['mean']:.2f}{sd}"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Table 4 as one pipeline run, locally (kfp.local): train every ablation "
                     "row on a preset for one language (x seeds), evaluate each with and without "
                     "DenseCRF, and print the table; MLflow parent run with a child per row.")
    p.add_argument("--lang", default="en", choices=("zh", "en"), help="language (default en)")
    p.add_argument("--steps", type=int, default=0, help="training steps per row; 0 = preset's")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (default 0)")
    p.add_argument("--rows", default="", help="comma-separated rows (names or numbers, e.g. "
                   "1,4,10); default every row of configs/ablation")
    p.add_argument("--preset", default="small3_os8", help="the preset the rows are applied on "
                   "(a shipped preset or a YAML file; default small3_os8: small3 with every level "
                   "on the Res3 grid, as the paper's)")
    p.add_argument("--split", default="gate", help="reported split: gate (the pooled splits "
                   "best.pt was not selected on, default) or one other evaluated split")
    p.add_argument("--manifest", default="", help="bilingual manifest (default: generate the "
                   "synthetic set under ROOT/data)")
    p.add_argument("--images", type=int, default=600, help="synthetic scenes without --manifest")
    p.add_argument("--root", default="runs/ablation", help="folder for everything")
    p.add_argument("--no-crf", action="store_true", help="evaluate without DenseCRF")
    p.add_argument("--max-fail-rate", type=float, default=0.05, help="translation gate")


def run(args) -> int:
    from components.ablation import plan

    plan(args.preset, args.rows, args.seeds, args.split)  # refuse a bad plan before any work
    root = os.path.abspath(args.root)
    manifest, step = args.manifest, ""
    if not manifest:  # the synthetic set, as `refseg run-local` makes it ([1/3], [2/3])
        from pipelines.run_local import _dataset

        os.makedirs(root, exist_ok=True)
        manifest, step = _dataset(root, args.images, 0)["manifest"], "[3/3] "
    print(f"{step}ablation pipeline through kfp.local (log: {root}/pipeline.log)", flush=True)
    doc = run_ablation(manifest, root=root, lang=args.lang, preset=args.preset, rows=args.rows,
                       steps=args.steps, seeds=args.seeds, split=args.split,
                       crf=not args.no_crf, max_fail_rate=args.max_fail_rate,
                       verbose=args.verbose > 0)
    print(f"ablation finished in {doc['seconds']} s")
    print_table(doc)
    return 0
