"""`make run` (`refseg run-local`): the embedded default on one machine, end to end.

1. generates the synthetic bilingual dataset under ``ROOT/data``;
2. runs the whole Kubeflow DAG locally through ``kfp.local`` for both languages on the ``small3``
   config (check translations, tokenize, then per language train, evaluate, register), with MLflow
   on ``ROOT/mlflow.db``;
3. prints the results per language, where the reports are, the registered versions and the
   champion, the MLflow UI command, and a ``refseg predict`` command to try the champion."""

import argparse
import os
import time

from pipelines.local_run import add_pipeline_options, languages_of

CONFIG = "small3"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("What `make run` does: generate the synthetic bilingual dataset, then run "
                     "the whole Kubeflow DAG locally (kfp.local) on the small3 config (the full three-level network), with MLflow "
                     "on ROOT/mlflow.db, and print the results.")
    add_pipeline_options(p)
    p.add_argument("--images", type=int, default=600, help="synthetic scenes (default 600)")


def _dataset(root: str, images: int, seed: int) -> dict:
    from components.data import manifest as mf
    from components.stats import table1
    from components.synth import generate

    data = os.path.join(root, "data")
    print(f"[1/3] synthetic bilingual dataset -> {data}", flush=True)
    s = generate(data, n_images=images, seed=seed)
    print(f"      {s['expressions']} expressions, {s['objects']} objects, {s['images']} images, "
          f"splits {s['per_split']} ({s['seconds']} s)")
    print("[2/3] Table 1 of the dataset (mean lengths: zh jieba words / characters, en words)")
    t1 = table1(mf.read_manifest(s["manifest"]))
    print("      " + t1.to_string().replace("\n", "\n      "), flush=True)
    return s


def _try_it(manifest_uri: str, lang: str, tracking_uri: str) -> None:
    """A `refseg predict` command on a real validation expression, so it answers with a mask."""
    from components.data import manifest as mf
    from components.serving import model_name

    df = mf.read_manifest(manifest_uri)
    row = df[df["split"] == "val"].iloc[0]
    print("\nTry the champion:")
    print(f"  export MLFLOW_TRACKING_URI={tracking_uri}")
    print(f"  .venv/bin/refseg predict --model models:/{model_name(lang)}@champion "
          f"--image {row['image_uri']} --text '{row[mf.TEXT_COLUMN[lang]]}' --out mask.png")


def run(args) -> int:
    from pipelines.local_run import print_results, run_pipeline

    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    t0 = time.time()
    s = _dataset(root, args.images, args.seed)
    langs = languages_of(args.languages)
    print(f"[3/3] Kubeflow DAG through kfp.local for {', '.join(langs)} (log: {root}/pipeline.log)",
          flush=True)
    res = run_pipeline(s["manifest"], root=root, languages=langs, config=CONFIG,
                       steps=args.steps, crf=not args.no_crf, seed=args.seed,
                       verbose=args.verbose > 0)
    print_results(res, root, res["tracking_uri"])
    _try_it(s["manifest"], langs[0], res["tracking_uri"])
    print(f"\nmake run finished in {time.time() - t0:.0f} s (pipeline {res['seconds']} s)")
    return 0
