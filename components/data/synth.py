"""The procedural scenes of the synthetic bilingual dataset (:mod:`components.synth` writes them).

Each scene holds 2-6 coloured shapes on a noisy background, often with same-category distractors (as
in G-Ref). Targets get several English and Chinese expressions drawn from varied templates:
attributes ("the red circle" / "红色的圆形"), absolute position ("the circle on the left" /
"左边的圆形"), and relations ("the circle left of the blue square" / "蓝色正方形左边的圆形").
Every expression is checked against the scene so that it names exactly one object.

Every random draw comes from the one generator passed in, in a fixed order (objects, background,
object colours, split, target order, expressions): the same seed gives the same scenes, bytes for
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from components.data import manifest as mf

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


@dataclass
class Scene:
    """One rendered scene: the image, its objects and each object's mask (bool HxW)."""

    image: Image.Image
    objects: list[Obj]
    masks: list[np.ndarray]


def render_scene(rng: np.random.Generator, size: int) -> Scene:
    """Place the objects, paint a grey-ish gradient background with noise, draw each object in
    its colour (jittered) and keep its mask."""
    objs = _scene(rng, size)
    base = rng.uniform(90, 170, size=3)
    grad = np.linspace(-20, 20, size)[None, :, None] * rng.uniform(-1, 1)
    bg = base[None, None, :] + grad + rng.normal(0, 6, size=(size, size, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    masks = []
    for o in objs:
        colour = np.array(COLOURS[o.colour][1]) + rng.integers(-15, 16, size=3)
        _draw(draw, o, tuple(int(c) for c in np.clip(colour, 0, 255)))
        m = Image.new("L", (size, size), 0)
        _draw(ImageDraw.Draw(m), o, 255)
        masks.append(np.asarray(m) > 127)
    return Scene(img, objs, masks)


def draw_split(rng: np.random.Generator, objs: list[Obj], val_share: float,
               test_share: float) -> str:
    """train / val / testA (at most 3 objects) / testB (4 or more), by image."""
    u = rng.random()
    if u < 1 - val_share - test_share:
        return "train"
    if u < 1 - test_share:
        return "val"
    return "testA" if len(objs) <= 3 else "testB"


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def referring_rows(rng: np.random.Generator, scene: Scene, image_id: int, image_uri: str,
                   split: str, image_size: int, max_targets: int,
                   max_expressions: int) -> tuple[list[dict], int]:
    """Manifest rows for up to ``max_targets`` objects (in a random order) that some expression
    names, up to ``max_expressions`` each. Returns (rows, number of referred objects)."""
    objs, rows, n_targets = scene.objects, [], 0
    for idx in rng.permutation(len(objs)):
        t = objs[int(idx)]
        cands = _expressions(objs, t, image_size)
        if not cands or n_targets >= max_targets:
            continue
        n_targets += 1
        pick = rng.choice(len(cands), size=min(max_expressions, len(cands)), replace=False)
        ann_id = image_id * 10 + int(idx)
        mask = scene.masks[int(idx)]
        bbox, rle = _bbox(mask), mf.encode_mask(mask)
        for k, j in enumerate(sorted(int(p) for p in pick)):
            en, zh = cands[j]
            rows.append(
                {
                    "sample_id": f"synth/{image_id:06d}_{int(idx)}_{k}",
                    "dataset": "synth",
                    "split": split,
                    "image_id": image_id,
                    "image_uri": image_uri,
                    "ref_id": ann_id,
                    "ann_id": ann_id,
                    "category": t.shape,
                    "bbox": bbox,
                    "mask": rle,
                    "text_en": en,
                    "text_zh": zh,
                }
            )
    return rows, n_targets
