"""Request decoding: an encoded image (bytes, base64 text or a ``data:`` URL) to RGB pixels within
a pixel limit, and the error a request row that cannot be served raises."""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
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


DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "REFSEG_MAX_PIXELS"
# What Image.reduce accepts (P, 1 and I;16 images are made RGB first).
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F")
# The pixel count in Pillow's DecompressionBombError message.
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class PixelLimit:
    """The most pixels (width x height, before any reduced-scale decoding) an image may have, and
    the settings that change it (named when an image is refused)."""

    pixels: int = DEFAULT_MAX_PIXELS
    setting: str = f"max_pixels or {MAX_PIXELS_ENV}"

    def refuse(self, where: str, pixels: int, size: tuple[int, int] | None = None
               ) -> InputError:
        """The one-line error for an image of ``pixels`` pixels (``size`` = (w, h) if known)."""
        what = f"{size[0]}x{size[1]} ({pixels:,} pixels)" if size else f"{pixels:,} pixels"
        limit = self.pixels
        hard = _pillow_limit()
        if hard is not None and limit > hard:
            limit, how = hard, f"Pillow's own limit; {self.setting} cannot raise it"
        else:
            how = f"set by {self.setting}"
        return InputError(f"{where}: image of {what} is over the limit of {limit:,} pixels "
                          f"({how})")


def _pillow_limit() -> int | None:
    from PIL import Image

    return 2 * int(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else None


def pixel_limit(value: Any = None, option: str = "max_pixels") -> PixelLimit:
    """The pixel limit in effect: ``value`` when given (the CLI's ``--max-pixels``, the
    predictor's ``max_pixels``, the pyfunc's model config ``max_pixels``), else
    ``$REFSEG_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`. ``option`` names the first setting
    in the refusal. A value that is not a positive whole number is a ConfigError."""
    source, raw = option, value
    if is_missing(value):
        source, raw = MAX_PIXELS_ENV, os.environ.get(MAX_PIXELS_ENV, "")
    setting = f"{option} or {MAX_PIXELS_ENV}"
    if is_missing(raw):
        return PixelLimit(DEFAULT_MAX_PIXELS, setting)
    try:
        number = float(str(raw).strip().replace("_", ""))
    except ValueError:
        number = float("nan")
    if not (number >= 1 and number.is_integer()):
        raise errors.ConfigError(f"{source}: expected a whole number of pixels >= 1 (e.g. "
                                 f"{DEFAULT_MAX_PIXELS}), got {raw!r}")
    return PixelLimit(int(number), setting)


def _where(row: int | str) -> str:
    """``row 3`` for a request row; a name (``--image x.png``) as it is."""
    return f"row {row}" if isinstance(row, int) or row == "?" else str(row)


@contextmanager
def _opened(raw: bytes, row: int | str, limit: PixelLimit):
    """The encoded image opened lazily (Pillow reads the header only), refused above ``limit``
    before any pixel is decoded; Pillow's decompression-bomb refusal becomes the same error and
    an undecodable image an InputError naming the row."""
    from PIL import Image, UnidentifiedImageError

    where = _where(row)
    try:
        with _bomb_warning_off(limit):
            with Image.open(io.BytesIO(raw)) as im:
                w, h = im.size
                if w * h > limit.pixels:
                    raise limit.refuse(where, w * h, (w, h))
                yield im
    except Image.DecompressionBombError as exc:
        found = _BOMB_PIXELS.search(str(exc))
        raise limit.refuse(where, int(found.group(1)) if found else limit.pixels + 1) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{where}: image cannot be decoded as PNG/JPEG: {exc}") from exc


@contextmanager
def _bomb_warning_off(limit: PixelLimit):
    """Pillow warns about images between its warning and refusal sizes; a limit set that high
    is checked anyway, so the warning is silenced then (only then: it is process-wide state)."""
    from PIL import Image

    if not Image.MAX_IMAGE_PIXELS or limit.pixels <= Image.MAX_IMAGE_PIXELS:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _oriented(w: int, h: int, orientation: int) -> tuple[int, int]:
    """(H, W) as shown: EXIF orientations 5-8 swap the sides."""
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def image_size(value: Any, row: int | str = "?", limit: PixelLimit | None = None
               ) -> tuple[int, int]:
    """(H, W) of an encoded image as shown (EXIF orientation applied), from its header alone;
    refused above ``limit`` (default: :func:`pixel_limit`)."""
    raw = image_bytes(value, row)
    with _opened(raw, row, limit or pixel_limit()) as im:
        return _oriented(*im.size, im.getexif().get(0x0112, 1))


def decode_image(value: Any, row: int | str = "?", limit: PixelLimit | None = None
                 ) -> np.ndarray:
    """PNG/JPEG bytes or base64 text -> uint8 HxWx3 RGB at full size (EXIF orientation applied)."""
    return decode_image_for(value, row, limit=limit)[0]


def decode_image_for(value: Any, row: int | str = "?", min_side: int | None = None,
                     limit: PixelLimit | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode for a network of input size ``min_side``; the one way serving and ``refseg
    predict`` open an image. The header is read first: an image over ``limit`` (default:
    :func:`pixel_limit`) is refused before decoding. With ``min_side``, a JPEG is decoded at
    1/2, 1/4 or 1/8 scale by the DCT (Pillow's draft mode) and any image whose shorter side is
    still at least twice ``min_side`` is then box-reduced by a whole factor, never below
    ``min_side`` (the network resizes to ``min_side`` anyway); the RGB conversion happens after
    that. Returns (uint8 hxwx3 RGB, full (H, W) after EXIF orientation)."""
    raw = image_bytes(value, row)
    with _opened(raw, row, limit or pixel_limit()) as im:
        orientation = im.getexif().get(0x0112, 1)
        full = _oriented(*im.size, orientation)
        if min_side and im.format == "JPEG":
            im.draft("RGB", (int(min_side), int(min_side)))
        if min_side:
            im = _reduced(im, int(min_side))
        im = _upright(im, orientation)
        arr = np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{_where(row)}: image has no pixels")
    if min_side is None or arr.shape[:2] == full:
        full = arr.shape[:2]
    return arr, (int(full[0]), int(full[1]))


def _upright(im, orientation: int):
    """``im`` turned as its EXIF orientation says (as ``ImageOps.exif_transpose``), from the
    orientation read off the original: a reduced image no longer carries the EXIF."""
    from PIL.Image import Transpose as T

    method = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
              6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)
    return im.transpose(method) if method is not None else im


def _reduced(im, min_side: int):
    """``im`` box-reduced by the largest whole factor that keeps both sides >= ``min_side``
    (unchanged below a factor of 2); modes Pillow cannot reduce are made RGB first."""
    factor = min(im.size) // min_side
    if factor < 2:
        return im
    if im.mode not in _REDUCIBLE_MODES:
        im = im.convert("RGB")
    return im.reduce(factor)
