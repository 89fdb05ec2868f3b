"""Serving overhead: latency of the registered pyfunc's ``predict`` (PNG bytes + text in, base64
PNG + RLE out) against calling ``model.predict`` directly (decoded image + token ids in,
probability map out), small preset, this CPU.

    python -m benchmarks.bench_register [--calls 50] [--out benchmarks/results/register.json]

The pyfunc is written with ``mlflow.pyfunc.save_model`` (same code as the registered model) and
loaded back with ``mlflow.pyfunc.load_model``; the weights are untrained (latency only).
Calls alternate between the two paths so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime

DEFAULT_OUT = os.path.join("benchmarks", "results", "register.json")
SIZES = [(128, 128), (480, 640)]  # synthetic-set size, photo size (h, w)


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _tokenizer_dir(tmp: str) -> str:
    """Tokenize a small synthetic set; keep what the train step copies to OUT/tokenizer."""
    from components.synth import generate
    from components.tokenize import tokenize

    synth = os.path.join(tmp, "synth")
    generate(synth, n_images=20, seed=1)
    data = os.path.join(tmp, "data")
    tokenize(os.path.join(synth, "manifest.parquet"), data, seed=0)
    out = os.path.join(tmp, "tokenizer")
    os.makedirs(out)
    for f in os.listdir(data):
        p = os.path.join(data, f)
        if os.path.isfile(p) and (f in ("vocab_zh.json", "tokenizer.json") or f.endswith(".txt")):
            shutil.copy(p, os.path.join(out, f))
    return out


def _png(h: int, w: int, seed: int = 0) -> tuple[bytes, object]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    img[h // 5: h // 2, w // 8: w // 3] = (220, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), img


def bench(calls: int, warmup: int = 5) -> dict:
    import mlflow
    import pandas as pd
    import torch

    from components.pyfunc_model import RefSegPredictor, save_pyfunc_model
    from model import build_model, load_config, predict, save_checkpoint

    torch.manual_seed(0)
    tmp = tempfile.mkdtemp(prefix="bench-register-")
    try:
        tok_dir = _tokenizer_dir(tmp)
        with open(os.path.join(tok_dir, "vocab_zh.json"), encoding="utf-8") as fh:
            vocab = json.load(fh)
        cfg = load_config("small")
        net = build_model(cfg, len(vocab)).eval()
        ckpt = os.path.join(tmp, "best.pt")
        save_checkpoint(ckpt, net, cfg, {"lang": "zh", "vocab": "vocab_zh.json"})
        path = save_pyfunc_model(os.path.join(tmp, "pyfunc"), ckpt, tok_dir, "zh",
                                 os.path.join(tmp, "work"))
        t0 = time.perf_counter()
        pyfunc = mlflow.pyfunc.load_model(path)
        load_s = time.perf_counter() - t0
        direct_pred = RefSegPredictor(ckpt, tok_dir)  # the same weights, outside MLflow
        text = "左边的红色方块"
        tokens = direct_pred.tokens(text, "zh", 0)
        rows = []
        for h, w in SIZES:
            raw, img = _png(h, w)
            df = pd.DataFrame({"image": [raw], "text": [text], "lang": ["zh"]})
            for _ in range(warmup):
                predict(direct_pred.net, img, tokens)
                pyfunc.predict(df)
            t_direct, t_pyfunc = [], []
            for _ in range(calls):
                t = time.perf_counter()
                predict(direct_pred.net, img, tokens)
                t_direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                pyfunc.predict(df)
                t_pyfunc.append(time.perf_counter() - t)
            d50, p50 = statistics.median(t_direct), statistics.median(t_pyfunc)
            rows.append({
                "image_hw": [h, w],
                "direct_ms": {"p50": round(d50 * 1e3, 2),
                              "p95": round(_percentile(t_direct, 0.95) * 1e3, 2)},
                "pyfunc_ms": {"p50": round(p50 * 1e3, 2),
                              "p95": round(_percentile(t_pyfunc, 0.95) * 1e3, 2)},
                "overhead_p50_pct": round(100 * (p50 - d50) / d50, 1),
            })
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch threads "
                       f"{torch.get_num_threads()}",
            "preset": "small",
            "input_size": cfg.input_size,
            "calls": calls,
            "pyfunc_load_s": round(load_s, 2),
            "what": "direct = model.predict(net, uint8 image, token ids) -> probabilities; "
                    "pyfunc = PyFuncModel.predict(DataFrame[image PNG bytes, text, lang]) -> "
                    "base64 mask PNG + RLE + score (decode, tokenize, schema checks, encode)",
            "results": rows,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    res = bench(args.calls)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=2)
    print(f"{'image':>10} {'direct p50/p95 ms':>20} {'pyfunc p50/p95 ms':>20} {'overhead':>9}")
    for r in res["results"]:
        print(f"{r['image_hw'][0]:>4}x{r['image_hw'][1]:<5} "
              f"{r['direct_ms']['p50']:>9.1f}/{r['direct_ms']['p95']:<9.1f} "
              f"{r['pyfunc_ms']['p50']:>9.1f}/{r['pyfunc_ms']['p95']:<9.1f} "
              f"{r['overhead_p50_pct']:>8.1f}%")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
