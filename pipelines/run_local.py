"""`make run`: the embedded default on one machine.

Generates the synthetic bilingual dataset and runs every step that exists on it, printing where each
output is. (The full Kubeflow DAG through kfp.local takes over as ``refseg pipeline run`` once it
lands; this command then delegates to it.)"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="runs/local", help="folder for everything the run writes")
    p.add_argument("--images", type=int, default=600, help="synthetic scenes (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args) -> int:
    from components.synth import generate

    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    t0 = time.time()
    data = os.path.join(root, "data")
    print(f"[1] synthetic dataset -> {data}")
    s = generate(data, n_images=args.images, seed=args.seed, progress=True)
    print(f"    {s['expressions']} expressions, {s['objects']} objects, {s['images']} images, "
          f"splits {s['per_split']}")
    from components import manifest as mf
    from components.stats import table1

    print("[2] Table 1 statistics of the dataset")
    print(table1(mf.read_manifest(s["manifest"])).to_string())
    if importlib.util.find_spec("pipelines.local_run") is None:
        print("\nThe training pipeline is not part of this build yet; this run stopped after the "
              "data steps above.")
    print(f"\ndone in {time.time() - t0:.1f} s; outputs under {root}")
    return 0
