"""Peak memory of one prediction: the peak RSS (``VmHWM``, with ``resource.getrusage``'s
``ru_maxrss`` beside it) of a fresh process that runs ``refseg predict`` (decode, predict, mask and overlay files) or the served
model's predictor (``RefSegPredictor.predict_frame``, what the pyfunc runs) on one image, for a
4000x3000 JPEG and PNG, on this checkout and on a baseline revision (the code before decoding was
bounded), with the 1-minute load average beside each figure.

    python -m benchmarks.bench_predict_memory [--before REV] [--out benchmarks/results/predict_memory.json]

``--before ''`` skips the baseline. The network is the default preset (``small3``, input 96 px),
untrained: memory does not depend on the weights. Extra cases on this checkout only: a tiny image
(the process's own floor: Python, torch, the model), a PNG just under the default pixel limit (the
worst case: PNG has no reduced-scale decoding) and a 12000x12000 grey PNG over the limit (refused
from its header).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime

DEFAULT_OUT = os.path.join("benchmarks", "results", "predict_memory.json")
# The last commit before bounded decoding (pixel limit, reduced decode of PNG, strip-wise masks).
BASELINE_REV = "2afdb0b"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "左边的红色方块"

# A fresh interpreter per case: argv = mode, checkpoint, tokenizer, image, out, text.
_CHILD = r"""
import json, os, resource, sys, time
mode, ckpt, tok, image, out, text = sys.argv[1:7]
t0 = time.perf_counter()
if mode == "cli":
    from pipelines.cli import main
    rc = main(["predict", "--model", ckpt, "--tokenizer", tok, "--image", image,
               "--text", text, "--lang", "zh", "--out", out, "--quiet"])
else:
    import pandas as pd
    from components.serving.predictor import RefSegPredictor
    pred = RefSegPredictor(ckpt, tok, device="cpu")
    raw = open(image, "rb").read()
    try:
        res = pred.predict_frame(pd.DataFrame({"image": [raw], "text": [text]}))
        rc = 0
    except Exception as exc:
        print(f"refused: {exc}", file=sys.stderr)
        rc = 1
hwm = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0]
print("RESULT " + json.dumps({"rc": rc, "seconds": time.perf_counter() - t0, "vmhwm_mib": hwm / 1024,
      "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _write_scene(path: str, h: int, w: int, fmt: str, grey: bool = False) -> int:
    """A photo-like scene (gradient, two shapes, mild noise) written as ``fmt``; its size in
    bytes. ``grey``: a flat grey image (compresses to almost nothing: a decompression bomb)."""
    import numpy as np
    from PIL import Image

    if grey:
        Image.new("L", (w, h), 128).save(path, format=fmt)
        return os.path.getsize(path)
    rng = np.random.default_rng(0)
    img = np.empty((h, w, 3), dtype=np.uint8)
    xx = np.arange(w, dtype=np.float32)
    for r0 in range(0, h, 500):  # in bands: a 50 M pixel float scene would need 600 MB
        yy = np.arange(r0, min(h, r0 + 500), dtype=np.float32)[:, None]
        band = np.stack(np.broadcast_arrays(60 + 80 * yy / h, 90 + 60 * xx / w,
                                            120 - 40 * yy / h + 0 * xx), -1)
        band[((yy - 0.6 * h) ** 2 + (xx - 0.7 * w) ** 2 < (0.15 * min(h, w)) ** 2)] = (30, 40,
                                                                                       210)
        band += rng.normal(0, 3, band.shape).astype(np.float32)
        img[r0:r0 + len(yy)] = band.clip(0, 255).astype(np.uint8)
    img[h // 5: h // 2, w // 8: w // 3] = (220, 30, 30)
    Image.fromarray(img).save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return os.path.getsize(path)


def _model(tmp: str) -> tuple[str, str]:
    """The default preset, untrained, with a real tokenizer: (checkpoint, tokenizer folder)."""
    from benchmarks.bench_register import _tokenizer_dir
    from components.text.tokenizer import FINGERPRINT_KEY, vocab_fingerprint
    from model import build_model, load_config, save_checkpoint

    tok = _tokenizer_dir(tmp)
    with open(os.path.join(tok, "vocab_zh.json"), encoding="utf-8") as fh:
        vocab = json.load(fh)
    cfg = load_config("small3")
    ckpt = os.path.join(tmp, "best.pt")
    save_checkpoint(ckpt, build_model(cfg, len(vocab)), cfg,
                    {"lang": "zh", "vocab": "vocab_zh.json",
                     FINGERPRINT_KEY: vocab_fingerprint(vocab)})
    return ckpt, tok


def _measure(code: str, mode: str, ckpt: str, tok: str, image: str, out: str) -> dict:
    """One case in a fresh process whose ``components`` and ``model`` come from ``code``."""
    env = dict(os.environ, PYTHONPATH=code, OMP_NUM_THREADS="1", REFSEG_DEVICE="cpu")
    env.pop("REFSEG_MAX_PIXELS", None)
    load = os.getloadavg()[0]
    res = subprocess.run([sys.executable, "-c", _CHILD, mode, ckpt, tok, image, out, TEXT], env=env,
                         cwd=code, capture_output=True, text=True, timeout=900)
    if "RESULT " not in res.stdout:
        raise RuntimeError(f"{mode} {image} failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.split("RESULT ", 1)[1])
    err = [x.replace(os.path.dirname(image), "<tmp>") for x in res.stderr.splitlines()
           if "error" in x or "refused" in x]
    return {"rc": r["rc"], "peak_rss_mib": round(r["vmhwm_mib"]),
            "ru_maxrss_mib": round(r["maxrss_mib"]), "seconds": round(r["seconds"], 1),
            "load_1min": round(load, 2), **({"message": err[-1]} if r["rc"] and err else {})}


def _baseline(rev: str, tmp: str) -> str:
    """The code of ``rev`` (``git archive``: model, components, pipelines) in a folder."""
    path = os.path.join(tmp, "baseline")
    os.makedirs(path)
    tar = subprocess.run(["git", "-C", ROOT, "archive", rev, "model", "components", "pipelines"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", path], input=tar, check=True)
    return path


WHAT = ("peak_rss_mib = VmHWM of a fresh process (its own peak resident set); ru_maxrss_mib = "
        "its resource.getrusage ru_maxrss (equal when launched from a small process: Linux "
        "carries the launcher's figure across exec); cli = refseg predict with a local "
        "checkpoint (decode, predict, write mask + overlay); predictor = "
        "RefSegPredictor.predict_frame on one row (what the pyfunc runs: decode, predict, "
        "base64 mask PNG + RLE); load_1min = the 1-minute load average when the case started")
IMAGES = {  # name: (h, w, format, flat grey)
    "tiny_png": (48, 64, "PNG", False),
    "jpeg_4000x3000": (3000, 4000, "JPEG", False),
    "png_4000x3000": (3000, 4000, "PNG", False),
    "png_8160x6120": (6120, 8160, "PNG", False),
    "grey_png_12000x12000": (12000, 12000, "PNG", True),
}


def setup(tmp: str) -> dict:
    """The model, the tokenizer and the images under ``tmp``; written to ``tmp/setup.json``."""
    import torch

    ckpt, tok = _model(tmp)
    images = {}
    for name, (h, w, fmt, grey) in IMAGES.items():
        path = os.path.join(tmp, f"{name}.{fmt.lower()}")
        images[name] = {"path": path, "hw": [h, w], "format": fmt,
                        "bytes": _write_scene(path, h, w, fmt, grey)}
    done = {"checkpoint": ckpt, "tokenizer": tok, "images": images, "torch": torch.__version__}
    with open(os.path.join(tmp, "setup.json"), "w", encoding="utf-8") as fh:
        json.dump(done, fh)
    return done


def bench(before: str) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-predict-memory-")
    try:
        # in another process: this one stays small (a launcher's memory must not count)
        subprocess.run([sys.executable, "-m", "benchmarks.bench_predict_memory", "--setup", tmp],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=True)
        with open(os.path.join(tmp, "setup.json"), encoding="utf-8") as fh:
            done = json.load(fh)
        ckpt, tok, images = done["checkpoint"], done["tokenizer"], done["images"]
        codes = {"after": ROOT}
        if before:
            try:
                codes = {"before": _baseline(before, tmp), "after": ROOT}
            except (OSError, subprocess.CalledProcessError) as exc:  # no git, or no such commit
                print(f"baseline {before} not measured: {exc}", file=sys.stderr)
                before = ""
        # (image, the code versions measured): the large or refused ones on this checkout only
        plan = [("tiny_png", list(codes)), ("jpeg_4000x3000", list(codes)),
                ("png_4000x3000", list(codes)), ("png_8160x6120", ["after"]),
                ("grey_png_12000x12000", ["after"])]
        rows = []
        for name, versions in plan:
            for mode in ("cli", "predictor"):
                row = {"image": name, **{k: images[name][k] for k in ("hw", "format", "bytes")},
                       "path": mode}
                for v in versions:
                    out = os.path.join(tmp, f"out-{v}-{mode}-{name}.png")
                    row[v] = _measure(codes[v], mode, ckpt, tok, images[name]["path"], out)
                    print(name, mode, v, row[v], flush=True)
                rows.append(row)
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch "
                       f"{done['torch']}, one thread, no GPU",
            "preset": "small3 (input 96 px), untrained",
            "before_rev": before or None,
            "what": WHAT,
            "results": rows,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BASELINE_REV,
                    help="git revision measured as the baseline ('' to skip; default %(default)s)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--setup", default=None, help=argparse.SUPPRESS)  # internal: the setup step
    args = ap.parse_args(argv)
    if args.setup:
        setup(args.setup)
        return 0
    res = bench(args.before)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=2)
    print(f"{'image':<22} {'path':<10} " + " ".join(f"{v:>26}" for v in ("before", "after")))
    for r in res["results"]:
        cells = []
        for v in ("before", "after"):
            m = r.get(v)
            cells.append(f"{m['peak_rss_mib']:>7} MiB rc {m['rc']} load {m['load_1min']:>4}"
                         if m else f"{'-':>26}")
        print(f"{r['image']:<22} {r['path']:<10} " + " ".join(f"{c:>26}" for c in cells))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
