"""ConvLSTM (Shi et al. 2015) fusing the CLAF outputs Z3, Z4, Z5 in sequence (Section 3.5).

The paper's cell size is 500; its last hidden state is Z, the input of the prediction head.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvLSTMCell(nn.Module):
    def __init__(self, c_in: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(c_in + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    def __init__(self, c_in: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.cell = ConvLSTMCell(c_in, hidden, kernel)

    def forward(self, seq: list[torch.Tensor]) -> torch.Tensor:
        x0 = seq[0]
        n, _, h, w = x0.shape
        hs = x0.new_zeros(n, self.cell.hidden, h, w)
        state = (hs, hs.clone())
        for x in seq:
            state = self.cell(x, state)
        return state[0]
