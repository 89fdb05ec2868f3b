"""Linguistic Excitation (LE), channel attention, eqs. (5)-(9).

mg = tanh(Conv(GAP(M)))  (5);  lg = tanh(Conv(ls))  (6);  ag = mg (.) lg  (7);
ag^ = sigmoid(Conv(ReLU(Conv(ag))))  (8);  M_LE = ag^ (.) M  (9), per channel.
Decision: the bottleneck ratio of the two convs of (8) is ``le_reduction`` (SENet's 16).
"""

from __future__ import annotations

import torch
from torch import nn


class LinguisticExcitation(nn.Module):
    def __init__(self, c_m: int, c_l: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, c_m // reduction)
        self.vis = nn.Linear(c_m, c_m)  # 1x1 conv on GAP(M), eq. (5)
        self.lang = nn.Linear(c_l, c_m)  # 1x1 conv on ls, eq. (6)
        self.squeeze = nn.Linear(c_m, hidden)  # eq. (8)
        self.excite = nn.Linear(hidden, c_m)

    def weights(self, m: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
        """ag^ [N, Cm] in [0, 1]."""
        mg = torch.tanh(self.vis(m.mean(dim=(2, 3))))  # (5)
        lg = torch.tanh(self.lang(ls))  # (6)
        ag = mg * lg  # (7)
        return torch.sigmoid(self.excite(torch.relu(self.squeeze(ag))))  # (8)

    def forward(self, m: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
        return self.weights(m, ls)[:, :, None, None] * m  # (9)
