"""Benchmark of the check_translations step on 150,000 rows (the size of Chinese UNC).

The manifest is built by replicating the rows of a synthetic dataset (components.synth) with unique
sample ids until it holds ``--n`` rows, so every check runs on every row and nothing is flagged.
Timed: the whole step as the pipeline calls it (``check_translations``: read, every per-row check,
jieba segmentation on all cores, opening each of the 400 distinct images once, the Great Expectations checkpoint with Data Docs, writing clean /
quarantine / summary), in a fresh process so the Great Expectations import is counted too.

Two runs: replicated rows (their strings repeat; the step handles distinct strings once), and the
same with a number appended on both sides so that every text is distinct, as in real data (masks
still repeat in both).

    python -m benchmarks.bench_check_translations [--n 150000] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_manifest(path: str, n: int, seed: int = 0, distinct: bool = False) -> dict:
    import pandas as pd

    from components.data import manifest as mf
    from components.synth import generate

    synth = os.path.join(os.path.dirname(path), "synth")  # the images stay next to the manifest
    generate(synth, n_images=400, seed=seed)              # (the step opens each one once)
    base = mf.read_manifest(os.path.join(synth, "manifest.parquet"))
    reps = -(-n // len(base))
    parts = []
    for r in range(reps):
        part = base.copy()
        part["sample_id"] = [f"{s}_r{r}" for s in base["sample_id"]]
        if distinct:  # a number on both sides makes every text distinct (no check trips on it)
            k0 = r * len(base)
            part["text_en"] = [f"{t} no {k0 + k}" for k, t in enumerate(base["text_en"])]
            part["text_zh"] = [f"{t}{k0 + k}号" for k, t in enumerate(base["text_zh"])]
        parts.append(part)
    df = pd.concat(parts, ignore_index=True).iloc[:n]
    mf.write_manifest(df, path)
    return {"rows": len(df), "base_rows": len(base), "distinct_zh": int(df["text_zh"].nunique()),
            "distinct_en": int(df["text_en"].nunique())}


_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from components.check_translations import check_translations
s = check_translations(sys.argv[1], sys.argv[2])
wall = time.perf_counter() - t0
print(json.dumps({"wall_s": round(wall, 3), "timings_s": s["timings_s"],
                  "rows_in": s["rows_in"], "rows_quarantined": s["rows_quarantined"]}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=150_000, help="rows (default 150000)")
    p.add_argument("--out", default="benchmarks/results/check_translations.json")
    args = p.parse_args(argv)
    from components.text import zh

    load_before = round(os.getloadavg()[0], 2)
    runs = []
    for distinct in (False, True):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "manifest.parquet")
            t0 = time.perf_counter()
            built = build_manifest(path, args.n, distinct=distinct)
            print(f"manifest: {built} in {time.perf_counter() - t0:.1f} s", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", _CHILD, path, os.path.join(d, "out")],
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            process_s = time.perf_counter() - t0
            run = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  step: {run}; process incl. interpreter start {process_s:.1f} s", flush=True)
        runs.append({"texts": "all distinct" if distinct else "replicated", "manifest": built,
                     "step_wall_s": run["wall_s"], "process_s": round(process_s, 3),
                     "rows_per_s": round(built["rows"] / run["wall_s"]),
                     "rows_quarantined": run["rows_quarantined"], "timings_s": run["timings_s"]})
    result = {
        "benchmark": "check_translations: every check + Great Expectations Data Docs on a manifest",
        "date": dt.date.today().isoformat(),
        "machine": {"cores": zh.available_cores(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "load_average_1min_before": load_before},
        "rows": args.n,
        "goal_s": 60.0,
        "runs": runs,
        "note": "rows replicate a 400-image synthetic set with unique sample ids; in the 'all "
                "distinct' run a number on both sides makes every English and Chinese text "
                "distinct (as in real data), masks still repeat. step_wall_s includes importing "
                "Great Expectations (cold import 10-15 s on this machine).",
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
