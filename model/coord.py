"""Coordinate feature S in R^{H x W x 8} (Section 3.2.1; docs/method.md, Decision 9; the feature of
Hu et al. 2016, used by RMI/STEP).

Per cell: normalised xmin, ymin, xmax, ymax, xcenter, ycenter in [-1, 1], then 1/W and 1/H.
"""

from __future__ import annotations

import torch

COORD_CHANNELS = 8


def coord_feature(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Return S as a [1, 8, h, w] tensor."""
    xs = torch.arange(w, device=device, dtype=torch.float32)
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xmin = xs / w * 2 - 1
    xmax = (xs + 1) / w * 2 - 1
    ymin = ys / h * 2 - 1
    ymax = (ys + 1) / h * 2 - 1
    xc = (xmin + xmax) / 2
    yc = (ymin + ymax) / 2
    gx = lambda v: v.view(1, w).expand(h, w)  # noqa: E731
    gy = lambda v: v.view(h, 1).expand(h, w)  # noqa: E731
    s = torch.stack(
        [gx(xmin), gy(ymin), gx(xmax), gy(ymax), gx(xc), gy(yc),
         torch.full((h, w), 1.0 / w, device=device), torch.full((h, w), 1.0 / h, device=device)]
    )
    return s.unsqueeze(0).to(dtype)
