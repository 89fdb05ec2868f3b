"""Segmentation loss, eqs. (18)-(19): binary cross-entropy of sigmoid(R) against the mask G,
averaged over the H x W pixels (and over the expressions of the batch). Computed on logits in
float32 (``binary_cross_entropy_with_logits``: numerically stable, same value as (19))."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if logits.shape != masks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ")
    return F.binary_cross_entropy_with_logits(logits.float(), masks.float(), reduction="mean")
