"""The bilingual manifest: one Parquet table, one row per referring expression.

Columns (docs/architecture.md, "What each step hands to the next"):

    sample_id  str   unique id of the expression (e.g. "refcoco/unc/sent_123", "synth/s000042_e3")
    dataset    str   dataset name ("refcoco", "refcoco+", "refcocog", "refclef", "synth", ...)
    split      str   train / val / test / testA / testB
    image_id   int   image id within the dataset
    image_uri  str   where the image lives (local path or s3://bucket/key); rows point to images
    ref_id     int   referred object's ref id
    ann_id     int   annotation id of the object
    category   str   object category name
    bbox       list[float] of 4: COCO [x, y, width, height] in pixels
    mask       struct{size: list[int] of 2 ([height, width]), counts: str}: COCO compressed RLE
    text_en    str   English expression
    text_zh    str   Chinese expression

Extra columns are allowed and kept (e.g. ``sent_id``). The schema version is stored in the Parquet
key-value metadata under ``refseg.schema_version``; reading checks it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components import codec
from components.data import storage
from components.errors import InputError

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"refseg.schema_version"

MASK_TYPE = pa.struct([("size", pa.list_(pa.int64())), ("counts", pa.string())])

COLUMNS: dict[str, pa.DataType] = {
    "sample_id": pa.string(),
    "dataset": pa.string(),
    "split": pa.string(),
    "image_id": pa.int64(),
    "image_uri": pa.string(),
    "ref_id": pa.int64(),
    "ann_id": pa.int64(),
    "category": pa.string(),
    "bbox": pa.list_(pa.float64()),
    "mask": MASK_TYPE,
    "text_en": pa.string(),
    "text_zh": pa.string(),
}
KNOWN_SPLITS = ("train", "val", "test", "testA", "testB", "testC")
# The expression column of each language: the one place that spells it.
TEXT_COLUMN = {"zh": "text_zh", "en": "text_en"}


class ManifestError(InputError):
    """A manifest does not follow the schema; the message names the column (and row)."""


def _check_column(name: str, values: pd.Series) -> None:
    """Validate one column's Python values; raise ManifestError naming the column and row."""
    ids = None

    def where(i: int) -> str:
        return f"column {name!r}, row {i}" + (f" (sample_id={ids[i]!r})" if ids is not None else "")

    if name in ("sample_id", "dataset", "split", "image_uri", "category"):
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                raise ManifestError(f"{where(i)}: expected a non-empty string, got {v!r}")
    elif name in TEXT_COLUMN.values():
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, str) and not (isinstance(v, float) and np.isnan(v)):
                raise ManifestError(f"{where(i)}: expected a string or null, got {type(v).__name__}")
    elif name in ("image_id", "ref_id", "ann_id"):
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ManifestError(f"{where(i)}: expected an integer id, got {v!r}")
    elif name == "bbox":
        for i, v in enumerate(values):
            arr = np.asarray(v, dtype=object) if v is not None else None
            if arr is None or arr.shape != (4,):
                raise ManifestError(f"{where(i)}: expected 4 numbers [x, y, w, h], got {v!r}")
            try:
                arr.astype(float)
            except (TypeError, ValueError) as exc:
                raise ManifestError(f"{where(i)}: bbox values must be numbers ({exc})") from None
    elif name == "mask":
        for i, v in enumerate(values):
            if not isinstance(v, dict) or not {"size", "counts"} <= set(v):
                raise ManifestError(f"{where(i)}: expected a COCO RLE {{size, counts}}, got {v!r:.80}")
            size = list(v["size"]) if v["size"] is not None else []
            if len(size) != 2 or not all(int(s) > 0 for s in size):
                raise ManifestError(f"{where(i)}: RLE size must be [height, width] > 0, got {size}")
            if not isinstance(v["counts"], str):
                raise ManifestError(f"{where(i)}: RLE counts must be a compressed string")


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check columns and value types; return the frame with columns in canonical order first."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest is missing column(s): {', '.join(missing)}")
    for name in COLUMNS:
        _check_column(name, df[name])
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise ManifestError(f"column 'sample_id': duplicate id(s) {sorted(set(dup))[:5]}")
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra].reset_index(drop=True)


def to_table(df: pd.DataFrame) -> pa.Table:
    df = validate(df)
    fields = [pa.field(n, t) for n, t in COLUMNS.items()]
    arrays = []
    for name, typ in COLUMNS.items():
        values = df[name].tolist()
        if name == "mask":
            values = [{"size": [int(s) for s in v["size"]], "counts": v["counts"]} for v in values]
        elif name == "bbox":
            values = [[float(x) for x in v] for v in values]
        elif name in TEXT_COLUMN.values():
            values = [None if (v is None or (isinstance(v, float) and np.isnan(v))) else v for v in values]
        elif name in ("image_id", "ref_id", "ann_id"):
            values = [int(v) for v in values]
        arrays.append(pa.array(values, type=typ))
    for name in df.columns[len(COLUMNS):]:
        arrays.append(pa.array(df[name].tolist()))
        fields.append(pa.field(name, arrays[-1].type))
    meta = {SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def conform_table(table: pa.Table, source: str = "manifest") -> pa.Table:
    """``table`` with the manifest's column types, or a one-line ``ManifestError``.

    A manifest read and written back by another tool (pandas' ``to_parquet`` is the usual one)
    loses the ``refseg.schema_version`` metadata and stores strings as ``large_string``: it is
    accepted with a warning that the current version is assumed, and columns whose type differs
    only in width (large_string, large_list, int32, float32) are cast. A column of another kind
    is refused, naming it."""
    version = (table.schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is None:
        from components.logs import get_logger

        get_logger("manifest").warning(
            "%s: no %s in its Parquet metadata (written by another tool, such as pandas?): "
            "assuming version %s and checking its columns", source,
            SCHEMA_VERSION_KEY.decode(), SCHEMA_VERSION)
    elif version.decode() != SCHEMA_VERSION:
        raise ManifestError(
            f"{source}: schema version {version.decode()} is not supported (expected {SCHEMA_VERSION})"
        )
    for name, typ in COLUMNS.items():
        if name not in table.column_names:
            raise ManifestError(f"{source}: missing column {name!r}")
        have = table.schema.field(name).type
        if have.equals(typ):
            continue
        if not _same_kind(have, typ):
            raise ManifestError(f"{source}: column {name!r} has type {have}, expected {typ}")
        i = table.column_names.index(name)
        table = table.set_column(i, pa.field(name, typ), table.column(name).cast(typ))
    return table


def _same_kind(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether ``have`` is ``want`` up to width: a cast loses nothing a manifest holds."""
    if pa.types.is_string(want):
        return pa.types.is_string(have) or pa.types.is_large_string(have) or pa.types.is_null(have)
    if pa.types.is_integer(want):
        return pa.types.is_integer(have)
    if pa.types.is_floating(want):
        return pa.types.is_floating(have) or pa.types.is_integer(have)
    if pa.types.is_list(want):
        return ((pa.types.is_list(have) or pa.types.is_large_list(have))
                and _same_kind(have.value_type, want.value_type))
    if pa.types.is_struct(want):
        return (pa.types.is_struct(have) and have.num_fields == want.num_fields
                and all(have.field(i).name == want.field(i).name
                        and _same_kind(have.field(i).type, want.field(i).type)
                        for i in range(want.num_fields)))
    return False


def from_table(table: pa.Table, source: str = "manifest") -> pd.DataFrame:
    table = conform_table(table, source)
    df = table.to_pandas(types_mapper=None)
    # Nested values come back as numpy arrays; make them plain lists/dicts.
    df["bbox"] = [list(map(float, v)) for v in df["bbox"]]
    df["mask"] = [{"size": [int(s) for s in v["size"]], "counts": v["counts"]} for v in df["mask"]]
    for col in TEXT_COLUMN.values():
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return validate(df)


def write_manifest(df: pd.DataFrame, uri: str) -> str:
    """Validate and write ``df`` to ``uri`` (local path or s3://). Returns the uri."""
    buf = io.BytesIO()
    pq.write_table(to_table(df), buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())
    return uri


def parquet_table(data: bytes) -> pa.Table:
    """A Parquet file's bytes as a table, read from Arrow-owned memory without pre-buffering.

    Reading a Python object (``io.BytesIO``, ``bytes``) lets Arrow's I/O threads hold buffers
    that wrap Python memory; with pre-buffering on, the last of them can be released on an I/O
    thread after ``read_table`` returned. When the process exits right after (a refused manifest:
    one error line, exit 1), that thread asks for the GIL while the interpreter finalizes, is
    ended by ``pthread_exit`` inside C++ code and the process aborts ("terminate called without
    an active exception", exit 134). A copy into an Arrow buffer and no pre-buffer: no Python
    memory crosses a thread, and a manifest is small."""
    owned = pa.allocate_buffer(len(data))
    np.frombuffer(owned, dtype=np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
    return pq.read_table(pa.BufferReader(owned), pre_buffer=False)


def read_manifest(uri: str) -> pd.DataFrame:
    """Read and validate a manifest from a local path or s3:// uri."""
    try:
        table = parquet_table(storage.read_bytes(uri))
    except pa.ArrowInvalid as exc:
        raise ManifestError(f"{uri}: not a Parquet file ({exc})") from None
    return from_table(table, source=uri)


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in COLUMNS})


def decode_mask(rle: dict) -> np.ndarray:
    """COCO RLE -> uint8 HxW array of 0/1."""
    return codec.decode_rle(rle)


def encode_mask(mask: np.ndarray) -> dict:
    """uint8/bool HxW -> COCO compressed RLE with str counts."""
    return codec.encode_rle(mask)


def write_json(uri: str, obj) -> str:
    storage.write_bytes(uri, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True).encode())
    return uri


def rows(df: pd.DataFrame) -> Iterable[dict]:
    return df.to_dict("records")
