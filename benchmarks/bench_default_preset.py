"""The embedded default of `make run` for several training seeds on the same synthetic scenes.

    python -m benchmarks.bench_default_preset [--seeds 0,1,2] [--steps 0] [--images 600]
                                              [--out benchmarks/results/default_preset.json]

The dataset is generated once (data seed 0, as `make run`), so the scenes stay the same; for each
training seed the whole DAG runs through kfp.local as `make run` runs it (check translations,
tokenize, train zh and en side by side on the default preset, evaluate every split with and
without DenseCRF, register). Per language and split it keeps overall IoU without and with CRF,
and it reports each figure's mean, sample standard deviation, min and max over the seeds, the
seconds of each run and the load average before and after it (a busy machine slows the runs; the
figures themselves do not depend on the load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

DEFAULT_OUT = os.path.join("benchmarks", "results", "default_preset.json")


def spread(values: list[float]) -> dict:
    """mean, sample standard deviation (0 for one value), min, max and the count."""
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4), "seeds": len(values)}


def figures(res: dict) -> dict[str, float]:
    """{"<lang>.<split>.overall_iou[_crf]": value} from a run_pipeline result."""
    out = {}
    for row in (res.get("results") or {}).get("rows", []):
        for split, cell in row["splits"].items():
            for key in ("overall_iou", "overall_iou_crf"):
                if isinstance((cell or {}).get(key), (int, float)):
                    out[f"{row['lang']}.{split}.{key}"] = float(cell[key])
    return out


def run_seed(manifest: str, seed: int, steps: int, config: str) -> dict:
    from pipelines.local_run import run_pipeline

    root = tempfile.mkdtemp(prefix=f"bench-default-s{seed}-")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = run_pipeline(manifest, root=root, languages=["zh", "en"], config=config, steps=steps,
                       crf=True, seed=seed)
    return {"seed": seed, "seconds": round(time.perf_counter() - t0, 1),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2), "figures": figures(res),
            "root": root}


def main(argv: list[str] | None = None) -> int:
    from pipelines.run_local import CONFIG

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (default 0)")
    p.add_argument("--steps", type=int, default=0, help="training steps; 0 = the preset's")
    p.add_argument("--images", type=int, default=600, help="synthetic scenes (default 600)")
    p.add_argument("--config", default=CONFIG, help=f"preset (default {CONFIG}, make run's)")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON result file")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be integers separated by commas, got {args.seeds!r}")
    if not seeds:
        p.error("--seeds names no seed")

    from components.synth import generate

    data = tempfile.mkdtemp(prefix="bench-default-data-")
    manifest = generate(data, n_images=args.images, seed=0)["manifest"]
    runs = []
    for seed in seeds:
        print(f"seed {seed}: the whole DAG on {args.config} ...", flush=True)
        runs.append(run_seed(manifest, seed, args.steps, args.config))
        print(f"seed {seed}: {runs[-1]['seconds']} s, {runs[-1]['figures']}", flush=True)
    keys = sorted(set().union(*(r["figures"] for r in runs)))
    doc = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores", "config": args.config, "images": args.images,
        "steps": args.steps or "preset", "seeds": seeds, "runs": runs,
        "summary": {k: spread([r["figures"][k] for r in runs if k in r["figures"]])
                    for k in keys},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=2)
    for k, v in doc["summary"].items():
        print(f"{k:<32} {v['mean']:.3f} +- {v['std']:.3f} ({v['seeds']} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
