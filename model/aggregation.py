"""Linguistic Aggregation (LA), spatial attention, eqs. (10)-(15).

P = Conv(M) x Conv(ls)  (10, one score per position);  P^ = softmax_HW(P)  (11);  mc = P^T M  (12);
di = ||mc - mi||_2  (13);  di^ = exp(-(di - min D) / sigma)  (14);  M_LA = D^ x mc^T  (15).
Decision: sigma is configurable. ``sigma_mode="mean"`` sets sigma = la_sigma * mean(di - min D)
(per sample, detached), which keeps D^ from collapsing to one position or going flat whatever
the feature scale; ``"fixed"`` uses la_sigma itself. P^ (Figure 8) is returned as well.
"""

from __future__ import annotations

import torch
from torch import nn

# exp(-80) ~ 1.8e-35 is still a normal float32: D^ stays strictly positive, as (14) implies.
_MAX_EXPONENT = 80.0


class LinguisticAggregation(nn.Module):
    def __init__(self, c_m: int, c_l: int, latent: int, sigma_mode: str = "mean",
                 sigma: float = 1.0):
        super().__init__()
        self.key = nn.Conv2d(c_m, latent, 1)  # Conv(M), eq. (10)
        self.query = nn.Linear(c_l, latent)  # Conv(ls), eq. (10)
        self.sigma_mode, self.sigma = sigma_mode, float(sigma)

    def forward(self, m: torch.Tensor, ls: torch.Tensor) -> dict[str, torch.Tensor]:
        """M [N, Cm, H, W], ls [N, Cl] -> {"m_la" [N, Cm, H, W], "p_hat" [N, H, W],
        "d_hat" [N, H, W], "mc" [N, Cm]}."""
        n, c, h, w = m.shape
        k = self.key(m).flatten(2)  # [N, latent, HW]
        q = self.query(ls)  # [N, latent]
        p = torch.einsum("nlp,nl->np", k, q)  # (10)
        p_hat = torch.softmax(p.float(), dim=1).to(m.dtype)  # (11)
        mf = m.flatten(2)  # [N, Cm, HW]
        mc = torch.einsum("ncp,np->nc", mf, p_hat)  # (12)
        d = torch.linalg.vector_norm((mf - mc.unsqueeze(-1)).float(), dim=1)  # (13) [N, HW]
        d_rel = d - d.amin(dim=1, keepdim=True)
        if self.sigma_mode == "mean":
            sigma = (self.sigma * d_rel.mean(dim=1, keepdim=True)).detach().clamp_min(1e-6)
        else:
            sigma = torch.full_like(d_rel[:, :1], self.sigma)
        d_hat = torch.exp(-(d_rel / sigma).clamp_max(_MAX_EXPONENT)).to(m.dtype)  # (14)
        m_la = d_hat.unsqueeze(1) * mc.unsqueeze(-1)  # (15): D^ x mc^T, rank one
        return {
            "m_la": m_la.view(n, c, h, w),
            "p_hat": p_hat.view(n, h, w),
            "d_hat": d_hat.view(n, h, w),
            "mc": mc,
        }
