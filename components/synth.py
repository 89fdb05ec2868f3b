"""``refseg data synth``: a procedural bilingual referring-segmentation dataset (the embedded
default and the tests). The scenes are drawn by :mod:`components.data.synth`: 2-6 coloured shapes
per image, expressions in English and Chinese that each name exactly one object. Deterministic by
seed.

Output (``out_dir``, local or s3://): ``images/<image_id>.png``, ``manifest.parquet`` (the
bilingual manifest) and ``summary.json``. Splits by image: train / val / testA (scenes with at most
3 objects) / testB (4 or more).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd

from components.data import manifest as mf
from components.data import storage
from components.data.synth import draw_split, referring_rows, render_scene
from components.errors import ConfigError
from components.logs import get_logger

PROGRESS_EVERY = 200  # images between progress lines


def generate(
    out_dir: str,
    n_images: int = 600,
    seed: int = 0,
    image_size: int = 128,
    max_targets: int = 3,
    max_expressions: int = 3,
    val_share: float = 0.15,
    test_share: float = 0.15,
) -> dict:
    """Generate the dataset into ``out_dir`` (local or s3://). Returns the summary dict."""
    if n_images < 1:
        raise ConfigError("n_images must be at least 1")
    if image_size < 32:
        raise ConfigError("image_size must be at least 32 pixels")
    log = get_logger("synth")
    t0 = time.time()
    rng = np.random.default_rng(seed)
    final_root = str(out_dir)
    rows: list[dict] = []
    n_objects = 0
    with storage.staged_output(final_root, prefix="synth-", step="synth") as local_root:
        os.makedirs(os.path.join(local_root, "images"), exist_ok=True)
        for image_id in range(n_images):
            scene = render_scene(rng, image_size)
            name = f"images/{image_id:06d}.png"
            scene.image.save(os.path.join(local_root, name))
            uri = storage.join(final_root, name) if storage.is_s3(final_root) else os.path.abspath(
                os.path.join(local_root, name)
            )
            split = draw_split(rng, scene.objects, val_share, test_share)
            scene_rows, n_targets = referring_rows(rng, scene, image_id, uri, split, image_size,
                                                   max_targets, max_expressions)
            rows += scene_rows
            n_objects += n_targets
            if (image_id + 1) % PROGRESS_EVERY == 0:
                log.info("%d/%d images, %d expressions", image_id + 1, n_images, len(rows))
        df = pd.DataFrame(rows)
        mf.write_manifest(df, os.path.join(local_root, "manifest.parquet"))
        summary = {
            "seed": seed,
            "image_size": image_size,
            "images": n_images,
            "objects": n_objects,
            "expressions": len(df),
            "per_split": {s: int(n) for s, n in df["split"].value_counts().sort_index().items()},
            "seconds": round(time.time() - t0, 2),
            "manifest": storage.join(final_root, "manifest.parquet"),
        }
        with open(os.path.join(local_root, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
    return summary


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder or s3:// prefix")
    p.add_argument("--images", type=int, default=600, help="number of scenes (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--max-targets", type=int, default=3, help="referred objects per image (default 3)")
    p.add_argument("--max-expressions", type=int, default=3,
                   help="expressions per referred object (default 3)")


def run(args) -> int:
    s = generate(args.out, n_images=args.images, seed=args.seed, image_size=args.size,
                 max_targets=args.max_targets, max_expressions=args.max_expressions)
    print(f"wrote {s['expressions']} expressions of {s['objects']} objects in {s['images']} images "
          f"({s['per_split']}) in {s['seconds']} s -> {s['manifest']}")
    return 0
