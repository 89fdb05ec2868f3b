"""Cross-Level Attentive Fusion (CLAF), Section 3.5, eqs. (16)-(17).

Per level j: Yj = Conv([M_LE^j, M_LA^j, M^j, Ls, S]) (``LevelOutput``; absent modules are left out
of the concatenation). Then, with Q, K, V 1x1 convs (Q, K to Cl so that ls can gate them):
    Zkj = (ls (.) Q(Yk)) x (ls (.) K(Yj))^T x V(Yj)      (16)
    Zk  = Yk + sum_j Zkj                                 (17)
(16) has no softmax, so the product is associative. The "cheap" order computes
A = sum_j (ls (.) K(Yj))^T V(Yj) / HWj  (Cl x Cm, never HW x HW) first: O(HW Cl Cm) instead of
O(HW^2 (Cl + Cm)). The "naive" order (left to right) is kept for testing. Decision: Zkj is divided
by HWj (``claf_norm="hw"``), since the unnormalised triple product grows with HW. Under autocast
the products and the sum (17) run in float32 and Zk is float32: sum_j Zkj is about 2e-4 of Yk at
initialisation, which a bfloat16 sum would round away (docs/method.md, Decision 27).
"""

from __future__ import annotations

import torch
from torch import nn

from model.coord import COORD_CHANNELS


class LevelOutput(nn.Module):
    """Yj = ReLU(Conv1x1([M_LE, M_LA, M, Ls, S]))."""

    def __init__(self, c_m: int, c_l: int, use_le: bool, use_la: bool):
        super().__init__()
        c_in = c_m * (1 + int(use_le) + int(use_la)) + c_l + COORD_CHANNELS
        self.conv = nn.Conv2d(c_in, c_m, 1)

    def forward(self, parts: list[torch.Tensor], ls: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        n, _, h, w = parts[0].shape
        tiled = ls[:, :, None, None].expand(n, ls.shape[1], h, w)  # Ls
        return torch.relu(self.conv(torch.cat([*parts, tiled, s.expand(n, -1, -1, -1)], dim=1)))


def _norm(norm: str, hw: int) -> float:
    if norm == "hw":
        return 1.0 / hw
    if norm == "sqrt_hw":
        return 1.0 / hw**0.5
    return 1.0


class CrossLevelAttentiveFusion(nn.Module):
    def __init__(self, c_m: int, c_l: int, norm: str = "hw", order: str = "auto"):
        super().__init__()
        self.q = nn.Conv2d(c_m, c_l, 1)
        self.k = nn.Conv2d(c_m, c_l, 1)
        self.v = nn.Conv2d(c_m, c_m, 1)
        self.norm, self.order = norm, order
        self.last_order: str | None = None  # which order the last call used (for tests/benches)

    @staticmethod
    def costs(hw_k: list[int], hw_j: list[int], c_l: int, c_m: int) -> dict[str, int]:
        """Multiply-adds of all Zkj per sample in each association order."""
        cheap = sum(h * c_l * c_m for h in hw_j) + sum(h * c_l * c_m for h in hw_k)
        naive = sum(hk * hj * (c_l + c_m) for hk in hw_k for hj in hw_j)
        return {"cheap": cheap, "naive": naive}

    def choose_order(self, hws: list[int], c_l: int, c_m: int) -> str:
        if self.order != "auto":
            return self.order
        c = self.costs(hws, hws, c_l, c_m)
        return "cheap" if c["cheap"] <= c["naive"] else "naive"

    def forward(self, ys: list[torch.Tensor], ls: torch.Tensor, order: str | None = None
                ) -> list[torch.Tensor]:
        """ys: per level [N, Cm, H, W] (levels may differ in size); ls [N, Cl] -> Zk per level.

        The 1x1 convs Q, K, V run in the caller's precision (bfloat16 under autocast); the gating,
        the products and the sum (17) run in float32 with autocast off, and Zk is float32:
        Sum_j Zkj is about 2e-4 of Yk at initialisation, below bfloat16's resolution (2^-8), so
        a bfloat16 ``Yk + Sum_j Zkj`` would round it away. In float32 every ``.float()`` is a
        no-op and the result is bit-identical to computing without this guard."""
        qs = [self.q(y).flatten(2) for y in ys]
        ks = [self.k(y).flatten(2) for y in ys]
        vs = [self.v(y).flatten(2) for y in ys]
        with torch.autocast(ys[0].device.type, enabled=False):
            return self._fuse([y.float() for y in ys], ls.float(), [q.float() for q in qs],
                              [k.float() for k in ks], [v.float() for v in vs], order)

    def _fuse(self, ys, ls, qs, ks, vs, order: str | None) -> list[torch.Tensor]:
        """(16)-(17) in float32 from Q(Yk), K(Yj), V(Yj) flattened to [N, C, HW]."""
        gate = ls.unsqueeze(-1)  # [N, Cl, 1]
        qs = [gate * q for q in qs]  # ls (.) Q(Yk): [N, Cl, HWk]
        ks = [gate * k for k in ks]  # ls (.) K(Yj): [N, Cl, HWj]
        hws = [y.shape[-2] * y.shape[-1] for y in ys]  # V(Yj): vs [N, Cm, HWj]
        order = order or self.choose_order(hws, ls.shape[1], ys[0].shape[1])
        self.last_order = order
        out = []
        if order == "cheap":
            # A = sum_j K'_j V_j^T * norm_j : [N, Cl, Cm]
            a = sum(torch.bmm(k, v.transpose(1, 2)) * _norm(self.norm, hw)
                    for k, v, hw in zip(ks, vs, hws, strict=True))
            for y, q in zip(ys, qs, strict=True):
                z = torch.bmm(a.transpose(1, 2), q)  # [N, Cm, HWk] = (Q'^T A)^T
                out.append(y + z.view_as(y))  # (17)
        elif order == "naive":
            for y, q in zip(ys, qs, strict=True):
                z = 0
                for k, v, hw in zip(ks, vs, hws, strict=True):
                    s = torch.bmm(q.transpose(1, 2), k)  # [N, HWk, HWj]
                    z = z + torch.bmm(v, s.transpose(1, 2)) * _norm(self.norm, hw)  # (16)
                out.append(y + z.view_as(y))  # (17)
        else:
            raise ValueError(f"unknown CLAF order {order!r}")
        return out
