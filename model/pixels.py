"""Pixel conventions: how a [0, 1] RGB image becomes the backbone's input, and the colour that
normalises to zero (the padding colour of ``resize: pad``, model/geometry.py).

- ``imagenet_rgb`` (``backbone_format: torchvision``): RGB, (x - mean) / std with ImageNet's
  statistics, the convention of torchvision's pretrained ResNets.
- ``caffe_bgr`` (``backbone_format: deeplab``): channels reordered to BGR, scaled to 0-255, minus
  the Caffe ResNet mean pixel, no division: the convention the DeepLab-v2 Caffe weights were
  trained with.
"""

from __future__ import annotations

from functools import lru_cache

import torch

IMAGENET_RGB = "imagenet_rgb"
CAFFE_BGR = "caffe_bgr"
CONVENTIONS = (IMAGENET_RGB, CAFFE_BGR)
CONVENTION_OF_FORMAT = {"torchvision": IMAGENET_RGB, "deeplab": CAFFE_BGR}

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)  # B, G, R on 0-255


def convention_of(backbone_format: str) -> str:
    """The pixel convention of a resolved ``backbone_format`` (torchvision or deeplab)."""
    try:
        return CONVENTION_OF_FORMAT[backbone_format]
    except KeyError:
        raise ValueError(f"backbone_format {backbone_format!r} has no pixel convention; resolve "
                         "'auto' first (model/backbone_weights.py)") from None


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"pixel convention {convention!r} not in {CONVENTIONS}")


def pad_colour(convention: str) -> tuple[float, float, float]:
    """The [0, 1] RGB colour that :func:`normalise` maps to zero: the convention's mean."""
    _check(convention)
    if convention == IMAGENET_RGB:
        return IMAGENET_MEAN
    b, g, r = CAFFE_MEAN_BGR
    return (r / 255.0, g / 255.0, b / 255.0)


def normalise(images: torch.Tensor, convention: str) -> torch.Tensor:
    """[B, 3, H, W] RGB images in [0, 1] -> the backbone's input under ``convention``."""
    _check(convention)
    mean, std = _constants(convention, images.dtype, images.device)
    if convention == IMAGENET_RGB:
        return (images - mean) / std
    return images.flip(1) * 255.0 - mean


@lru_cache(maxsize=16)
def _constants(convention: str, dtype: torch.dtype, device: torch.device):
    """(mean, std) as [1, 3, 1, 1] tensors, made in float32 and cast (as the buffers before)."""
    if convention == IMAGENET_RGB:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    else:
        mean, std = torch.tensor(CAFFE_MEAN_BGR), torch.ones(3)
    return (mean.view(1, 3, 1, 1).to(device, dtype), std.view(1, 3, 1, 1).to(device, dtype))
