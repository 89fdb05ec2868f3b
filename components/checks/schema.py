"""Reading a manifest leniently, and the schema check of its rows.

:func:`read_raw` checks only what makes a table a manifest (Parquet, schema version, column names
and types); row-level faults that ``components.data.manifest.read_manifest`` refuses (duplicate
ids, bad masks) are left to :func:`schema_reasons`, which names them per row: ``sample_id`` present
and unique, split known, ids and fields present, image_uri safe (no NUL; an s3:// key without
``..`` or an absolute part: it becomes a path under the image cache), mask a decodable COCO RLE
covering size[0] x size[1] pixels and not empty, bbox of positive size inside the image (the
mask's size, with a tolerance in pixels).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.checks.masks import rle_validate
from components.data import manifest as mf
from components.data import storage
from components.errors import MissingInputError


def read_raw(uri: str):
    """(pyarrow table, DataFrame) of a manifest whose header and column types are right; row-level
    faults (duplicate ids, bad masks) are left for the schema check."""
    import pyarrow as pa

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise MissingInputError(str(exc)) from None
    try:
        table = mf.parquet_table(data)
    except pa.ArrowInvalid as exc:
        raise mf.ManifestError(f"{uri}: not a Parquet file ({exc})") from None
    table = mf.conform_table(table, uri)
    df = pd.DataFrame({name: table.column(name).to_pylist() for name in mf.COLUMNS})
    return table, df


def schema_reasons(df: pd.DataFrame, known_splits: tuple[str, ...], bbox_tolerance: float,
                   out: list[list[str]]) -> None:
    """Append the schema reasons of every row of ``df`` to ``out`` (one list per row)."""
    _ids_and_fields(df, known_splits, out)
    _image_uris(df, out)
    heights, widths = _masks(df, out)
    _bboxes(df, heights, widths, bbox_tolerance, out)


def _ids_and_fields(df: pd.DataFrame, known_splits: tuple[str, ...], out: list[list[str]]) -> None:
    ids = df["sample_id"]
    for i in np.flatnonzero(ids.map(lambda v: not isinstance(v, str) or not v.strip()).to_numpy()):
        out[i].append("missing: sample_id")
    counts = ids.map(ids.value_counts(dropna=True))
    for i in np.flatnonzero((counts.fillna(1) > 1).to_numpy()):
        out[i].append(f"duplicate id: sample_id {ids.iat[i]!r} occurs {int(counts.iat[i])} times")
    known = set(known_splits)
    for i in np.flatnonzero(~df["split"].isin(known).to_numpy()):
        out[i].append(f"unknown split: {df['split'].iat[i]!r} (known: {', '.join(known_splits)})")
    for col in ("dataset", "image_uri", "category"):
        bad = df[col].map(lambda v: not isinstance(v, str) or not v.strip()).to_numpy()
        for i in np.flatnonzero(bad):
            out[i].append(f"missing: {col}")
    for col in ("image_id", "ref_id", "ann_id"):
        for i in np.flatnonzero(df[col].isna().to_numpy()):
            out[i].append(f"missing: {col}")


def _image_uris(df: pd.DataFrame, out: list[list[str]]) -> None:
    """An image_uri must not lead out of the folder it is read or cached into: no NUL byte, and
    an s3:// key without ``..`` or an absolute part (it becomes ``<cache>/<bucket>/<key>``)."""
    for i, uri in enumerate(df["image_uri"]):
        if not isinstance(uri, str) or not uri.strip():
            continue  # "missing: image_uri" already
        why = unsafe_uri(uri)
        if why:
            out[i].append(f"unsafe image_uri: {why}")


def unsafe_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be used safely (a NUL byte; an s3:// key that would leave the image
    cache), or None."""
    if "\x00" in uri:
        return f"{uri!r} contains a NUL byte"
    if not storage.is_s3(uri):
        return None
    try:
        storage.cache_path(uri, "cache")
    except (storage.UnsafePathError, storage.BadURIError) as exc:
        return str(exc)
    return None


def _masks(df: pd.DataFrame, out: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Mask reasons (distinct (size, counts) validated once); returns the image height and width
    of every row whose mask is decodable (NaN elsewhere)."""
    masks = df["mask"].tolist()
    keys = [(tuple(m["size"]) if isinstance(m, dict) and m.get("size") is not None else None,
             m.get("counts") if isinstance(m, dict) else None) for m in masks]
    uniq = list(dict.fromkeys(keys))
    ok_u, area_u, prob_u = rle_validate([k[1] for k in uniq], [k[0] for k in uniq])
    pos = {k: j for j, k in enumerate(uniq)}
    heights = np.full(len(df), np.nan)
    widths = np.full(len(df), np.nan)
    for i, k in enumerate(keys):
        j = pos[k]
        if masks[i] is None:
            out[i].append("mask: missing")
        elif not ok_u[j]:
            out[i].append(f"mask not decodable: {prob_u[j]}")
        elif area_u[j] == 0:
            out[i].append("mask: empty (no foreground pixel)")
        if ok_u[j]:
            heights[i], widths[i] = k[0]
    return heights, widths


def _bboxes(df: pd.DataFrame, heights: np.ndarray, widths: np.ndarray, tol: float,
            out: list[list[str]]) -> None:
    """bbox [x, y, w, h] of positive size inside the image (mask size = image size)."""
    bb = np.full((len(df), 4), np.nan)
    for i, v in enumerate(df["bbox"]):
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (4,) or not np.isfinite(arr).all():
            out[i].append(f"bbox: expected 4 finite numbers [x, y, w, h], got {v!r}")
        else:
            bb[i] = arr
    x, y, w, h = bb.T
    with np.errstate(invalid="ignore"):
        nonpos = (w <= 0) | (h <= 0)
        outside = (x < -tol) | (y < -tol) | (x + w > widths + tol) | (y + h > heights + tol)
    for i in np.flatnonzero(nonpos):
        out[i].append(f"bbox: width/height must be > 0, got {list(bb[i])}")
    for i in np.flatnonzero(outside & ~nonpos & np.isfinite(widths)):
        out[i].append(f"bbox {list(bb[i])} outside the {int(widths[i])}x{int(heights[i])} image")
