"""COCO segmentation -> the manifest's compressed RLE, with the checks that the object lies inside
its image and covers at least one pixel."""

from __future__ import annotations

import numpy as np

from components.data import manifest as mf
from components.data.refer.quarantine import Problem


def _outside_bbox(aid, bbox, height: int, width: int, tolerance: float) -> Problem | None:
    x, y, w, h = (float(v) for v in bbox)
    if (x < -tolerance or y < -tolerance or x + w > width + tolerance
            or y + h > height + tolerance or w < 0 or h < 0):
        return Problem(
            "mask_out_of_bounds",
            f"ann_id {aid}: bbox {list(bbox)} lies outside the {width}x{height} image",
        )
    return None


def _polygons_rle(aid, segm: list, height: int, width: int, tolerance: float):
    """Polygons -> (merged RLE, None) or (None, problem)."""
    from pycocotools import mask as mask_utils

    polys = [list(map(float, p)) for p in segm]
    for p in polys:
        if len(p) < 6 or len(p) % 2:
            return None, Problem(
                "bad_segmentation",
                f"ann_id {aid}: polygon with {len(p)} coordinates (need an even number >= 6)",
            )
        xs, ys = np.asarray(p[0::2]), np.asarray(p[1::2])
        if (xs.min() < -tolerance or ys.min() < -tolerance
                or xs.max() > width + tolerance or ys.max() > height + tolerance):
            return None, Problem(
                "mask_out_of_bounds",
                f"ann_id {aid}: polygon spans x {xs.min():g}..{xs.max():g}, "
                f"y {ys.min():g}..{ys.max():g}, outside the {width}x{height} image",
            )
    if not polys:
        return None, Problem("bad_segmentation", f"ann_id {aid}: no polygon")
    return mask_utils.merge(mask_utils.frPyObjects(polys, height, width)), None


def _coco_rle(aid, segm: dict, height: int, width: int):
    """A COCO RLE (uncompressed counts list or compressed string) -> (RLE, None) or (None, problem)."""
    from pycocotools import mask as mask_utils

    size = [int(s) for s in segm["size"]]
    if size != [height, width]:
        return None, Problem(
            "mask_out_of_bounds",
            f"ann_id {aid}: RLE size {size} differs from the image's [{height}, {width}]",
        )
    counts = segm["counts"]
    if isinstance(counts, list):
        if sum(int(c) for c in counts) != height * width:
            return None, Problem(
                "bad_segmentation",
                f"ann_id {aid}: uncompressed RLE covers {sum(counts)} pixels, "
                f"image has {height * width}",
            )
        return mask_utils.frPyObjects(
            {"size": size, "counts": [int(c) for c in counts]}, height, width
        ), None
    counts = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    return {"size": size, "counts": counts}, None


def annotation_rle(ann: dict, height: int, width: int, tolerance: float = 1.0):
    """COCO segmentation -> (the manifest's RLE dict, with str counts, None) or (None, problem).

    Same conversion as pycocotools ``COCO.annToRLE`` (polygons: frPyObjects + merge; uncompressed
    RLE: frPyObjects; compressed RLE: as is), plus checks that the object lies inside the image.
    """
    from pycocotools import mask as mask_utils

    aid = ann.get("id")
    segm = ann.get("segmentation")
    bbox = ann.get("bbox")
    try:
        problem = _outside_bbox(aid, bbox, height, width, tolerance) if bbox is not None else None
        if problem is not None:
            return None, problem
        if isinstance(segm, list):
            rle, problem = _polygons_rle(aid, segm, height, width, tolerance)
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            rle, problem = _coco_rle(aid, segm, height, width)
        else:
            return None, Problem("bad_segmentation",
                                 f"ann_id {aid}: segmentation is neither polygons nor RLE")
        if problem is not None:
            return None, problem
        mask = mask_utils.decode(rle)  # validates the RLE and normalises its encoding
    except (TypeError, ValueError, KeyError, UnicodeEncodeError) as exc:
        return None, Problem("bad_segmentation", f"ann_id {aid}: invalid segmentation ({exc})")
    if mask.shape != (height, width):
        return None, Problem(
            "bad_segmentation", f"ann_id {aid}: mask shape {mask.shape} != ({height}, {width})"
        )
    if not mask.any():
        return None, Problem("empty_mask", f"ann_id {aid}: the mask covers no pixel")
    return mf.encode_mask(mask), None
