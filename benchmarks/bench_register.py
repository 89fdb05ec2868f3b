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
# (h, w, format): the synthetic set's PNG size; a photo-sized JPEG (RefCOCO images are JPEG)
CASES = [(128, 128, "PNG"), (480, 640, "JPEG")]
_DEFAULT_THREADS: int | None = None


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


def _scene(h: int, w: int, fmt: str, seed: int = 0) -> tuple[bytes, object]:
    """A photo-like scene: smooth gradient, two shapes, mild sensor noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.stack([60 + 80 * yy / h, 90 + 60 * xx / w, 120 - 40 * yy / h], -1)
    img[h // 5: h // 2, w // 8: w // 3] = (220, 30, 30)
    img[(yy - 0.6 * h) ** 2 + (xx - 0.7 * w) ** 2 < (0.15 * min(h, w)) ** 2] = (30, 40, 210)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue(), img


def bench(calls: int, warmup: int = 5, threads: int | None = None) -> dict:
    import mlflow
    import pandas as pd
    import torch

    from components.serving.predictor import RefSegPredictor
    from components.serving.pyfunc import save_pyfunc_model
    from components.serving.requests import decode_image
    from model import build_model, load_config, predict, save_checkpoint

    torch.manual_seed(0)
    global _DEFAULT_THREADS
    _DEFAULT_THREADS = _DEFAULT_THREADS or torch.get_num_threads()
    torch.set_num_threads(threads or _DEFAULT_THREADS)
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
        for h, w, fmt in CASES:
            raw, _ = _scene(h, w, fmt)
            img = decode_image(raw)
            df = pd.DataFrame({"image": [raw], "text": [text], "lang": ["zh"]})
            paths = {
                "direct": lambda img=img: predict(direct_pred.net, img, tokens),
                "direct_with_decode": lambda raw=raw: predict(direct_pred.net, decode_image(raw),
                                                              tokens),
                "pyfunc": lambda df=df: pyfunc.predict(df),
            }
            times: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(warmup):
                for fn in paths.values():
                    fn()
            for _ in range(calls):  # interleaved: every path sees the same machine load
                for k, fn in paths.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
            row = {"image_hw": [h, w], "format": fmt}
            for k, ts in times.items():
                row[f"{k}_ms"] = {"p50": round(statistics.median(ts) * 1e3, 2),
                                  "p95": round(_percentile(ts, 0.95) * 1e3, 2)}
            p50 = {k: statistics.median(ts) for k, ts in times.items()}
            row["overhead_p50_ms"] = round((p50["pyfunc"] - p50["direct"]) * 1e3, 2)
            row["overhead_vs_direct_pct"] = round(100 * (p50["pyfunc"] / p50["direct"] - 1), 1)
            row["overhead_vs_direct_with_decode_pct"] = round(
                100 * (p50["pyfunc"] / p50["direct_with_decode"] - 1), 1)
            rows.append(row)
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch threads "
                       f"{torch.get_num_threads()}",
            "preset": "small",
            "input_size": cfg.input_size,
            "calls": calls,
            "pyfunc_load_s": round(load_s, 2),
            "what": "direct = model.predict(net, decoded uint8 image, token ids) -> "
                    "probabilities at the image size; direct_with_decode = the same plus "
                    "decoding the encoded image (PIL, full size); pyfunc = "
                    "PyFuncModel.predict(DataFrame[image bytes, text, lang]) -> base64 mask PNG "
                    "+ RLE + score (decode, tokenize, schema checks, threshold, encode)",
            "results": rows,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", default="0,1",
                    help="comma-separated torch thread counts to run, 0 = torch's default "
                         "(default %(default)s: the 1-thread run is steadier on a shared CPU)")
    args = ap.parse_args(argv)
    runs = [bench(args.calls, threads=int(t) or None) for t in args.threads.split(",")]
    res = {k: runs[0][k] for k in ("date", "preset", "input_size", "calls", "what")}
    res["runs"] = [{k: r[k] for k in ("machine", "pyfunc_load_s", "results")} for r in runs]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=2)
    for run in res["runs"]:
        print(run["machine"])
        print(f"{'image':>15} {'direct p50/p95':>16} {'+decode p50/p95':>16} "
              f"{'pyfunc p50/p95':>16} {'added':>7} {'vs direct':>10} {'vs +decode':>10}")
        for r in run["results"]:
            cells = [f"{r[k]['p50']:.1f}/{r[k]['p95']:.1f}"
                     for k in ("direct_ms", "direct_with_decode_ms", "pyfunc_ms")]
            print(f"{r['image_hw'][0]:>4}x{r['image_hw'][1]:<4} {r['format']:<5} "
                  f"{cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {r['overhead_p50_ms']:>5.1f}ms "
                  f"{r['overhead_vs_direct_pct']:>9.1f}% "
                  f"{r['overhead_vs_direct_with_decode_pct']:>9.1f}%")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
