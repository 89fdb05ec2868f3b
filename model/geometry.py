"""How an H x W image sits in the network's S x S input, and how predictions come back.

The one owner of the input geometry (``ModelConfig.resize``): the training dataset, ``predict``,
evaluation and serving all go through :class:`InputFit`.

- ``stretch``: the image is resized to S x S (bilinear, antialiased), masks with nearest-exact
  sampling; logits are resized from S x S to H x W. Exactly what the code did before the switch.
- ``pad``: the image is scaled by S / max(H, W) (aspect ratio kept), placed at the top-left and
  the bottom/right filled with the pixel convention's mean colour (zero after normalisation);
  masks are scaled the same way and padded with 0. Logits are cropped to the valid region, then
  resized to H x W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from model.config import RESIZE_MODES
from model.pixels import IMAGENET_RGB, convention_of, pad_colour

if TYPE_CHECKING:
    from model.config import ModelConfig


@dataclass(frozen=True)
class InputFit:
    """``size``: S; ``mode``: stretch or pad; ``pixels``: the pixel convention (its mean colour
    fills the padding)."""

    size: int
    mode: str = "stretch"
    pixels: str = IMAGENET_RGB

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize {self.mode!r} not in {RESIZE_MODES}")
        if int(self.size) < 1:
            raise ValueError(f"input size must be >= 1, got {self.size}")

    @classmethod
    def of(cls, cfg: ModelConfig) -> InputFit:
        """The fit of a model config (its ``backbone_format`` resolved)."""
        return cls(int(cfg.input_size), cfg.resize, convention_of(cfg.backbone_format))

    def region(self, h: int, w: int) -> tuple[int, int]:
        """(rows, cols) of the S x S input that the image covers."""
        s = int(self.size)
        if self.mode == "stretch":
            return s, s
        scale = s / max(h, w)
        return max(1, min(s, round(h * scale))), max(1, min(s, round(w * scale)))

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [0, 1] -> [B, 3, S, S]."""
        h, w = x.shape[-2:]
        s = int(self.size)
        if (h, w) == (s, s):
            return x
        rh, rw = self.region(h, w)
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0, 1)
        if (rh, rw) == (s, s):
            return x
        out = torch.empty(*x.shape[:-2], s, s, dtype=x.dtype, device=x.device)
        out[:] = torch.tensor(pad_colour(self.pixels), dtype=x.dtype,
                              device=x.device).view(3, 1, 1)
        out[..., :rh, :rw] = x
        return out

    def mask(self, m: torch.Tensor) -> torch.Tensor:
        """uint8 [H, W] -> uint8 [S, S] (nearest-exact; padding 0)."""
        h, w = m.shape[-2:]
        s = int(self.size)
        if (h, w) == (s, s):
            return m
        rh, rw = self.region(h, w)
        t = F.interpolate(m[None, None].float(), size=(rh, rw), mode="nearest-exact")[0, 0]
        t = t.to(m.dtype)
        if (rh, rw) == (s, s):
            return t
        out = torch.zeros(s, s, dtype=m.dtype, device=m.device)
        out[:rh, :rw] = t
        return out

    def restore(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """float [k, 1, S, S] -> [k, 1, H, W]: the valid region cropped, then bilinear."""
        h, w = int(size[0]), int(size[1])
        rh, rw = self.region(h, w)
        x = logits.float()
        if self.mode == "pad":
            x = x[..., :rh, :rw]
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
