"""Opening an image once to learn whether a step can use it: the decode check shared by
``refseg data import-refer`` (:mod:`components.data.refer.images`) and check-translations
(:mod:`components.checks.images`).

:func:`decode_check` reads the header, refuses more pixels than the limit before decoding
anything (the decompression-bomb guard), verifies the file and decodes it fully (a truncated file
fails only when decoded). :func:`pixel_limit` sets Pillow's own limit for the duration of a batch
of checks and turns its ``DecompressionBombWarning`` into an error, so that a bomb is a reason,
never a crash or a warning.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class DecodeProblem:
    """Why an image cannot be used: ``code`` (corrupt_image, truncated_image, too_many_pixels)
    and a ``detail`` that does not repeat the image's name."""

    code: str
    detail: str


@contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's ``MAX_IMAGE_PIXELS`` set to ``max_pixels`` (it is process-wide: restored on exit)
    and its DecompressionBombWarning raised as an error (Pillow only warns between the limit and
    twice the limit)."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def decode_check(data: bytes | str, max_pixels: int
                 ) -> tuple[tuple[int, int] | None, DecodeProblem | None]:
    """((width, height), None) for an image (its bytes, or a local file's path: read as it is
    decoded, never whole into memory) that decodes fully within ``max_pixels``, else (size or
    None, the problem). Call it inside :func:`pixel_limit`."""
    from PIL import Image, UnidentifiedImageError

    def source():
        return io.BytesIO(data) if isinstance(data, bytes) else data

    size = None
    try:
        with Image.open(source()) as im:
            size = w, h = im.size
            if w * h > max_pixels:
                return size, DecodeProblem("too_many_pixels",
                                           f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
            im.verify()
        with Image.open(source()) as im:
            if im.format == "JPEG":  # DCT-domain downscale: reads every byte, decodes ~5x faster
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
            im.load()  # verify() does not decode: a truncated file fails only here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return size, DecodeProblem("too_many_pixels", f"over the pixel limit {max_pixels} ({exc})")
    except UnidentifiedImageError:
        return size, DecodeProblem("corrupt_image", "not a decodable image")
    except (OSError, SyntaxError, ValueError) as exc:
        code = "truncated_image" if "truncated" in str(exc).lower() else "corrupt_image"
        return size, DecodeProblem(code, f"cannot decode ({exc})")
    return size, None
