"""Masks on the wire and on disk: COCO compressed RLE (the manifest, batch outputs, the pyfunc's
``mask_rle``) and 1-bit PNG (the pyfunc's ``mask_png``). The one codec every module uses."""

from __future__ import annotations

import base64
import io

import numpy as np


def encode_rle(mask: np.ndarray) -> dict:
    """bool/0-1 HxW -> COCO compressed RLE ``{"size": [h, w], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (str or bytes counts) -> uint8 HxW array of 0/1."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    counts = counts.encode("ascii") if isinstance(counts, str) else counts
    return mask_utils.decode({"size": [int(s) for s in rle["size"]], "counts": counts})


def encode_png(mask: np.ndarray) -> bytes:
    """bool/0-1 HxW -> 1-bit PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: str | bytes) -> np.ndarray:
    """A mask PNG (base64 text or bytes) -> uint8 HxW of 0/1."""
    from PIL import Image

    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as im:
        return (np.asarray(im.convert("L")) > 127).astype(np.uint8)
