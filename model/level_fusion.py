"""Fusing several levels without a ConvLSTM (``use_convlstm: false`` with more than one level).

The paper fuses Z3, Z4, Z5 with a ConvLSTM and names no other way. Without one we concatenate the
levels along the channels (in the order of ``levels``) and apply a 1x1 conv + ReLU back to Cm
channels: Z = ReLU(Conv1x1([Z3, Z4, Z5])). Why not a plain sum: the sum treats the levels as
interchangeable and cannot weight them per channel, while the ConvLSTM it replaces does tell them
apart (by their order); concat + 1x1 conv keeps that at the cost of one small layer, and has the
same shape as the Yj conv of Section 3.5 (docs/method.md, Decision 21). Levels on different grids
are resampled (bilinear) to the first level's grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LevelConcat(nn.Module):
    def __init__(self, c_m: int, n_levels: int):
        super().__init__()
        self.conv = nn.Conv2d(c_m * n_levels, c_m, 1)

    def forward(self, seq: list[torch.Tensor]) -> torch.Tensor:
        size = seq[0].shape[-2:]
        same = [z if z.shape[-2:] == size else
                F.interpolate(z, size=size, mode="bilinear", align_corners=False) for z in seq]
        return torch.relu(self.conv(torch.cat(same, dim=1)))
