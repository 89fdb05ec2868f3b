"""How much `kfp.local` adds over calling the same steps directly.

Both paths run the same work on the same tiny synthetic dataset, each in a fresh Python process
(so both pay their own imports): check translations, tokenize, then per language train, evaluate
(with DenseCRF) and register in MLflow (SQLite). *direct* calls the ``components`` functions one
after another in one process; *kfp.local* runs the compiled DAG with ``SubprocessRunner``, which
starts one process per task and moves artifacts between task folders. The two are run alternately
(``--repeats`` pairs) and the medians are compared. Writes ``benchmarks/results/pipeline.json``.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

TINY = """\
base: small
input_size: 64
backbone_widths: [8, 16, 16, 32]
c_v: 32
c_l: 32
c_m: 32
convlstm_hidden: 16
"""

DIRECT = textwrap.dedent("""
    import os, sys, time
    root, manifest, cfg, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t0 = time.time()
    from pipelines.local_run import ensure_experiment, mlflow_uri_for
    uri = mlflow_uri_for(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    ensure_experiment(uri, os.path.join(root, "mlartifacts"))
    from components.check_translations import check_translations
    from components.evaluate import evaluate
    from components.register import register
    from components.tokenize import tokenize
    from components.train import train
    check_translations(manifest, os.path.join(root, "check"))
    tok = os.path.join(root, "tok")
    tokenize(os.path.join(root, "check", "clean.parquet"), tok, seed=0)
    for lang in ("zh", "en"):
        out = os.path.join(root, "train-" + lang)
        s = train(tok, lang, config=cfg, out_dir=out, steps=steps, seed=0, quiet=True)
        evaluate(os.path.join(out, "checkpoints", "best.pt"), tok, split="val", crf=True,
                 out_dir=os.path.join(root, "eval-" + lang), run_id=s["run_id"])
        register(s["run_id"], margin=0.0, floor=0.0)
    print("direct-seconds", round(time.time() - t0, 2))
""")

LOCAL = textwrap.dedent("""
    import sys, time
    root, manifest, cfg, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t0 = time.time()
    from pipelines.local_run import run_pipeline
    run_pipeline(manifest, root=root, languages=["zh", "en"], config=cfg, steps=steps,
                 crf=True, seed=0, floor=0.0)
    print("local-seconds", round(time.time() - t0, 2))
""")


def _time(script: str, *args: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24, help="synthetic scenes (default 24)")
    p.add_argument("--steps", type=int, default=8, help="training steps per language (default 8)")
    p.add_argument("--repeats", type=int, default=2, help="pairs of runs (default 2)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "pipeline.json"))
    args = p.parse_args(argv)

    from components.synth import generate

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        data = os.path.join(tmp, "data")
        generate(data, n_images=args.images, seed=5)
        manifest = os.path.join(data, "manifest.parquet")
        cfg = os.path.join(tmp, "tiny.yaml")
        with open(cfg, "w") as fh:
            fh.write(TINY)
        direct, local = [], []
        for i in range(args.repeats):
            direct.append(_time(DIRECT, os.path.join(tmp, f"direct{i}"), manifest, cfg,
                                str(args.steps)))
            local.append(_time(LOCAL, os.path.join(tmp, f"local{i}"), manifest, cfg,
                               str(args.steps)))
            print(f"pair {i + 1}: direct {direct[-1]:.1f} s, kfp.local {local[-1]:.1f} s",
                  flush=True)
    d, lo = statistics.median(direct), statistics.median(local)
    doc = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "images": args.images, "train_steps": args.steps, "tasks": 9,
        "direct_seconds": [round(x, 1) for x in direct],
        "kfp_local_seconds": [round(x, 1) for x in local],
        "direct_median_s": round(d, 1), "kfp_local_median_s": round(lo, 1),
        "added_s": round(lo - d, 1), "added_per_task_s": round((lo - d) / 8, 2),
        "ratio": round(lo / d, 2),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=2)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
