"""Model benchmarks: parameters/FLOPs per preset, grouped vs per-expression training throughput,
achieved FLOP/s against a measured matmul peak, and CLAF memory/time in both product orders.

    python -m benchmarks.bench_model [--quick] [--out benchmarks/results/model.json]

Writes JSON and prints a table. Each section takes well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

DEFAULT_OUT = os.path.join("benchmarks", "results", "model.json")


def _flops(fn) -> tuple[int, dict[str, int]]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    per_module = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    return fc.get_total_flops(), per_module


def preset_costs(quick: bool) -> list[dict]:
    import torch

    from model import build_model, load_config

    rows = []
    for name in ["small", "paper"]:
        cfg = load_config(name)
        model = build_model(cfg, vocab_size=1000).eval()
        s = cfg.input_size
        x = torch.rand(1, 3, s, s)
        tok = torch.randint(1, 1000, (1, 8))
        ln = torch.tensor([8])
        idx = torch.zeros(1, dtype=torch.long)
        t0 = time.perf_counter()
        with torch.no_grad():
            total, per_mod = _flops(lambda m=model, x=x, tok=tok, ln=ln, idx=idx: m(x, tok, ln, idx))
        dt = time.perf_counter() - t0
        n_all = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_bb = sum(p.numel() for p in model.backbone.parameters())
        top = {k: v for k, v in per_mod.items() if k.count(".") == 1 and k != "Global"}
        for k, v in per_mod.items():  # ModuleDicts (fusion, excitation, ...) are never called
            parent = k.rsplit(".", 1)[0]
            if k.count(".") == 2 and parent not in per_mod:
                top[parent] = top.get(parent, 0) + v
        rows.append({
            "preset": name, "input_size": s, "params": n_all, "trainable_params": n_train,
            "backbone_params": n_bb, "forward_flops_1img_1expr": total,
            "flops_by_module": dict(sorted(top.items(), key=lambda kv: -kv[1])),
            "forward_seconds_cpu_with_counter": round(dt, 2),
        })
        del model
    return rows


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


THROUGHPUT_SETUPS = {
    # the small preset as shipped, backbone frozen
    "small": {"backbone_frozen": True},
    # the small head on a frozen dilated ResNet-50 (OS8): a backbone-dominated cost profile
    "small_head_resnet50_frozen": {"backbone": "resnet50", "backbone_frozen": True,
                                   "backbone_dilation": True},
}


def throughput(quick: bool, peak: float, setup: str = "small") -> dict:
    import torch

    from model import build_model, load_config, segmentation_loss

    cfg = load_config("small", THROUGHPUT_SETUPS[setup])
    model = build_model(cfg, vocab_size=100).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n_img, per = 2, 7
    s = cfg.input_size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n_img, 3, s, s, generator=g)
    n = n_img * per
    tokens = torch.randint(1, 100, (n, 6), generator=g)
    lengths = torch.full((n,), 6)
    masks = (torch.rand(n, 1, s, s, generator=g) > 0.5).float()
    grouped_index = torch.arange(n_img).repeat_interleave(per)
    # per-expression: every expression carries its own copy of the image (backbone runs N times)
    per_images = images[grouped_index]
    per_index = torch.arange(n)

    def step(imgs, idx):
        loss = segmentation_loss(model(imgs, tokens, lengths, idx)["logits"], masks)
        opt.zero_grad()
        loss.backward()
        opt.step()

    steps = 4 if quick else 10
    out = {"setup": setup, "overrides": THROUGHPUT_SETUPS[setup], "images_per_step": n_img,
           "expressions_per_image": per, "input_size": s}
    modes = {"grouped": (images, grouped_index), "per_expression": (per_images, per_index)}
    flops, times = {}, {k: [] for k in modes}
    for name, (imgs, idx) in modes.items():
        step(imgs, idx)
        flops[name], _ = _flops(lambda imgs=imgs, idx=idx: step(imgs, idx))
    # alternate the two modes and take medians: the CPU is shared, load drifts over time
    for _ in range(steps):
        for name, (imgs, idx) in modes.items():
            t0 = time.perf_counter()
            step(imgs, idx)
            times[name].append(time.perf_counter() - t0)
    for name in modes:
        dt = statistics.median(times[name])
        fl = flops[name]
        out[name] = {"seconds_per_step": round(dt, 4), "expressions_per_s": round(n / dt, 1),
                     "flops_per_step": fl, "achieved_gflops": round(fl / dt / 1e9, 2),
                     "share_of_matmul_peak": round(fl / dt / peak, 3)}
    out["speedup_grouped"] = round(out["grouped"]["expressions_per_s"]
                                   / out["per_expression"]["expressions_per_s"], 2)
    # time ~ FLOPs bound: what grouping can give at most for this cost profile
    out["flop_ratio_per_expression_over_grouped"] = round(
        out["per_expression"]["flops_per_step"] / out["grouped"]["flops_per_step"], 2)
    return out


_CLAF_CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from model.claf import CrossLevelAttentiveFusion
order, train = sys.argv[1], sys.argv[2] == "1"
torch.manual_seed(0)
c, hw = 1000, 40
claf = CrossLevelAttentiveFusion(c, c, norm="hw")
ys = [torch.randn(1, c, hw, hw, requires_grad=train) for _ in range(3)]
ls = torch.randn(1, c)
def hwm_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def run():
    if train:
        out = claf(ys, ls, order=order)
        sum(o.sum() for o in out).backward()
        for y in ys:
            y.grad = None
    else:
        with torch.no_grad():
            claf(ys, ls, order=order)
run()  # warm-up: thread pools and allocator caches do not count as CLAF memory
import gc; gc.collect()
try:  # reset the peak-RSS high-water mark (Linux): the torch import must not hide the peak
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset = True
except OSError:
    reset = False
base = hwm_kib()
t0 = time.perf_counter()
run()
dt = time.perf_counter() - t0
peak = hwm_kib()
print(json.dumps({"seconds": dt, "rss_growth_mib": (peak - base) / 1024, "peak_rss_mib": peak / 1024,
                  "hwm_reset": reset}))
"""


def claf_memory() -> dict:
    import torch

    from model.claf import CrossLevelAttentiveFusion

    c, hw, levels = 1000, 1600, 3
    costs = CrossLevelAttentiveFusion.costs([hw] * levels, [hw] * levels, c, c)
    f32 = 4
    analytic = {
        # largest single intermediate per sample
        "cheap_largest_tensor_mib": round(max(c * c, c * hw) * f32 / 2**20, 2),
        "naive_largest_tensor_mib": round(max(hw * hw, c * hw) * f32 / 2**20, 2),
        # what autograd keeps alive for backward (the HW x HW products of every (k, j) pair)
        "naive_saved_hw_by_hw_mib": round(levels * levels * hw * hw * f32 / 2**20, 2),
        "cheap_saved_c_by_c_mib": round(levels * c * c * f32 / 2**20, 2),
    }
    res = {"sizes": {"C": c, "H": 40, "W": 40, "levels": levels}, "multiply_adds": costs,
           "analytic": analytic}
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    threads = str(max(1, min(2, os.cpu_count() or 1)))
    for order in ("cheap", "naive"):
        for train in ("0", "1"):
            r = subprocess.run([sys.executable, "-c", _CLAF_CHILD, order, train, threads],
                               capture_output=True, text=True, env=env, check=True)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            res[f"{order}_{'train' if train == '1' else 'forward'}"] = {
                k: round(v, 3) for k, v in m.items()}
    if torch.cuda.is_available():
        res["cuda"] = _claf_cuda()
    return res


def _claf_cuda() -> dict:
    import torch

    from model.claf import CrossLevelAttentiveFusion

    out = {}
    claf = CrossLevelAttentiveFusion(1000, 1000).cuda()
    ys = [torch.randn(1, 1000, 40, 40, device="cuda", requires_grad=True) for _ in range(3)]
    ls = torch.randn(1, 1000, device="cuda")
    for order in ("cheap", "naive"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        res = claf(ys, ls, order=order)
        sum(o.sum() for o in res).backward()
        torch.cuda.synchronize()
        out[f"{order}_train_peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer timed steps")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--skip-paper", action="store_true", help="skip the paper preset FLOP count")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t_start = time.perf_counter()
    peak = matmul_peak()
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"threads {torch.get_num_threads()}",
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "presets": preset_costs(args.quick) if not args.skip_paper else [],
        "train_throughput": [throughput(args.quick, peak, k) for k in THROUGHPUT_SETUPS],
        "claf_paper_sizes": claf_memory(),
    }
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    _print_table(result)
    print(f"\nwrote {args.out} ({result['wall_seconds']} s); "
          f"maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


def _print_table(r: dict) -> None:
    print(f"matmul peak: {r['matmul_peak_gflops']} GFLOP/s ({r['machine']})")
    print(f"{'preset':8} {'input':>5} {'params':>12} {'trainable':>12} {'GFLOPs fwd':>11}")
    for row in r["presets"]:
        print(f"{row['preset']:8} {row['input_size']:>5} {row['params']:>12,} "
              f"{row['trainable_params']:>12,} {row['forward_flops_1img_1expr'] / 1e9:>11.2f}")
    for t in r["train_throughput"]:
        print(f"\ntraining step, {t['setup']} (frozen backbone), {t['images_per_step']} images x "
              f"{t['expressions_per_image']} expressions, {t['input_size']} px:")
        for k in ("grouped", "per_expression"):
            v = t[k]
            print(f"  {k:15} {v['expressions_per_s']:>8} expr/s  {v['seconds_per_step']:.3f} "
                  f"s/step  {v['achieved_gflops']} GFLOP/s = "
                  f"{100 * v['share_of_matmul_peak']:.1f}% of peak")
        print(f"  grouped speed-up: {t['speedup_grouped']}x "
              f"(FLOP ratio {t['flop_ratio_per_expression_over_grouped']}x)")
    c = r["claf_paper_sizes"]
    print("\nCLAF at C=1000, 40x40, 3 levels (one sample):")
    print(f"  multiply-adds cheap {c['multiply_adds']['cheap'] / 1e9:.1f} G, "
          f"naive {c['multiply_adds']['naive'] / 1e9:.1f} G")
    for k in ("cheap_forward", "naive_forward", "cheap_train", "naive_train"):
        v = c[k]
        print(f"  {k:14} {v['seconds']:.3f} s  peak RSS growth {v['rss_growth_mib']:.0f} MiB")
    print(f"  analytic: {c['analytic']}")
    if "cuda" in c:
        print(f"  cuda: {c['cuda']}")


if __name__ == "__main__":
    raise SystemExit(main())
