"""Training augmentations that keep every expression true of its image, drawn per item by the
sampler from (seed, epoch) and applied by :class:`~components.data.refdata.RefDataset`.

- ``hflip``: mirror left-right and swap the left/right words (flip.py, ``HORIZONTAL``).
- ``vflip``: mirror top-bottom and swap the top/bottom words (flip.py, ``VERTICAL``).
- ``zoom_out``: shrink the image by a factor drawn in [1 - zoom_out, 1] and place it at a random
  offset inside its region of the input; the freed border takes the pixel convention's mean colour
  (the colour of ``resize: pad``'s padding) and is background in every mask. Nothing of the image
  is cut and nothing moves relative to anything else, so positions ("on the left", "left of the
  blue square"), sizes ("the big circle") and colours stay as true as they were; the network sees
  each object at other sizes and places, which fights the memorising of a small training set.

An item drawn for a flip whose expressions hold a word without a mirror in the vocabulary is not
flipped (never wrongly flipped); its zoom still applies.

Each augmentation draws from a generator of its own, so turning one on or off leaves the others'
draws and the order of the items as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

FLIP_H, FLIP_V = 1, 2  # bits of an item's flip code
_SALT = {"hflip": 7_919_000_000, "vflip": 7_919_500_000, "zoom": 8_111_000_000}


@dataclass(frozen=True)
class Augmentation:
    """The shares of training items flipped (``hflip``, ``vflip``) and the largest shrink
    (``zoom_out``; 0 = off, 0.3 = each item shrunk by a factor drawn in [0.7, 1])."""

    hflip: float = 0.0
    vflip: float = 0.0
    zoom_out: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= float(self.zoom_out) < 1.0:
            raise ValueError(f"zoom_out must lie in [0, 1), got {self.zoom_out}")

    @property
    def active(self) -> bool:
        return self.hflip > 0 or self.vflip > 0 or self.zoom_out > 0

    def draws(self, n: int, seed: int, epoch: int) -> list[tuple[int, tuple | None]]:
        """(flip code, zoom) for each of an epoch's ``n`` items; zoom is (scale, x, y) with x, y
        in [0, 1] the offset as a share of the freed room, or None."""
        h = _bernoulli(n, self.hflip, seed, epoch, "hflip")
        v = _bernoulli(n, self.vflip, seed, epoch, "vflip")
        codes = [FLIP_H * a + FLIP_V * b for a, b in zip(h, v, strict=True)]
        return list(zip(codes, self._zooms(n, seed, epoch), strict=True))

    def _zooms(self, n: int, seed: int, epoch: int) -> list[tuple | None]:
        if self.zoom_out <= 0 or n == 0:
            return [None] * n
        import torch

        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + _SALT["zoom"])
        u = torch.rand(n, 3, generator=g, dtype=torch.float64).tolist()
        return [(1.0 - self.zoom_out * a, x, y) for a, x, y in u]


def _bernoulli(n: int, probability: float, seed: int, epoch: int, name: str) -> list[bool]:
    if probability <= 0 or n == 0:
        return [False] * n
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + _SALT[name])
    return (torch.rand(n, generator=g) < probability).tolist()


def zoom_out(t, region: tuple[int, int], zoom: tuple[float, float, float], fill, binary: bool):
    """``t`` [..., S, S] with its image region (rows, cols at the top left) shrunk by
    ``zoom[0]`` and placed at the offset ``zoom[1:]`` (shares of the freed room) inside that
    region; the rest of the region is ``fill`` (a [C, 1, 1] tensor or a number). ``binary``:
    masks, resampled bilinearly and thresholded at one half."""
    import torch.nn.functional as F

    rows, cols = region
    scale, ox, oy = zoom
    h, w = max(1, round(rows * scale)), max(1, round(cols * scale))
    if (h, w) == (rows, cols):
        return t
    lead = t.shape[:-2]
    small = F.interpolate(t[..., :rows, :cols].reshape(-1, 1, rows, cols).float(), size=(h, w),
                          mode="bilinear", align_corners=False,
                          antialias=not binary).reshape(*lead, h, w)
    if binary:
        small = (small > 0.5).to(t.dtype)
    out = t.clone()
    out[..., :rows, :cols] = fill
    top, left = round(oy * (rows - h)), round(ox * (cols - w))
    out[..., top:top + h, left:left + w] = small.to(t.dtype)
    return out
