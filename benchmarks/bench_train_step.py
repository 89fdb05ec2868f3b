"""Where a training step's time goes, and how much of the CPU it uses.

    python -m benchmarks.bench_train_step [--presets small,small3] [--threads 1] [--steps 20]
                                          [--out benchmarks/results/train_step.json]

For each preset, on a batch shaped like `make run`'s (``batch_images`` images of the preset's input
size with 8 expressions each, image batching): the FLOPs of one step (forward and backward, counted
with ``torch.utils.flop_counter``), the median seconds of a step (forward, loss, backward, Adam),
the achieved FLOP/s as a share of the machine's fp32 matmul peak at the same thread count (the
1024 x 1024 matmul of ``bench_model.matmul_peak``), and a torch.profiler breakdown: the forward
time of every top-level module, then backward and optimiser. `make run` trains each language on
one thread (two branches side by side on 2 cores), hence the default ``--threads 1``. The load
average is recorded beside each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime

DEFAULT_OUT = os.path.join("benchmarks", "results", "train_step.json")
EXPRESSIONS_PER_IMAGE = 8


def _batch(cfg, batch_images: int, vocab: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    s, n = cfg.input_size, batch_images * EXPRESSIONS_PER_IMAGE
    return {
        "images": torch.rand(batch_images, 3, s, s, generator=g),
        "tokens": torch.randint(2, vocab, (n, 6), generator=g),
        "lengths": torch.full((n,), 6, dtype=torch.long),
        "image_index": torch.arange(batch_images).repeat_interleave(EXPRESSIONS_PER_IMAGE),
        "masks": (torch.rand(n, 1, s, s, generator=g) > 0.8).float(),
    }


def _module_marks(model):
    """record_function ranges around every top-level module's forward (the profiler's labels)."""
    import torch

    handles, open_ranges = [], {}
    for name, mod in model.named_children():
        def pre(_m, _a, name=name):
            open_ranges[name] = torch.profiler.record_function(f"fwd.{name}")
            open_ranges[name].__enter__()

        def post(_m, _a, _o, name=name):
            open_ranges.pop(name).__exit__(None, None, None)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles


def measure(preset: str, steps: int, threads: int, peak: float) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from components.training.config import load_run_config
    from model import build_model, segmentation_loss

    torch.set_num_threads(threads)
    cfg, tcfg, _ = load_run_config(preset)
    model = build_model(cfg, vocab_size=200).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b = _batch(cfg, int(tcfg.batch_images), 200)

    def step():
        with torch.profiler.record_function("forward+loss"):
            out = model(b["images"], b["tokens"], b["lengths"], b["image_index"])
            loss = segmentation_loss(out["logits"], b["masks"])
        opt.zero_grad(set_to_none=True)
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            opt.step()

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    handles = _module_marks(model)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    for h in handles:
        h.remove()
    parts = {e.key: round(e.cpu_time_total / 3 / 1e3, 2) for e in prof.key_averages()
             if e.key.startswith(("fwd.", "forward+loss", "backward", "optimizer"))}
    return {
        "preset": preset, "input_size": cfg.input_size, "levels": list(cfg.levels),
        "batch_images": int(tcfg.batch_images), "expressions": int(b["tokens"].shape[0]),
        "threads": threads, "gflop_per_step": round(flops / 1e9, 3),
        "seconds_per_step": round(sec, 4), "achieved_gflops": round(flops / sec / 1e9, 2),
        "share_of_matmul_peak": round(flops / sec / peak, 3), "ms_by_part": parts,
        "load_average": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", default="small,small3", help="comma-separated presets")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as make run)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per preset")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON result file")
    args = p.parse_args(argv)

    import torch

    from benchmarks.bench_model import matmul_peak

    torch.set_num_threads(args.threads)
    peak = matmul_peak()
    rows = [measure(name, args.steps, args.threads, peak)
            for name in args.presets.split(",") if name.strip()]
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "threads": args.threads,
              "matmul_peak_gflops": round(peak / 1e9, 2), "presets": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"fp32 matmul peak on {args.threads} thread(s): {peak / 1e9:.1f} GFLOP/s")
    for r in rows:
        print(f"{r['preset']:8s} {r['gflop_per_step']:8.2f} GFLOP/step  {r['seconds_per_step']:.3f}"
              f" s/step  {r['achieved_gflops']:.1f} GFLOP/s = {100 * r['share_of_matmul_peak']:.0f}%"
              f" of peak  (load {r['load_average']})")
        for k, v in sorted(r["ms_by_part"].items(), key=lambda kv: -kv[1]):
            print(f"    {k:24s} {v:9.2f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
