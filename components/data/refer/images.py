"""Each referenced image checked once: listed in instances.json, a safe file name under the image
root, present, fully decodable, the size instances.json says, and under the pixel limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from components.data import storage
from components.data.image_check import DEFAULT_MAX_PIXELS, decode_check, pixel_limit
from components.data.refer.quarantine import Problem
from components.data.refer.values import as_label

__all__ = ["DEFAULT_MAX_PIXELS", "check_image", "check_images"]


def check_image(uri: str, height: int, width: int, max_pixels: int) -> Problem | None:
    """Read and decode one image (:func:`components.data.image_check.decode_check`); the problem
    that refuses it, or None."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return Problem("missing_image", f"{uri}: no such file")
    size, problem = decode_check(data, max_pixels)
    if problem is not None:
        return Problem(problem.code, f"{uri}: {problem.detail}")
    w, h = size
    if (w, h) != (width, height):
        return Problem(
            "size_mismatch",
            f"{uri}: image is {w}x{h} but instances.json says {width}x{height} (width x height)",
        )
    return None


def _locate(image_id: int, info: dict | None, images_root: str):
    """(uri, height, width) of an instances.json entry, or the problem with the entry."""
    if info is None:
        return Problem("missing_image", f"image_id {image_id} is not in instances.json")
    try:
        uri = storage.safe_join(images_root, as_label(info.get("file_name")),
                                record=f"image_id {image_id}")
        return uri, int(info["height"]), int(info["width"])
    except storage.UnsafePathError as exc:
        return Problem("unsafe_path", str(exc))
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        return Problem("bad_image_record", f"image_id {image_id}: bad instances.json entry ({exc})")


def check_images(
    images: dict[int, dict | None], images_root: str, max_pixels: int, workers: int = 4
) -> dict[int, tuple[str | None, Problem | None]]:
    """Check each image once. ``images``: image_id -> instances.json entry (None: not listed).
    Returns image_id -> (image_uri or None, problem or None)."""
    out: dict[int, tuple[str | None, Problem | None]] = {}
    jobs: dict[int, tuple[str, int, int]] = {}
    for image_id, info in images.items():
        found = _locate(image_id, info, images_root)
        if isinstance(found, Problem):
            out[image_id] = (None, found)
        else:
            jobs[image_id] = found

    with pixel_limit(max_pixels), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            i: pool.submit(check_image, uri, h, w, max_pixels) for i, (uri, h, w) in jobs.items()
        }
        for i, fut in futures.items():
            out[i] = (jobs[i][0], fut.result())
    return out
