"""Benchmark of the evaluation's DenseCRF stage: images per second on one core versus all cores,
crop mode versus full-image CRF (speed and IoU), and the share of an evaluation spent in CRF.

Inputs are synthetic 320 x 320 scenes (one or two textured ellipses on a textured background) with
a blurred, shifted, noisy "prediction" of one object: the kind of soft response map the network
gives, at the paper's input size. The share of evaluation time is measured with the real ``small``
network on CPU (one forward per image with three expressions) against the CRF of those expressions.

    python -m benchmarks.bench_evaluate [--images 48] [--out benchmarks/results/evaluate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def scene(seed: int, size: int = 320):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.array([90, 110, 130]) + rng.integers(-30, 30, 3) + rng.normal(0, 10, (size, size, 3))
    img = img + 15 * np.sin(xx / rng.uniform(8, 20))[..., None]
    gt = None
    for k in range(2):
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        ry, rx = rng.uniform(0.08, 0.2, 2) * size
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img[m] = np.array([200, 60, 50]) + rng.integers(-40, 40, 3) + rng.normal(0, 8, (m.sum(), 3))
        if k == 0:
            gt = m
    img = np.clip(img, 0, 255).astype(np.uint8)
    soft = gaussian_filter(gt.astype(float), rng.uniform(4, 10))
    shift = rng.integers(-8, 9, 2)
    soft = np.roll(soft, tuple(int(s) for s in shift), axis=(0, 1))
    prob = np.clip(0.1 + 0.8 * soft + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    return img, prob, gt


def _throughput(images, probs, params, workers: int) -> tuple[float, list, float, float]:
    """(images per second, masks, pool start seconds, mean wall seconds of one CRF call inside a
    worker) with a pool started before the clock. If the per-call time grows with the number of
    workers, the cores were not free (other load), not the pool's fault."""
    from components.evaluation.crf import CRFPool

    t = time.perf_counter()
    with CRFPool(params, workers=workers) as pool:
        # start the workers (imports) outside the measured time: evaluate keeps one pool per run
        pool.result(pool.submit(images[0], [probs[0]]))
        start = time.perf_counter() - t
        t = time.perf_counter()
        tickets = [pool.submit(img, [p]) for img, p in zip(images, probs, strict=True)]
        results = [pool.result(k) for k in tickets]
        ips = len(images) / (time.perf_counter() - t)
    masks = [r[0][0] for r in results]
    per_call = float(np.mean([r[1][0] for r in results]))
    return ips, masks, start, per_call


def bench_crf(n: int) -> dict:
    from components.evaluation.crf import CRFParams, available_cores
    from components.evaluation.metrics import intersection_union, summarize

    data = [scene(s) for s in range(n)]
    images, probs, gts = [d[0] for d in data], [d[1] for d in data], [d[2] for d in data]
    cores = available_cores()
    full, crop = CRFParams(mode="full"), CRFParams(mode="crop")
    load_before = os.getloadavg()[0]
    ips_1, masks_full, _, call_1 = _throughput(images, probs, full, 1)
    ips_all, masks_full_all, start_s, call_all = _throughput(images, probs, full, cores)
    identical = all(np.array_equal(a, b) for a, b in zip(masks_full, masks_full_all, strict=True))
    ips_crop_1, masks_crop, _, _ = _throughput(images, probs, crop, 1)
    ips_crop_all, _, _, _ = _throughput(images, probs, crop, cores)

    def metrics(masks):
        iu = [intersection_union(m, g) for m, g in zip(masks, gts, strict=True)]
        return summarize([i for i, _ in iu], [u for _, u in iu])

    base = metrics([p > 0.5 for p in probs])
    m_full, m_crop = metrics(masks_full), metrics(masks_crop)
    agree = [intersection_union(a, b) for a, b in zip(masks_full, masks_crop, strict=True)]
    return {
        "images": n,
        "image_size": 320,
        "cores": cores,
        "load_average_1min_before": round(load_before, 2),
        "pool_start_s": round(start_s, 3),
        "full": {"images_per_s_1_core": round(ips_1, 2), "images_per_s_all_cores": round(ips_all, 2),
                 "speedup_all_vs_1": round(ips_all / ips_1, 2),
                 "parallel_efficiency": round(ips_all / ips_1 / cores, 3),
                 "identical_1_vs_all": identical,
                 "seconds_per_call_1_process": round(call_1, 4),
                 "seconds_per_call_all_processes": round(call_all, 4)},
        "crop": {"images_per_s_1_core": round(ips_crop_1, 2),
                 "images_per_s_all_cores": round(ips_crop_all, 2),
                 "speedup_vs_full_1_core": round(ips_crop_1 / ips_1, 2)},
        "overall_iou": {"no_crf": round(base["overall_iou"], 4),
                        "crf_full": round(m_full["overall_iou"], 4),
                        "crf_crop": round(m_crop["overall_iou"], 4),
                        "crop_minus_full": round(m_crop["overall_iou"] - m_full["overall_iou"], 5)},
        "mean_iou": {"no_crf": round(base["mean_iou"], 4), "crf_full": round(m_full["mean_iou"], 4),
                     "crf_crop": round(m_crop["mean_iou"], 4)},
        "crop_vs_full_mask_agreement_iou": round(
            sum(i for i, _ in agree) / max(1, sum(u for _, u in agree)), 5),
    }


def bench_share(n_images: int, input_size: int = 320) -> dict:
    """Forward of the small network (one pass per image, 3 expressions) vs CRF of those masks."""
    import torch

    from components.evaluation.crf import CRFParams, refine
    from model import build_model, forward, load_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CRF runs on one core per process; compare like with like
    cfg = load_config("small", {"input_size": input_size})
    model = build_model(cfg, vocab_size=50).eval()
    data = [scene(s) for s in range(n_images)]
    tokens = torch.randint(2, 50, (3, 6))
    lengths = torch.full((3,), 6)
    index = torch.zeros(3, dtype=torch.long)
    fwd = crf_s = 0.0
    with torch.no_grad():
        for img, prob, _ in data:
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            t = time.perf_counter()
            forward(model, x, tokens, lengths, index, return_attention=True)
            fwd += time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(3):
                refine(img, prob, CRFParams())
            crf_s += time.perf_counter() - t
    torch.set_num_threads(threads)
    return {"preset": "small", "input_size": input_size, "images": n_images,
            "expressions_per_image": 3, "torch_threads": 1,
            "forward_s_per_image": round(fwd / n_images, 4),
            "crf_s_per_image": round(crf_s / n_images, 4),
            "crf_share_single_process": round(crf_s / (crf_s + fwd), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--share-images", type=int, default=8)
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "evaluate.json"))
    args = p.parse_args(argv)
    import torch

    t0 = time.perf_counter()
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, python "
                   f"{platform.python_version()}, torch {torch.__version__}",
        "crf": bench_crf(args.images),
        "evaluation_share": bench_share(args.share_images),
    }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)
        fh.write("\n")
    json.dump(res, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
