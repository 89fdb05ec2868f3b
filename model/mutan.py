"""Early fusion of vision and language.

``MutanFusion``, eqs. (1)-(4): Vt = Conv([V, S]); Mj = (ls W1j) (.) (Vt W2j), j = 1..r;
M = sum_j Mj. ``ConcatFusion`` is the CNN-LSTM baseline (Table 4 rows without MUTAN): a 1x1 conv
on [V, S, Ls], computed as Conv_V,S([V, S]) + W_l ls (the same linear map, split so that the visual
part runs once per image).

Both split their work into ``visual`` (per image, before the expressions are gathered) and
``fuse`` (per expression).
"""

from __future__ import annotations

import torch
from torch import nn

from model.coord import COORD_CHANNELS


class MutanFusion(nn.Module):
    def __init__(self, c_in: int, c_v: int, c_l: int, c_m: int, rank: int = 5,
                 activation: str = "none"):
        super().__init__()
        self.rank, self.c_m = rank, c_m
        self.vt = nn.Conv2d(c_in + COORD_CHANNELS, c_v, 1)  # eq. (1)
        self.w2 = nn.Conv2d(c_v, rank * c_m, 1)  # W2j for all j, eq. (3)
        self.w1 = nn.Linear(c_l, rank * c_m)  # W1j for all j, eq. (3)
        self.act = torch.tanh if activation == "tanh" else (lambda x: x)

    def visual(self, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """[B, Cin, H, W], S [1, 8, H, W] -> Vt W2 [B, r*Cm, H, W]."""
        vt = self.vt(torch.cat([v, s.expand(v.shape[0], -1, -1, -1)], dim=1))
        return self.act(self.w2(vt))

    def fuse(self, vis: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
        """vis [N, r*Cm, H, W] (gathered per expression), ls [N, Cl] -> M [N, Cm, H, W]."""
        n, _, h, w = vis.shape
        lang = self.act(self.w1(ls)).view(n, self.rank, self.c_m, 1, 1)
        m = vis.view(n, self.rank, self.c_m, h, w) * lang  # eq. (3)
        return m.sum(dim=1)  # eq. (4)


class ConcatFusion(nn.Module):
    def __init__(self, c_in: int, c_l: int, c_m: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in + COORD_CHANNELS, c_m, 1)
        self.lang = nn.Linear(c_l, c_m, bias=False)

    def visual(self, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([v, s.expand(v.shape[0], -1, -1, -1)], dim=1))

    def fuse(self, vis: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
        return torch.relu(vis + self.lang(ls)[:, :, None, None])
