"""The language-sensitivity row of an evaluation: does the model read the expression at all?

In every image with at least two referred objects, each expression is replaced by an expression of
another object of the same image (chosen with a generator seeded by (seed, image_id)) and the
prediction is scored against the ORIGINAL expression's ground truth. The shuffled expressions ride
in the same forward pass as the true ones (same images, extra rows). Images with a single object
are skipped and counted. If the shuffled overall IoU is not below the true overall IoU of the same
samples by more than ``margin`` (relative), the model does not use the language. No CRF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.evaluation.metrics import overall_iou

DEFAULT_MARGIN = 0.10
METHOD = ("each expression replaced by one of another object of the same image (seeded); scored "
          "against the original expression's ground truth; no CRF")


def shuffle_plan(sample_ids: list[str], ann_ids: list[int], seed: int, image_id: int
                 ) -> list[int] | None:
    """For one image: for each expression the index of a donor expression that refers to another
    object of the same image, or None when the image holds a single object. Seeded by
    (seed, image_id), so the plan does not depend on batching or on other images."""
    if len(set(ann_ids)) < 2:
        return None
    rng = np.random.default_rng([int(seed), int(image_id) & 0x7FFFFFFF])
    plan = []
    for j in range(len(sample_ids)):
        others = [k for k in range(len(sample_ids)) if ann_ids[k] != ann_ids[j]]
        plan.append(others[int(rng.integers(len(others)))])
    return plan


@dataclass
class ShuffledRows:
    """The shuffled expressions appended to one batch: for each extra row, the batch row whose
    tokens it borrows (``donors``), the batch row whose ground truth scores it (``sources``) and
    the image it is paired with (``images``)."""

    donors: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)

    def of_image(self, start: int, stop: int) -> list[int]:
        """Positions of the extra rows scored against batch rows ``start`` .. ``stop - 1``."""
        return [q for q, src in enumerate(self.sources) if start <= src < stop]


def plan_batch(items: list[dict[str, Any]], ann_id_of: dict[str, int], seed: int,
               counts: dict[str, int]) -> ShuffledRows:
    """The shuffled rows of a batch of dataset items (one item per image, in batch order); counts
    the images used and skipped into ``counts``."""
    rows = ShuffledRows()
    offset = 0
    for b, it in enumerate(items):
        ids = list(it["sample_ids"])
        plan = shuffle_plan(ids, [ann_id_of[s] for s in ids], seed, int(it["image_id"]))
        if plan is None:
            counts["images_skipped_single_object"] += 1
        else:
            counts["images_used"] += 1
            for j, donor in enumerate(plan):
                rows.donors.append(offset + donor)
                rows.sources.append(offset + j)
                rows.images.append(b)
        offset += len(ids)
    return rows


def extend_batch(tokens, lengths, image_index, rows: ShuffledRows):
    """(tokens, lengths, image_index) with the shuffled rows appended after the true ones."""
    import torch

    if not rows.donors:
        return tokens, lengths, image_index
    sel = torch.as_tensor(rows.donors, dtype=torch.long)
    return (torch.cat([tokens, tokens[sel]]), torch.cat([lengths, lengths[sel]]),
            torch.cat([image_index, torch.as_tensor(rows.images, dtype=image_index.dtype)]))


def sanity_row(rows: list[dict[str, Any]], shuffled: dict[int, tuple[int, int]],
               counts: dict[str, int], margin: float) -> dict[str, Any]:
    """The ``sanity`` entry of metrics.json from the true rows (intersection, union), the shuffled
    counts by row index and the image counts."""
    ids = sorted(shuffled)
    out: dict[str, Any] = {
        "method": METHOD,
        "images_used": counts["images_used"],
        "images_skipped_single_object": counts["images_skipped_single_object"],
        "n_samples": len(ids),
        "relative_margin": margin,
    }
    if not ids:
        out.update(overall_iou_true=None, overall_iou_shuffled=None, relative_drop=None,
                   uses_language=None,
                   message="no image of this split has two or more referred objects: "
                           "the shuffled-expression check could not run")
        return out
    true = overall_iou([rows[r]["intersection"] for r in ids], [rows[r]["union"] for r in ids])
    shuf = overall_iou([shuffled[r][0] for r in ids], [shuffled[r][1] for r in ids])
    drop = (true - shuf) / true if true > 0 else 0.0
    uses = bool(drop > margin)
    msg = (f"shuffled expressions lower the overall IoU from {true:.4f} to {shuf:.4f} "
           f"({100 * drop:.1f}% relative): the model uses the language"
           if uses else
           f"WARNING: shuffling the expressions among each image's objects changes the overall "
           f"IoU only from {true:.4f} to {shuf:.4f} ({100 * drop:.1f}% relative, margin "
           f"{100 * margin:.0f}%): the model is NOT using the language (it segments a salient "
           f"object regardless of the expression)")
    out.update(overall_iou_true=true, overall_iou_shuffled=shuf, relative_drop=drop,
               uses_language=uses, message=msg)
    return out
