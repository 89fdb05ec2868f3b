"""`make run` (`refseg run-local`): the embedded default on one machine, end to end.

1. generates the synthetic bilingual dataset under ``ROOT/data``;
2. runs the whole Kubeflow DAG locally through ``kfp.local`` for both languages on the ``small``
   preset (check translations, tokenize, then per language train, evaluate, register), with MLflow
   on ``ROOT/mlflow.db``;
3. prints the results per language, where the reports are, the registered versions and the
   champion, the MLflow UI command, and a ``refseg predict`` command to try the champion."""

import argparse
import os
import time


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="runs/local", help="folder for everything (default runs/local)")
    p.add_argument("--images", type=int, default=600, help="synthetic scenes (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--languages", default="zh,en", help="comma-separated (default zh,en)")
    p.add_argument("--train-steps", type=int, default=0, help="0 = the small preset's default")
    p.add_argument("--no-crf", action="store_true", help="evaluate without DenseCRF")
    p.add_argument("--verbose", action="store_true", help="show every log line of every task")


def run(args) -> int:
    from components import manifest as mf
    from components.stats import table1
    from components.synth import generate
    from pipelines.local_run import print_results, run_pipeline

    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    t0 = time.time()
    data = os.path.join(root, "data")
    print(f"[1/3] synthetic bilingual dataset -> {data}")
    s = generate(data, n_images=args.images, seed=args.seed, progress=False)
    print(f"      {s['expressions']} expressions, {s['objects']} objects, {s['images']} images, "
          f"splits {s['per_split']} ({s['seconds']} s)")
    print("[2/3] Table 1 of the dataset (mean lengths: zh jieba words / characters, en words)")
    t1 = table1(mf.read_manifest(s["manifest"]))
    print("      " + t1.to_string().replace("\n", "\n      "))
    langs = [x.strip() for x in args.languages.split(",") if x.strip()]
    print(f"[3/3] Kubeflow DAG through kfp.local for {', '.join(langs)} (log: {root}/pipeline.log)")
    res = run_pipeline(s["manifest"], root=root, languages=langs, preset="small",
                       train_steps=args.train_steps, crf=not args.no_crf, seed=args.seed,
                       verbose=args.verbose)
    print_results(res, root, res["tracking_uri"])
    lang = langs[0]
    # a real validation expression, so the example answers with a mask
    df = mf.read_manifest(s["manifest"])
    row = df[df["split"] == "val"].iloc[0]
    example = row[f"text_{lang}"]
    img = row["image_uri"]
    print("\nTry the champion:")
    print(f"  export MLFLOW_TRACKING_URI={res['tracking_uri']}")
    print(f"  .venv/bin/refseg predict --model models:/bilingual-refseg-{lang}@champion "
          f"--image {img} --text '{example}' --out mask.png")
    print(f"\nmake run finished in {time.time() - t0:.0f} s (pipeline {res['seconds']} s)")
    return 0
