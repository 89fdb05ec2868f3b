"""A procedural bilingual referring-segmentation dataset (the embedded default and the tests).

Each scene holds 2-6 coloured shapes on a noisy background, often with same-category distractors (as
in G-Ref). Targets get several English and Chinese expressions drawn from varied templates:
attributes ("the red circle" / "红色的圆形"), absolute position ("the circle on the left" /
"左边的圆形"), and relations ("the circle left of the blue square" / "蓝色正方形左边的圆形").
Every expression is checked against the scene so that it names exactly one object: only the
expression says which object is meant. Deterministic by seed.

Splits by image: train / val / testA (scenes with at most 3 objects) / testB (4 or more).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from components import manifest as mf
from components import storage

SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形"}
COLOURS = {
    "red": ("红色", (210, 40, 40)),
    "green": ("绿色", (40, 170, 60)),
    "blue": ("蓝色", (40, 70, 210)),
    "yellow": ("黄色", (225, 200, 30)),
    "purple": ("紫色", (140, 50, 170)),
}
SIZES = {"big": ("大", (0.15, 0.20)), "small": ("小", (0.07, 0.10))}  # radius as share of image side
# direction -> (English word, Chinese word, axis, sign): "left" = smallest x
DIRECTIONS = {  # name -> (phrase, Chinese, axis, sign)
    "left": ("on the left", "左边", 0, -1),
    "right": ("on the right", "右边", 0, 1),
    "top": ("at the top", "上面", 1, -1),
    "bottom": ("at the bottom", "下面", 1, 1),
}
RELATIONS = {  # relation of the target to a reference object
    "left": ("left of", "左边", 0, -1),
    "right": ("right of", "右边", 0, 1),
    "above": ("above", "上面", 1, -1),
    "below": ("below", "下面", 1, 1),
}


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float

    def key(self) -> tuple[str, str]:
        return (self.colour, self.shape)


def _draw(draw: ImageDraw.ImageDraw, o: Obj, fill) -> None:
    x, y, r = o.cx, o.cy, o.r
    if o.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif o.shape == "square":
        s = r * 0.85
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(x, y - r), (x - r * 0.95, y + r * 0.75), (x + r * 0.95, y + r * 0.75)], fill=fill)
    elif o.shape == "diamond":
        draw.polygon([(x, y - r), (x + r * 0.8, y), (x, y + r), (x - r * 0.8, y)], fill=fill)
    else:  # pragma: no cover - shapes are a closed set
        raise ValueError(o.shape)


def _scene(rng: np.random.Generator, size: int) -> list[Obj]:
    n = int(rng.integers(2, 7))
    objs: list[Obj] = []
    shapes, colours = list(SHAPES), list(COLOURS)
    tries = 0
    while len(objs) < n and tries < 400:
        tries += 1
        if objs and rng.random() < 0.45:  # same-category distractor
            shape = objs[int(rng.integers(len(objs)))].shape
        else:
            shape = shapes[int(rng.integers(len(shapes)))]
        colour = colours[int(rng.integers(len(colours)))]
        sz = "big" if rng.random() < 0.5 else "small"
        lo, hi = SIZES[sz][1]
        r = float(rng.uniform(lo, hi)) * size
        cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, size=2))
        if all(np.hypot(cx - o.cx, cy - o.cy) > r + o.r + 3 for o in objs):
            objs.append(Obj(shape, colour, sz, cx, cy, r))
    return objs


def _extreme(objs: list[Obj], target: Obj, axis: int, sign: int, margin: float) -> bool:
    """True if target is clearly the most extreme of objs along axis (sign -1: smallest)."""
    t = (target.cx, target.cy)[axis] * sign
    return all(o is target or (o.cx, o.cy)[axis] * sign < t - margin for o in objs)


def _expressions(objs: list[Obj], t: Obj, size: int) -> list[tuple[str, str]]:
    """All (English, Chinese) expressions that name exactly ``t`` in the scene."""
    out: list[tuple[str, str]] = []
    same_shape = [o for o in objs if o.shape == t.shape]
    zh_shape, zh_col = SHAPES[t.shape], COLOURS[t.colour][0]
    margin = 0.08 * size
    if len(same_shape) == 1:
        out += [(f"the {t.shape}", f"那个{zh_shape}"), (f"{t.shape}", f"{zh_shape}")]
    if sum(o.key() == t.key() for o in objs) == 1:
        out += [
            (f"the {t.colour} {t.shape}", f"{zh_col}的{zh_shape}"),
            (f"{t.colour} {t.shape}", f"{zh_col}{zh_shape}"),
            (f"the {t.shape} that is {t.colour}", f"颜色是{zh_col}的{zh_shape}"),
        ]
    if sum(o.colour == t.colour for o in objs) == 1:
        out += [(f"the {t.colour} one", f"{zh_col}的那个")]
    if sum(o.shape == t.shape and o.size == t.size for o in objs) == 1 and len(same_shape) > 1:
        zh_size = SIZES[t.size][0]
        out += [(f"the {t.size} {t.shape}", f"{zh_size}的{zh_shape}")]
    for name, (en, zh, axis, sign) in DIRECTIONS.items():
        if len(same_shape) > 1 and _extreme(same_shape, t, axis, sign, margin):
            out += [
                (f"the {t.shape} {en}", f"{zh}的{zh_shape}"),
                (f"{name} {t.shape}", f"{zh}的那个{zh_shape}"),
            ]
        if _extreme(objs, t, axis, sign, margin):
            out += [(f"the {name}most shape", f"最{zh}的图形")]
    for ref in objs:
        if ref is t or sum(o.key() == ref.key() for o in objs) != 1:
            continue
        zh_rcol, zh_rshape = COLOURS[ref.colour][0], SHAPES[ref.shape]
        for _rel, (en, zh, axis, sign) in RELATIONS.items():
            rv = (ref.cx, ref.cy)[axis] * sign

            def on_side(o: Obj, rv=rv, axis=axis, sign=sign) -> bool:
                return (o.cx, o.cy)[axis] * sign > rv + margin

            def near_side(o: Obj, rv=rv, axis=axis, sign=sign) -> bool:
                return (o.cx, o.cy)[axis] * sign > rv - margin

            matches = [o for o in same_shape if o is not ref and near_side(o)]
            if on_side(t) and matches == [t]:
                out += [
                    (f"the {t.shape} {en} the {ref.colour} {ref.shape}",
                     f"{zh_rcol}{zh_rshape}{zh}的{zh_shape}"),
                ]
    return out


def generate(
    out_dir: str,
    n_images: int = 600,
    seed: int = 0,
    image_size: int = 128,
    max_targets: int = 3,
    max_expressions: int = 3,
    val_share: float = 0.15,
    test_share: float = 0.15,
    progress: bool = False,
) -> dict:
    """Generate the dataset into ``out_dir`` (local or s3://). Returns the summary dict."""
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    if image_size < 32:
        raise ValueError("image_size must be at least 32 pixels")
    t0 = time.time()
    rng = np.random.default_rng(seed)
    final_root = str(out_dir)
    local_root = tempfile.mkdtemp(prefix="synth-") if storage.is_s3(final_root) else final_root
    os.makedirs(os.path.join(local_root, "images"), exist_ok=True)
    rows = []
    n_objects = 0
    for image_id in range(n_images):
        objs = _scene(rng, image_size)
        # background: a random grey-ish gradient with noise
        base = rng.uniform(90, 170, size=3)
        grad = np.linspace(-20, 20, image_size)[None, :, None] * rng.uniform(-1, 1)
        bg = base[None, None, :] + grad + rng.normal(0, 6, size=(image_size, image_size, 3))
        img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        masks = []
        for o in objs:
            colour = np.array(COLOURS[o.colour][1]) + rng.integers(-15, 16, size=3)
            _draw(draw, o, tuple(int(c) for c in np.clip(colour, 0, 255)))
            m = Image.new("L", (image_size, image_size), 0)
            _draw(ImageDraw.Draw(m), o, 255)
            masks.append(np.asarray(m) > 127)
        name = f"images/{image_id:06d}.png"
        img.save(os.path.join(local_root, name))
        uri = storage.join(final_root, name) if storage.is_s3(final_root) else os.path.abspath(
            os.path.join(local_root, name)
        )
        u = rng.random()
        if u < 1 - val_share - test_share:
            split = "train"
        elif u < 1 - test_share:
            split = "val"
        else:
            split = "testA" if len(objs) <= 3 else "testB"
        order = rng.permutation(len(objs))
        n_targets = 0
        for idx in order:
            t = objs[int(idx)]
            cands = _expressions(objs, t, image_size)
            if not cands or n_targets >= max_targets:
                continue
            n_targets += 1
            pick = rng.choice(len(cands), size=min(max_expressions, len(cands)), replace=False)
            ann_id = image_id * 10 + int(idx)
            mask = masks[int(idx)]
            ys, xs = np.nonzero(mask)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                    float(ys.max() - ys.min() + 1)]
            rle = mf.encode_mask(mask)
            for k, j in enumerate(sorted(int(p) for p in pick)):
                en, zh = cands[j]
                rows.append(
                    {
                        "sample_id": f"synth/{image_id:06d}_{int(idx)}_{k}",
                        "dataset": "synth",
                        "split": split,
                        "image_id": image_id,
                        "image_uri": uri,
                        "ref_id": ann_id,
                        "ann_id": ann_id,
                        "category": t.shape,
                        "bbox": bbox,
                        "mask": rle,
                        "text_en": en,
                        "text_zh": zh,
                    }
                )
        n_objects += n_targets
        if progress and (image_id + 1) % 200 == 0:
            print(f"  synth: {image_id + 1}/{n_images} images, {len(rows)} expressions", flush=True)
    df = pd.DataFrame(rows)
    mf.write_manifest(df, os.path.join(local_root, "manifest.parquet"))
    summary = {
        "seed": seed,
        "image_size": image_size,
        "images": n_images,
        "objects": n_objects,
        "expressions": len(df),
        "per_split": {s: int(n) for s, n in df["split"].value_counts().sort_index().items()},
        "seconds": round(time.time() - t0, 2),
        "manifest": storage.join(final_root, "manifest.parquet"),
    }
    with open(os.path.join(local_root, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    if storage.is_s3(final_root):
        storage.copy_tree(local_root, final_root)
    return summary


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder or s3:// prefix")
    p.add_argument("--images", type=int, default=600, help="number of scenes (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--max-targets", type=int, default=3, help="referred objects per image (default 3)")
    p.add_argument("--max-expressions", type=int, default=3,
                   help="expressions per referred object (default 3)")


def run(args) -> int:
    s = generate(args.out, n_images=args.images, seed=args.seed, image_size=args.size,
                 max_targets=args.max_targets, max_expressions=args.max_expressions, progress=True)
    print(f"wrote {s['expressions']} expressions of {s['objects']} objects in {s['images']} images "
          f"({s['per_split']}) in {s['seconds']} s -> {s['manifest']}")
    return 0
