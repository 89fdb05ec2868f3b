"""The examples of the report: the best and worst samples (by IoU before CRF; ties by sample id),
one per image while possible, run again through the model to get the LA attention maps P^ of each
level (the paper's Figure 8) beside the image, the ground truth and the masks."""

from __future__ import annotations

from typing import Any

import numpy as np

from components.evaluation.crf import CRFParams, refine
from components.evaluation.evaluator import original_image, upsample_probs


def pick(ids: list[str], image_ids: list[int], n: int, exclude: set[str]) -> list[str]:
    """Up to ``n`` of ``ids`` (in order) not in ``exclude``, one per image while possible (a more
    varied panel), then any."""
    out, seen = [], set()
    for s, im in zip(ids, image_ids, strict=True):
        if len(out) < n and s not in exclude and im not in seen:
            out.append(s)
            seen.add(im)
    for s in ids:
        if len(out) < n and s not in exclude and s not in out:
            out.append(s)
    return out


def choose(per_sample, n: int) -> list[tuple[str, str]]:
    """[(sample_id, "best" | "worst")]: the ``n`` best, then the ``n`` worst of the rest."""
    order = per_sample.sort_values(["iou", "sample_id"], ascending=[False, True])
    ids, imgs = list(order["sample_id"]), list(order["image_id"])
    best = pick(ids, imgs, n, set())
    worst = pick(ids[::-1], imgs[::-1], n, set(best))
    return [(s, "best") for s in best] + [(s, "worst") for s in worst]


def collect_examples_by_split(model, datasets: dict, positions: dict[str, dict[int, int]],
                              texts: dict[str, dict], per_sample, n: int, params: CRFParams,
                              crf_enabled: bool) -> list[dict[str, Any]]:
    """The best and worst examples over every evaluated split (``per_sample`` with its ``split``
    column; ``datasets`` and ``positions`` by split), each run through its split's dataset."""
    picks = choose(per_sample, n)
    split_of = dict(zip(per_sample["sample_id"], per_sample["split"], strict=True))
    found: dict[str, dict[str, Any]] = {}
    for split, ds in datasets.items():
        mine = [p for p in picks if split_of[p[0]] == split]
        if mine:
            sub = per_sample[per_sample["split"] == split]
            for ex in collect_examples(model, ds, positions[split], texts, sub, n, params,
                                       crf_enabled, picks=mine):
                found[ex["sample_id"]] = dict(ex, split=split)
    return [found[s] for s, _ in picks if s in found]


def collect_examples(model, ds, positions: dict[int, int], texts: dict[str, dict], per_sample,
                     n: int, params: CRFParams, crf_enabled: bool,
                     picks: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """The report's example dicts (see :func:`components.evaluation.report.example_figure`):
    image, gt, prob, pred, pred_crf, attention, levels, text, iou, iou_crf, kind. ``picks``:
    the samples to show (default :func:`choose` over ``per_sample``)."""
    import torch

    from model import forward

    picks = choose(per_sample, n) if picks is None else picks
    by_id = per_sample.set_index("sample_id")
    wanted = {s for s, _ in picks}
    levels = list(model.cfg.levels)
    found: dict[str, dict[str, Any]] = {}
    for image_id in sorted({int(by_id.loc[s, "image_id"]) for s in wanted}):
        it = ds[positions[image_id]]
        sel = [j for j, s in enumerate(it["sample_ids"]) if s in wanted]
        with torch.no_grad():
            out = forward(model, it["image"][None], it["tokens"][sel], it["lengths"][sel],
                          torch.zeros(len(sel), dtype=torch.long), return_attention=True)
        image = original_image(ds, it)
        probs = upsample_probs(out["logits"], image.shape[:2], getattr(ds, "fit", None))
        atts = [a.float().cpu().numpy() for a in out.get("attention", [])]
        for q, j in enumerate(sel):
            s = it["sample_ids"][j]
            found[s] = {
                "sample_id": s,
                "image": image,
                "gt": np.asarray(ds.full_mask(s)).astype(bool),
                "prob": probs[q],
                "pred": probs[q] > params.threshold,
                "pred_crf": refine(image, probs[q], params) if crf_enabled else None,
                "attention": [a[q] for a in atts],
                "levels": levels if atts else [],
                "text": texts.get(s, {}).get("text", ""),
                "iou": float(by_id.loc[s, "iou"]),
                "iou_crf": (float(by_id.loc[s, "iou_crf"]) if crf_enabled else None),
            }
    return [dict(found[s], kind=kind) for s, kind in picks if s in found]
