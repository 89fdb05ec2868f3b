"""Benchmark of the tokenize step's Chinese path: segment + encode 150,000 expressions.

The corpus is built procedurally from referring-expression templates (positions, colours, clothing,
COCO objects, relations) with about 40% duplicate strings, as real datasets have, and lengths near
UNC's 5.6 jieba words. Timed: normalisation + jieba segmentation of the distinct strings on all
cores (``components.text.zh.segment_many``) + vocabulary from an 80% "train" part + encoding every row
to [N, 30] ids (``components.text.vocab.build_vocab`` / ``encode``), the functions the step uses.
Also timed apart: the same on one core, and loading a 50,000 x 256 word2vec text file with gensim.

    python -m benchmarks.bench_tokenize [--n 150000] [--vectors 50000] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

POS = ["左边", "右边", "中间", "前面", "后面", "左上角", "右下角", "最左边", "最右边", "靠近镜头",
       "远处", "桌子上", "草地上", "角落里"]
COLOURS = ["红色", "白色", "黑色", "蓝色", "深蓝色", "浅绿色", "黄色", "灰色", "米白色", "粉色",
           "棕色", "紫色", "橙色", "条纹"]
CLOTHES = ["衬衫", "外套", "T恤", "裙子", "帽子", "夹克", "毛衣", "裤子", "背心", "眼镜"]
PEOPLE = ["男人", "女人", "男孩", "女孩", "小孩", "老人", "球员", "人"]
OBJECTS = ["椅子", "长颈鹿", "斑马", "大象", "汽车", "公交车", "自行车", "沙发", "杯子", "甜甜圈",
           "披萨", "雨伞", "手提包", "滑板", "冲浪板", "泰迪熊", "花瓶", "时钟", "碗", "香蕉",
           "西兰花", "马", "羊", "狗", "猫", "电视", "笔记本电脑", "停车标志", "红绿灯", "盆栽"]
VERBS = ["穿着", "戴着", "拿着", "骑着", "坐在", "站在"]
ADJ = ["大", "小", "高", "矮", "半个", "最近的", "最远的", "第二个"]
NUM = ["一", "两", "三"]


def _expression(rng: np.random.Generator) -> str:
    c = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    k = int(rng.integers(10))
    if k >= 7:  # short ones, as many real expressions are ("left girl", "red car")
        return f"{c(POS + COLOURS)}{c(['', '的'])}{c(OBJECTS + PEOPLE)}"
    if k == 0:
        return f"{c(POS)}的{c(COLOURS)}{c(OBJECTS)}"
    if k == 1:
        return f"{c(VERBS)}{c(COLOURS)}{c(CLOTHES)}的{c(PEOPLE)}"
    if k == 2:
        return f"{c(POS)}{c(VERBS)}{c(COLOURS)}{c(CLOTHES)}的{c(PEOPLE)}"
    if k == 3:
        return f"{c(COLOURS)}{c(OBJECTS)}{c(POS)}的那{c(['个', '只', '辆', '把'])}{c(OBJECTS)}"
    if k == 4:
        return f"{c(ADJ)}{c(OBJECTS)}"
    if k == 5:
        return f"{c(POS)}的{c(PEOPLE)}，{c(VERBS)}{c(OBJECTS)}旁边"
    return f"{c(NUM)}个{c(OBJECTS)}中{c(POS)}的那个"


def corpus(n: int, dup_share: float = 0.4, seed: int = 0) -> list[str]:
    """``n`` expressions of which about ``dup_share`` repeat an earlier one."""
    rng = np.random.default_rng(seed)
    n_unique = int(round(n * (1 - dup_share)))
    uniq: dict[str, None] = {}
    while len(uniq) < n_unique:
        uniq[_expression(rng)] = None
    pool = list(uniq)
    # short, common expressions repeat more often than long ones ("left man", "red car")
    weight = np.exp(-np.array([len(t) for t in pool]) / 2.2)
    extra = [pool[int(i)] for i in rng.choice(len(pool), size=n - len(pool), p=weight / weight.sum())]
    out = pool + extra
    rng.shuffle(out)
    return out


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the pool's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _segment_encode(texts: list[str], workers: int) -> dict:
    from components.text import zh
    from components.text.vocab import build_vocab, encode

    zh.get_tokenizer()  # dictionary loading is a one-off, not per batch
    cpu0 = _cpu()
    t0 = time.perf_counter()
    toks = zh.segment_many(texts, workers=workers)
    t1 = time.perf_counter()
    n_train = int(len(toks) * 0.8)
    itos, _ = build_vocab(toks[:n_train])
    stoi = {w: i for i, w in enumerate(itos)}
    ids, lengths, truncated = encode(toks, stoi, 30)
    t2 = time.perf_counter()
    cpu = _cpu() - cpu0
    return {"workers": workers, "cpu_s": round(cpu, 3), "segment_s": round(t1 - t0, 3), "vocab_encode_s": round(t2 - t1, 3),
            "total_s": round(t2 - t0, 3), "expressions_per_s": round(len(texts) / (t2 - t0)),
            "vocab_size": len(itos), "avg_words": round(float(lengths.mean()), 3),
            "truncated": truncated, "shape": list(ids.shape)}


def _vector_load(n_words: int, dim: int) -> dict:
    from components.text.vectors import load_vectors

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "w2v.txt")
        vec = rng.normal(0, 0.3, size=(n_words, dim)).astype(np.float32)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"{n_words} {dim}\n")
            for i in range(n_words):
                fh.write(f"词{i} " + " ".join(f"{x:.5f}" for x in vec[i]) + "\n")
        size_mb = path.stat().st_size / 2**20
        t0 = time.perf_counter()
        kv, fmt = load_vectors(str(path), expected_dim=dim)
        secs = time.perf_counter() - t0
        binary = Path(d, "w2v.bin")
        kv.save_word2vec_format(str(binary), binary=True)
        t0 = time.perf_counter()
        kv_bin, fmt_bin = load_vectors(str(binary), expected_dim=dim)
        secs_bin = time.perf_counter() - t0
        binary_mb = binary.stat().st_size / 2**20
        assert fmt_bin == "w2v-binary" and len(kv_bin) == n_words
    return {"words": n_words, "dim": dim, "format": fmt, "file_mb": round(size_mb, 1),
            "load_s": round(secs, 3), "loaded": len(kv),
            "binary_file_mb": round(binary_mb, 1),
            "binary_load_s": round(secs_bin, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=150_000, help="expressions (default 150000)")
    p.add_argument("--vectors", type=int, default=50_000, help="words in the vector file")
    p.add_argument("--dim", type=int, default=256, help="vector dimension")
    p.add_argument("--out", default="benchmarks/results/tokenize.json")
    args = p.parse_args(argv)
    from components.text import zh

    load_before = round(os.getloadavg()[0], 2)
    texts = corpus(args.n)
    n_unique = len(set(texts))
    print(f"corpus: {len(texts)} expressions, {n_unique} distinct "
          f"({1 - n_unique / len(texts):.0%} duplicates)", flush=True)
    cores = zh.available_cores()
    runs = [_segment_encode(texts, cores)]
    print(f"  all cores ({cores}): {runs[-1]}", flush=True)
    if cores > 1:
        runs.append(_segment_encode(texts, 1))
        print(f"  one core: {runs[-1]}", flush=True)
    vec = _vector_load(args.vectors, args.dim)
    print(f"  vectors: {vec}", flush=True)
    result = {
        "benchmark": "tokenize: segment + encode Chinese expressions",
        "date": dt.date.today().isoformat(),
        "machine": {"cores": cores, "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    "load_average_1min_before": load_before},
        "expressions": len(texts),
        "distinct": n_unique,
        "duplicate_share": round(1 - n_unique / len(texts), 3),
        "goal_s": 20.0,
        "runs": runs,
        "vector_loading": vec,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
