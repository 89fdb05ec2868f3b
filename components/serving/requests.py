"""Request decoding: an encoded image (bytes, base64 text or a ``data:`` URL) to RGB pixels, and
the error a request row that cannot be served raises."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from components import errors


class InputError(errors.InputError):
    """A request row that cannot be served; the message names the row."""


def is_missing(value: Any) -> bool:
    """None, NaN or blank text: a request column left empty for this row."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def image_bytes(value: Any, row: int | str = "?") -> bytes:
    """The encoded image of a request cell: bytes as they are, text as base64 (optionally a
    ``data:image/...;base64,`` URL)."""
    if isinstance(value, memoryview | bytearray):
        value = bytes(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"row {row}: image is a string but not valid base64: {exc}") from exc
    if not isinstance(value, bytes) or not value:
        raise InputError(f"row {row}: image must be PNG/JPEG bytes or a base64 string, "
                         f"got {type(value).__name__}")
    return value


def decode_image(value: Any, row: int | str = "?") -> np.ndarray:
    """PNG/JPEG bytes or base64 text -> uint8 HxWx3 RGB (EXIF orientation applied)."""
    return decode_image_for(value, row)[0]


def decode_image_for(value: Any, row: int | str = "?", min_side: int | None = None
                     ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode for a network of input size ``min_side``: a JPEG at least twice that size is
    decoded at 1/2, 1/4 or 1/8 scale by the DCT (never below ``min_side``; the network resizes
    to min_side anyway). Returns (uint8 hxwx3, full (H, W) after EXIF orientation)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    raw = image_bytes(value, row)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            if min_side and im.format == "JPEG":
                im.draft("RGB", (int(min_side), int(min_side)))
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"row {row}: image cannot be decoded as PNG/JPEG: {exc}") from exc
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"row {row}: image has no pixels")
    full = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    if min_side is None or arr.shape[:2] == full:
        full = arr.shape[:2]
    return arr, (int(full[0]), int(full[1]))
