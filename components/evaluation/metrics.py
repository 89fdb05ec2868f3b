"""Referring-segmentation metrics: per-sample intersection / union pixel counts, overall IoU,
mean IoU and Precision@X (the paper's Section 4.1; docs/method.md, "The task"). The one
implementation: the evaluate step and the trainer's validation both count and summarise here.

Definitions (counts are pixels of boolean masks at the ORIGINAL image resolution):

- ``I = |pred AND gt|``, ``U = |pred OR gt|``.
- Per-sample IoU = I / U. Edge case: when both the prediction and the ground truth are empty,
  U = 0 and the IoU is 1.0 by convention (nothing to find, nothing predicted: a correct answer).
  An empty prediction with a non-empty ground truth gives I = 0, U = |gt|, IoU 0; a non-empty
  prediction with an empty ground truth gives IoU 0 as well.
- Overall IoU = sum(I) / sum(U) over the samples of a split (large objects weigh more). When
  sum(U) = 0 (every sample empty in both) it is 1.0, consistent with the per-sample convention.
- Mean IoU = arithmetic mean of the per-sample IoUs.
- Precision@X = share of samples whose IoU is STRICTLY greater than X, for X in 0.5 ... 0.9. The
  comparison is done exactly on integers (``100 * I > pct * U``), so an IoU of exactly 0.5 does not
  count for P@0.5 and floating-point rounding never flips a sample. A (0, 0) sample (IoU 1 by the
  convention above) counts as a hit for every X.

Metric names (docs/evaluation.md, "Outputs"): ``{split}_overall_iou``, ``{split}_mean_iou``,
``{split}_prec_50`` ... ``{split}_prec_90``, with an optional suffix such as ``_crf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PREC_THRESHOLDS_PCT: tuple[int, ...] = (50, 60, 70, 80, 90)


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel counts (I, U) of two masks of the same shape (bool, or anything where nonzero = in)."""
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground-truth shape {g.shape}")
    p = p.astype(bool, copy=False)
    g = g.astype(bool, copy=False)
    inter = int(np.count_nonzero(p & g))
    union = int(np.count_nonzero(p | g))
    return inter, union


def iou(inter: int, union: int) -> float:
    """IoU of one sample from its counts; (0, 0) -> 1.0 (both masks empty, see module doc)."""
    inter, union = int(inter), int(union)
    if inter < 0 or union < 0 or inter > union:
        raise ValueError(f"invalid counts: intersection {inter}, union {union}")
    if union == 0:
        return 1.0
    return inter / union


def ious(inters: Sequence[int] | np.ndarray, unions: Sequence[int] | np.ndarray) -> np.ndarray:
    """Vectorised :func:`iou` (float64 array)."""
    i = np.asarray(inters, dtype=np.int64)
    u = np.asarray(unions, dtype=np.int64)
    if i.shape != u.shape:
        raise ValueError(f"{i.shape} intersections but {u.shape} unions")
    if np.any(i < 0) or np.any(i > u):
        bad = int(np.flatnonzero((i < 0) | (i > u))[0])
        raise ValueError(f"invalid counts at sample {bad}: intersection {i[bad]}, union {u[bad]}")
    out = np.ones(i.shape, dtype=np.float64)
    nz = u > 0
    out[nz] = i[nz] / u[nz]
    return out


def precision_at(inters, unions, pct: int) -> float:
    """Share of samples with IoU > pct/100 (strict, exact integer comparison)."""
    i = np.asarray(inters, dtype=np.int64)
    u = np.asarray(unions, dtype=np.int64)
    if i.size == 0:
        raise ValueError("precision_at needs at least one sample")
    hit = (100 * i > pct * u) | (u == 0)
    return float(np.count_nonzero(hit)) / i.size


def summarize(
    inters: Sequence[int] | np.ndarray,
    unions: Sequence[int] | np.ndarray,
    prefix: str = "",
    suffix: str = "",
) -> dict[str, float]:
    """All metrics of a set of samples as ``{prefix}{name}{suffix}`` -> value in [0, 1].

    ``summarize(I, U, prefix="val_", suffix="_crf")`` gives ``val_overall_iou_crf`` etc.
    """
    i = np.asarray(inters, dtype=np.int64)
    u = np.asarray(unions, dtype=np.int64)
    if i.size == 0:
        raise ValueError("cannot summarize zero samples")
    per = ious(i, u)
    out = {
        f"{prefix}overall_iou{suffix}": overall_iou(i, u),
        f"{prefix}mean_iou{suffix}": float(per.mean()),
    }
    for pct in PREC_THRESHOLDS_PCT:
        out[f"{prefix}prec_{pct}{suffix}"] = precision_at(i, u, pct)
    return out


def overall_iou(inters: Sequence[int] | np.ndarray, unions: Sequence[int] | np.ndarray) -> float:
    """sum(I) / sum(U); 1.0 when every union is empty (see module doc)."""
    i = np.asarray(inters, dtype=np.int64)
    u = np.asarray(unions, dtype=np.int64)
    total_u = int(u.sum())
    return 1.0 if total_u == 0 else float(i.sum()) / total_u
