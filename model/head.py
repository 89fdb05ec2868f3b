"""Prediction head: a 3x3 conv to one channel, then bilinear upsampling to the input size: the
response map R (Section 3.5; the single-level baseline also ends in a 3x3 conv)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskHead(nn.Module):
    def __init__(self, c_in: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 1, kernel, padding=kernel // 2)

    def forward(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        r = self.conv(z)
        return F.interpolate(r, size=size, mode="bilinear", align_corners=False)
