"""The image check: every distinct image of the manifest opened once, before any training.

An image (``image_uri``) fails, and with it every row that uses it, when:

- its scheme is not allowed: a local path or ``s3://`` only (``http://``, ``file://``, ... are
  refused: no step can read them);
- it lies outside the allowed roots (:class:`ImagePolicy`; a local path is resolved, symbolic
  links included, before it is compared);
- it is missing, or a local path that is not a regular file (a folder, a device, a FIFO);
- it is not a decodable image, is cut short (decoded fully), or has more pixels than the limit
  (the decompression-bomb guard: the header is read first, nothing is decoded);

and a row fails when its mask (COCO RLE ``size``) is not the size of its image.

URIs that the schema check already refuses (missing, NUL byte, an s3:// key that would leave the
image cache) are not opened. s3:// images are read through ``components.data.storage`` (its
retries and checksums), local ones from disk; decoding runs on a few threads (Pillow releases the
GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd

from components.checks.schema import unsafe_uri
from components.data import storage
from components.data.image_check import DEFAULT_MAX_PIXELS, decode_check, pixel_limit
from components.errors import ConfigError

S3_ANY = "s3://"


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may be and how big: ``roots`` (local folders and s3:// prefixes; ``s3://``
    alone allows every bucket) and ``max_pixels`` (width x height)."""

    roots: tuple[str, ...]
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.max_pixels <= loader_pixel_limit():
            raise ConfigError(f"max_image_pixels must be in [1, {loader_pixel_limit()}] (the "
                              f"training loader refuses bigger images), got {self.max_pixels}")
        if not self.roots:
            raise ConfigError("image roots: give at least one local folder or s3:// prefix")
        for root in self.roots:
            if "://" in root and not storage.is_s3(root):
                raise ConfigError(f"image root {root!r}: give a local folder or an s3:// prefix")

    @classmethod
    def of(cls, manifest_uri: str, roots: list[str] | tuple[str, ...] | None,
           max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None) -> ImagePolicy:
        """The policy for a manifest: the given ``roots``, or by default the folder that holds a
        local manifest plus any s3:// object."""
        return cls(tuple(roots) if roots else default_roots(manifest_uri), int(max_pixels),
                   max(1, min(8, workers or 4)))

    def outside(self, uri: str) -> str | None:
        """Why ``uri`` is not under an allowed root (or has a refused scheme), or None."""
        if storage.is_s3(uri):
            s3_roots = [r for r in self.roots if storage.is_s3(r)]
            if any(r == S3_ANY or uri.startswith(r.rstrip("/") + "/") for r in s3_roots):
                return None
            return f"outside the allowed roots ({', '.join(self.roots)})"
        if "://" in uri:
            return f"scheme {uri.split('://', 1)[0]!r} is not allowed (local paths and s3:// only)"
        real = os.path.realpath(uri)
        for root in self.roots:
            if storage.is_s3(root):
                continue
            base = os.path.realpath(root)
            if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
                return None
        return f"outside the allowed roots ({', '.join(self.roots)})" + (
            f"; it resolves to {real}" if real != os.path.abspath(uri) else "")


def loader_pixel_limit() -> int:
    """The most pixels the training loader opens: Pillow refuses more than twice its
    ``MAX_IMAGE_PIXELS`` (a decompression bomb) and only warns below."""
    from PIL import Image

    return 2 * int(Image.MAX_IMAGE_PIXELS)


def default_roots(manifest_uri: str) -> tuple[str, ...]:
    """The folder of a local manifest and every s3:// object; every s3:// object only for an
    s3:// manifest."""
    if storage.is_s3(manifest_uri):
        return (S3_ANY,)
    return (os.path.dirname(os.path.abspath(manifest_uri)), S3_ANY)


@dataclass(frozen=True)
class _Seen:
    """What opening one image found: its (width, height) and the reason it fails (or None)."""

    size: tuple[int, int] | None
    problem: str | None


def image_reasons(df: pd.DataFrame, policy: ImagePolicy, out: list[list[str]]) -> dict:
    """Append the image reasons of every row of ``df`` to ``out``; each distinct image_uri is
    checked once. Returns statistics (images checked, refused)."""
    uris = df["image_uri"].tolist()
    distinct = [u for u in dict.fromkeys(uris) if isinstance(u, str) and u.strip()
                and unsafe_uri(u) is None]
    with pixel_limit(policy.max_pixels), ThreadPoolExecutor(policy.workers) as pool:
        seen = dict(zip(distinct, pool.map(lambda u: _look(u, policy), distinct), strict=True))
    mask_sizes = [_mask_size(m) for m in df["mask"]]
    for i, uri in enumerate(uris):
        got = seen.get(uri)
        if got is None:
            continue
        if got.problem:
            out[i].append(got.problem)
        elif mask_sizes[i] is not None and mask_sizes[i] != got.size[::-1]:
            h, w = mask_sizes[i]
            out[i].append(f"mask size differs: the mask is {h}x{w} but image {uri} is "
                          f"{got.size[1]}x{got.size[0]} (height x width)")
    refused = sum(1 for s in seen.values() if s.problem)
    return {"images": {"checked": len(seen), "refused": refused,
                       "max_pixels": policy.max_pixels, "roots": list(policy.roots)}}


def _look(uri: str, policy: ImagePolicy) -> _Seen:
    """Open and decode one image; its size and the reason it fails, if any."""
    why = policy.outside(uri)
    if why:
        return _Seen(None, f"refused image_uri: {uri} {why}")
    try:
        data = _read(uri)
    except (FileNotFoundError, NotADirectoryError):
        return _Seen(None, f"missing image: {uri}: no such file")
    except (OSError, storage.StorageError) as exc:
        return _Seen(None, f"unreadable image: {uri}: {exc}")
    size, problem = decode_check(data, policy.max_pixels)
    if problem is not None:
        kind = {"too_many_pixels": "too many pixels", "truncated_image": "truncated image"}.get(
            problem.code, "not an image")
        return _Seen(size, f"{kind}: {uri}: {problem.detail}")
    return _Seen(size, None)


def _read(uri: str) -> bytes | str:
    """The bytes of an s3:// object, or the path of a local regular file (never a device or a
    FIFO, whose reading could block or never end)."""
    if storage.is_s3(uri):
        return storage.read_bytes(uri)
    if not os.path.exists(uri):
        raise FileNotFoundError(uri)
    if not os.path.isfile(uri):
        raise OSError("not a regular file")
    if not os.access(uri, os.R_OK):
        raise OSError("permission denied")
    return uri


def _mask_size(mask) -> tuple[int, int] | None:
    """(height, width) of a COCO RLE's ``size``, or None when it has none (the schema check
    reports that)."""
    try:
        size = mask["size"]
        if len(size) != 2:
            return None
        return int(size[0]), int(size[1])
    except (TypeError, KeyError, ValueError, IndexError):
        return None
