"""Validation during training: the model's masks on a split at its input resolution (threshold 0.5
on the sigmoid, i.e. logit > 0), per-sample intersections and unions, then overall IoU, mean IoU
and Precision@X from :mod:`components.evaluation.metrics` (the one metrics module). Images are
sharded over the ranks; every rank gets all samples' counts back, in dataset order."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from components.evaluation.metrics import PREC_THRESHOLDS_PCT, summarize


@dataclass
class Validation:
    overall_iou: float
    mean_iou: float
    prec: dict[int, float]
    n: int

    def metrics(self, prefix: str = "val") -> dict[str, float]:
        d = {f"{prefix}_overall_iou": self.overall_iou, f"{prefix}_mean_iou": self.mean_iou}
        d.update({f"{prefix}_prec_{p}": v for p, v in self.prec.items()})
        return d


def _counts(model, ds, positions: list[int], batch_images: int):
    """[(image position, intersections, unions)] of this rank's images, in batches."""

    from components.data.refdata import collate_grouped
    from model import forward

    out = []
    for i in range(0, len(positions), batch_images):
        chunk = positions[i:i + batch_images]
        b = collate_grouped([ds[j] for j in chunk])
        logits = forward(model, b["images"], b["tokens"], b["lengths"], b["image_index"])["logits"]
        pred = (logits.float() > 0).flatten(1).cpu()
        gt = (b["masks"] > 0.5).flatten(1)
        inter = (pred & gt).sum(1).numpy()
        union = (pred | gt).sum(1).numpy()
        index = b["image_index"].numpy()
        out += [(pos, inter[index == k], union[index == k]) for k, pos in enumerate(chunk)]
    return out


def validate(model, ds, dist, batch_images: int, max_images: int | None = None) -> Validation:
    """The metrics of ``model`` on ``ds`` (the first ``max_images`` images when given)."""
    import torch

    n_img = len(ds) if max_images is None else min(len(ds), int(max_images))
    mine = list(range(dist.rank, n_img, dist.world))
    was = model.training
    model.eval()
    with torch.no_grad():
        counts = _counts(model, ds, mine, int(batch_images))
    if was:
        model.train()
    merged = sorted((c for part in dist.all_gather_object(counts) for c in part),
                    key=lambda c: c[0])
    inters = np.concatenate([c[1] for c in merged]) if merged else np.zeros(0, np.int64)
    unions = np.concatenate([c[2] for c in merged]) if merged else np.zeros(0, np.int64)
    if inters.size == 0:
        return Validation(1.0, math.nan, {p: math.nan for p in PREC_THRESHOLDS_PCT}, 0)
    m = summarize(inters, unions)
    return Validation(overall_iou=m["overall_iou"], mean_iou=m["mean_iou"],
                      prec={p: m[f"prec_{p}"] for p in PREC_THRESHOLDS_PCT}, n=int(inters.size))
