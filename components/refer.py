"""Import a refer-layout dataset (github.com/lichengunc/refer) and its Chinese translations into the
bilingual manifest.

Input layout::

    <refer_root>/<dataset>/refs(<split_by>).p   pickled list of refs (read with safe_pickle only)
    <refer_root>/<dataset>/instances.json       COCO images / annotations / categories
    <images_root>/<file_name>                   images, left where they are (local or s3://)
    translations                                 CSV / JSONL / Parquet table: sent_id, text_zh

Output (``out_dir``, local or s3://): ``manifest.parquet`` (one row per kept expression),
``quarantine.parquet`` (kind, record_id, sample_id, code, reason: one row per refused record) and
``summary.json`` (for every kind of record: in = kept + quarantined; ids of unmatched translations,
missing images and untranslated expressions). Nothing disappears silently.

Record kinds: ``image`` (each referenced image is checked once: exists, decodes fully, size matches
instances.json, pixel count under ``max_pixels``, safe file name), ``ref`` (annotation present,
category known, split known, mask inside the image and not empty, image kept), ``sentence`` (the
expression: ref kept, English and Chinese text valid UTF-8, not empty, not punctuation only, has a
translation, sent_id unique) and ``translation`` (a row of the translation table: integer sent_id,
unique, matching an expression).
"""

from __future__ import annotations

import argparse
import io
import json
import time
import unicodedata
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components import manifest as mf
from components import storage
from components.safe_pickle import safe_loads

VALID_SPLIT_BY: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
    "refclef": ("berkeley", "unc"),
}
DEFAULT_MAX_PIXELS = 40_000_000
TEXT_FIELDS = ("sent", "raw")
TRANSLATION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                       ".pq": "parquet"}
QUARANTINE_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("record_id", pa.string()),
        ("sample_id", pa.string()),
        ("code", pa.string()),
        ("reason", pa.string()),
    ]
)
KINDS = ("image", "ref", "sentence", "translation")


class ReferImportError(ValueError):
    """The input as a whole cannot be imported (bad dataset/split_by, unreadable files)."""


def check_split_by(dataset: str, split_by: str) -> None:
    valid = ", ".join(f"{d}/{s}" for d, ss in VALID_SPLIT_BY.items() for s in ss)
    if dataset not in VALID_SPLIT_BY:
        raise ReferImportError(f"unknown dataset {dataset!r}; valid dataset/split_by pairs: {valid}")
    if split_by not in VALID_SPLIT_BY[dataset]:
        raise ReferImportError(
            f"{dataset} has no split_by {split_by!r}; valid dataset/split_by pairs: {valid}"
        )


# --------------------------------------------------------------------------------------- helpers
@dataclass
class _Problem:
    code: str
    reason: str


@dataclass
class _Quarantine:
    rows: list[dict] = field(default_factory=list)

    def add(self, kind: str, record_id, problems: list[_Problem], sample_id: str | None = None):
        self.rows.append(
            {
                "kind": kind,
                "record_id": str(record_id),
                "sample_id": sample_id,
                "code": problems[0].code,
                "reason": "; ".join(p.reason for p in problems),
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=QUARANTINE_SCHEMA.names)


def _keys_to_str(obj):
    """py2 pickles loaded with encoding='bytes' have bytes dict keys; make keys str (values stay)."""
    if isinstance(obj, dict):
        return {
            (k.decode("ascii", "replace") if isinstance(k, bytes) else k): _keys_to_str(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_keys_to_str(v) for v in obj]
    return obj


def _as_id(v, what: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{what} is a bool ({v!r})")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, (str, bytes)):
        s = v.decode("ascii", "replace") if isinstance(v, bytes) else v
        try:
            return int(s.strip())
        except ValueError:
            pass
    raise ValueError(f"{what} {v!r:.40} is not an integer")


def _as_label(v) -> str:
    """A short ascii-ish field (split, file_name) that py2 pickles store as bytes."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


def check_text(value, what: str) -> tuple[str | None, _Problem | None]:
    """Decode and check one expression. Returns (text, None) or (None, problem)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None, _Problem("empty_text", f"{what} is missing")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = bytes(value)[exc.start : exc.start + 4]
            return None, _Problem(
                "invalid_utf8", f"{what} is not valid UTF-8 (bytes {bad!r} at offset {exc.start})"
            )
    if not isinstance(value, str):
        return None, _Problem("bad_type", f"{what} is a {type(value).__name__}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: undecodable bytes (surrogateescape) or \udcxx
        return None, _Problem(
            "invalid_utf8",
            f"{what} is not valid UTF-8 (undecodable character {value[exc.start]!r} "
            f"at offset {exc.start})",
        )
    text = " ".join(value.split())
    if not text:
        return None, _Problem(
            "empty_text", f"{what} is empty" if not value else f"{what} is only whitespace"
        )
    if not any(unicodedata.category(c)[0] in "LN" for c in text):
        return None, _Problem("punctuation_only", f"{what} {text!r:.40} has no letter or digit")
    return text, None


# ----------------------------------------------------------------------------------- translations
def read_translations(uri: str, quarantine: _Quarantine) -> tuple[dict[int, object], dict]:
    """Read the translation table (format by extension). Returns ({sent_id: raw text_zh}, info).

    Rows with a bad sent_id or a duplicated sent_id go to the quarantine (kind ``translation``).
    Text is not checked here (it is checked per expression, so the reason names the sent_id).
    Undecodable bytes are kept (as bytes, or as lone surrogates from JSON) and refused later.
    """
    uri = str(uri)
    name = uri.rsplit("/", 1)[-1].lower()
    fmt = next((f for ext, f in TRANSLATION_FORMATS.items() if name.endswith(ext)), None)
    if fmt is None:
        raise ReferImportError(
            f"{uri}: unknown translation table format; use one of "
            f"{', '.join(sorted(TRANSLATION_FORMATS))}"
        )
    data = storage.read_bytes(uri)
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark (spreadsheet exports)
        data = data[3:]
    bad_lines: list[tuple[int, str]] = []
    try:
        if fmt == "csv":
            # latin-1 maps every byte to one character, losslessly: the raw bytes of each value are
            # recovered below and decoded strictly per row, so a bad byte is blamed on its sent_id.
            df = pd.read_csv(io.BytesIO(data), dtype=object, keep_default_na=False,
                             encoding="latin-1")
            df = df.map(lambda v: v.encode("latin-1") if isinstance(v, str) else v)
        elif fmt == "jsonl":
            # Line by line with the json module: pandas' ujson cannot carry undecodable bytes, and a
            # broken line must be reported by its number, not fail the whole table.
            records = []
            for lineno, line in enumerate(data.decode("utf-8", "surrogateescape").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                    records.append({"_line": lineno, **rec})
                except ValueError as exc:
                    bad_lines.append((lineno, f"line {lineno}: not a JSON object ({exc})"))
            # dtype=object: pandas' default string dtype cannot hold the lone surrogates.
            df = pd.DataFrame(records, dtype=object) if records else pd.DataFrame()
        else:
            df = pq.read_table(io.BytesIO(data)).to_pandas()
    except (ValueError, pa.ArrowInvalid, pd.errors.ParserError) as exc:
        raise ReferImportError(f"{uri}: cannot read the {fmt} translation table ({exc})") from None
    if fmt == "jsonl" and len(df.columns) == 0:  # every line broken (or none)
        df = pd.DataFrame({"sent_id": [], "text_zh": []})
    missing = [c for c in ("sent_id", "text_zh") if c not in df.columns]
    if missing:
        raise ReferImportError(
            f"{uri}: translation table lacks column(s) {', '.join(missing)} "
            f"(has {', '.join(map(str, df.columns)) or 'none'})"
        )
    for lineno, reason in bad_lines:
        quarantine.add("translation", f"line {lineno}", [_Problem("bad_row", reason)])

    by_id: dict[int, list] = defaultdict(list)
    n_rows = len(df) + len(bad_lines)
    bad_id = len(bad_lines)
    for i, rec in enumerate(df.to_dict("records")):
        where = f"line {rec['_line']}" if "_line" in rec else f"row {i}"
        try:
            sid = _as_id(rec["sent_id"], "sent_id")
        except ValueError as exc:
            quarantine.add("translation", where, [_Problem("bad_sent_id", f"{where}: {exc}")])
            bad_id += 1
            continue
        by_id[sid].append(rec["text_zh"])
    table: dict[int, object] = {}
    duplicates = []
    for sid, texts in by_id.items():
        if len(texts) > 1:
            duplicates.append(sid)
            for _ in texts:
                quarantine.add(
                    "translation",
                    sid,
                    [_Problem("duplicate_sent_id",
                              f"sent_id {sid}: {len(texts)} rows in the translation table")],
                )
        else:
            table[sid] = texts[0]
    return table, {"rows": n_rows, "bad_rows": bad_id, "duplicate_ids": sorted(duplicates)}


# ------------------------------------------------------------------------------------------ images
def _image_check(uri: str, height: int, width: int, max_pixels: int) -> _Problem | None:
    from PIL import Image, UnidentifiedImageError

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return _Problem("missing_image", f"{uri}: no such file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                return _Problem(
                    "too_many_pixels", f"{uri}: {w}x{h} = {w * h} pixels > limit {max_pixels}"
                )
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":  # DCT-domain downscale: reads every byte, decodes ~5x faster
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
            im.load()  # verify() does not decode: a truncated file fails only here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _Problem("too_many_pixels", f"{uri}: over the pixel limit {max_pixels} ({exc})")
    except UnidentifiedImageError:
        return _Problem("corrupt_image", f"{uri}: not a decodable image")
    except (OSError, SyntaxError, ValueError) as exc:
        code = "truncated_image" if "truncated" in str(exc).lower() else "corrupt_image"
        return _Problem(code, f"{uri}: cannot decode ({exc})")
    if (w, h) != (width, height):
        return _Problem(
            "size_mismatch",
            f"{uri}: image is {w}x{h} but instances.json says {width}x{height} (width x height)",
        )
    return None


def check_images(
    images: dict[int, dict | None], images_root: str, max_pixels: int, workers: int = 4
) -> dict[int, tuple[str | None, _Problem | None]]:
    """Check each image once. ``images``: image_id -> instances.json entry (None: not listed).
    Returns image_id -> (image_uri or None, problem or None)."""
    from PIL import Image

    out: dict[int, tuple[str | None, _Problem | None]] = {}
    jobs: dict[int, tuple[str, int, int]] = {}
    for image_id, info in images.items():
        if info is None:
            out[image_id] = (None, _Problem("missing_image",
                                            f"image_id {image_id} is not in instances.json"))
            continue
        try:
            uri = storage.safe_join(images_root, _as_label(info.get("file_name")),
                                    record=f"image_id {image_id}")
            height, width = int(info["height"]), int(info["width"])
        except storage.UnsafePathError as exc:
            out[image_id] = (None, _Problem("unsafe_path", str(exc)))
            continue
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            out[image_id] = (None, _Problem("bad_image_record",
                                            f"image_id {image_id}: bad instances.json entry ({exc})"))
            continue
        jobs[image_id] = (uri, height, width)

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; make it an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                futures = {
                    i: pool.submit(_image_check, uri, h, w, max_pixels)
                    for i, (uri, h, w) in jobs.items()
                }
                for i, fut in futures.items():
                    out[i] = (jobs[i][0], fut.result())
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return out


# ------------------------------------------------------------------------------------------- masks
def annotation_rle(ann: dict, height: int, width: int, tolerance: float = 1.0):
    """COCO segmentation -> (compressed RLE dict with bytes counts, None) or (None, problem).

    Same conversion as pycocotools ``COCO.annToRLE`` (polygons: frPyObjects + merge; uncompressed
    RLE: frPyObjects; compressed RLE: as is), plus checks that the object lies inside the image.
    """
    from pycocotools import mask as mask_utils

    aid = ann.get("id")
    segm = ann.get("segmentation")
    bbox = ann.get("bbox")
    try:
        if bbox is not None:
            x, y, w, h = (float(v) for v in bbox)
            if (x < -tolerance or y < -tolerance or x + w > width + tolerance
                    or y + h > height + tolerance or w < 0 or h < 0):
                return None, _Problem(
                    "mask_out_of_bounds",
                    f"ann_id {aid}: bbox {list(bbox)} lies outside the {width}x{height} image",
                )
        if isinstance(segm, list):
            polys = [list(map(float, p)) for p in segm]
            for p in polys:
                if len(p) < 6 or len(p) % 2:
                    return None, _Problem(
                        "bad_segmentation",
                        f"ann_id {aid}: polygon with {len(p)} coordinates (need an even number >= 6)",
                    )
                xs, ys = np.asarray(p[0::2]), np.asarray(p[1::2])
                if (xs.min() < -tolerance or ys.min() < -tolerance
                        or xs.max() > width + tolerance or ys.max() > height + tolerance):
                    return None, _Problem(
                        "mask_out_of_bounds",
                        f"ann_id {aid}: polygon spans x {xs.min():g}..{xs.max():g}, "
                        f"y {ys.min():g}..{ys.max():g}, outside the {width}x{height} image",
                    )
            if not polys:
                return None, _Problem("bad_segmentation", f"ann_id {aid}: no polygon")
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            size = [int(s) for s in segm["size"]]
            if size != [height, width]:
                return None, _Problem(
                    "mask_out_of_bounds",
                    f"ann_id {aid}: RLE size {size} differs from the image's [{height}, {width}]",
                )
            counts = segm["counts"]
            if isinstance(counts, list):
                if sum(int(c) for c in counts) != height * width:
                    return None, _Problem(
                        "bad_segmentation",
                        f"ann_id {aid}: uncompressed RLE covers {sum(counts)} pixels, "
                        f"image has {height * width}",
                    )
                rle = mask_utils.frPyObjects(
                    {"size": size, "counts": [int(c) for c in counts]}, height, width
                )
            else:
                counts = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
                rle = {"size": size, "counts": counts}
        else:
            return None, _Problem("bad_segmentation",
                                  f"ann_id {aid}: segmentation is neither polygons nor RLE")
        mask = mask_utils.decode(rle)  # validates the RLE and normalises its encoding
    except (TypeError, ValueError, KeyError, UnicodeEncodeError) as exc:
        return None, _Problem("bad_segmentation", f"ann_id {aid}: invalid segmentation ({exc})")
    if mask.shape != (height, width):
        return None, _Problem(
            "bad_segmentation", f"ann_id {aid}: mask shape {mask.shape} != ({height}, {width})"
        )
    if not mask.any():
        return None, _Problem("empty_mask", f"ann_id {aid}: the mask covers no pixel")
    return mf.encode_mask(mask), None


# -------------------------------------------------------------------------------------- the import
def import_refer(
    refer_root: str,
    dataset: str,
    split_by: str,
    images_root: str,
    translations: str,
    out_dir: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    text_field: str = "sent",
    workers: int = 4,
    bounds_tolerance: float = 1.0,
) -> dict:
    """Import one refer dataset/split_by with its Chinese translations. Returns the summary dict
    (also written to ``out_dir/summary.json``). See the module docstring for what is checked."""
    t0 = time.perf_counter()
    check_split_by(dataset, split_by)
    if text_field not in TEXT_FIELDS:
        raise ReferImportError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
    if int(max_pixels) <= 0:
        raise ReferImportError(f"max_pixels must be positive, got {max_pixels}")
    q = _Quarantine()

    refs_uri = storage.join(refer_root, dataset, f"refs({split_by}).p")
    inst_uri = storage.join(refer_root, dataset, "instances.json")
    refs = _keys_to_str(safe_loads(storage.read_bytes(refs_uri), source=refs_uri))
    if not isinstance(refs, list):
        raise ReferImportError(f"{refs_uri}: expected a list of refs, got {type(refs).__name__}")
    try:
        inst = json.loads(storage.read_bytes(inst_uri))
        images = {int(im["id"]): im for im in inst["images"]}
        anns = {int(a["id"]): a for a in inst["annotations"]}
        cats = {int(c["id"]): str(c["name"]) for c in inst.get("categories", [])}
    except (ValueError, KeyError, TypeError) as exc:
        raise ReferImportError(f"{inst_uri}: not a COCO instances file ({exc!r})") from None

    zh, tr_info = read_translations(translations, q)

    # ---- refs: structure, then the images they use (each once)
    parsed = []  # (ref_idx, ref dict, ref problems, sentences)
    n_sentences = 0
    sent_seen: Counter = Counter()
    for idx, ref in enumerate(refs):
        problems: list[_Problem] = []
        rid: object = f"#{idx}"
        sents = []
        if not isinstance(ref, dict):
            problems.append(_Problem("bad_ref", f"ref #{idx} is a {type(ref).__name__}, not a dict"))
            ref = {}
        try:
            rid = _as_id(ref.get("ref_id"), "ref_id")
            ref["_ref_id"] = rid
            ref["_ann_id"] = _as_id(ref.get("ann_id"), "ann_id")
            ref["_image_id"] = _as_id(ref.get("image_id"), "image_id")
            ref["_split"] = _as_label(ref.get("split"))
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(ref, dict) and ref:
                problems.append(_Problem("bad_ref", f"ref {rid}: {exc}"))
        raw_sents = ref.get("sentences") if isinstance(ref, dict) else None
        if not isinstance(raw_sents, list):
            if ref:
                problems.append(_Problem("bad_ref", f"ref {rid}: 'sentences' is not a list"))
            raw_sents = []
        for j, s in enumerate(raw_sents):
            n_sentences += 1
            try:
                sid = _as_id(s.get("sent_id"), "sent_id") if isinstance(s, dict) else None
            except ValueError:
                sid = None
            if sid is not None:
                sent_seen[sid] += 1
            sents.append((j, sid, s))
        parsed.append((rid, ref, problems, sents))

    used_images = {ref["_image_id"] for _, ref, probs, _ in parsed if not probs}
    checked = check_images(
        {i: images.get(i) for i in sorted(used_images)}, images_root, int(max_pixels), workers
    )
    image_ok = {i: p is None for i, (_, p) in checked.items()}
    for i, (_uri, p) in sorted(checked.items()):
        if p is not None:
            q.add("image", i, [p])

    # ---- refs: annotation, mask, category, split, image
    rows = []
    matched_translations: set[int] = set()
    untranslated: list[int] = []
    n_refs_kept = 0
    mask_cache: dict[int, tuple] = {}
    prefix = f"{dataset}/{split_by}"
    for rid, ref, problems, sents in parsed:
        if not problems:
            aid, iid = ref["_ann_id"], ref["_image_id"]
            if not image_ok[iid]:
                p = checked[iid][1]
                problems.append(_Problem(p.code, f"image {iid} quarantined: {p.reason}"))
            ann = anns.get(aid)
            if ann is None:
                problems.append(_Problem("missing_annotation",
                                         f"ann_id {aid} is not in instances.json"))
            elif int(ann.get("image_id", -1)) != iid:
                problems.append(_Problem(
                    "bad_ref", f"ann_id {aid} belongs to image {ann.get('image_id')}, ref says {iid}"
                ))
            elif iid in images and not problems:
                if aid not in mask_cache:
                    im = images[iid]
                    mask_cache[aid] = annotation_rle(
                        ann, int(im["height"]), int(im["width"]), bounds_tolerance
                    )
                rle, p = mask_cache[aid]
                if p is not None:
                    problems.append(p)
            cat_id = ref.get("category_id", ann.get("category_id") if ann else None)
            try:
                category = cats[_as_id(cat_id, "category_id")]
            except (KeyError, ValueError):
                problems.append(_Problem("unknown_category",
                                         f"category_id {cat_id!r} is not in instances.json"))
            if ref["_split"] not in mf.KNOWN_SPLITS:
                problems.append(_Problem("unknown_split", f"split {ref['_split']!r} is not one of "
                                                          f"{', '.join(mf.KNOWN_SPLITS)}"))
        if problems:
            q.add("ref", rid, problems)
        else:
            n_refs_kept += 1
        ref_problem = (
            [_Problem(problems[0].code, f"ref {rid} quarantined: "
                      + "; ".join(p.reason for p in problems))]
            if problems else []
        )

        for j, sid, s in sents:
            sp = list(ref_problem)
            sample_id = f"{prefix}/sent_{sid}" if sid is not None else None
            record = sid if sid is not None else f"ref {rid} sentence #{j}"
            if sid is None:
                sp.append(_Problem("bad_sentence", f"ref {rid} sentence #{j}: no integer sent_id"))
                q.add("sentence", record, sp)
                continue
            if sent_seen[sid] > 1:
                sp.append(_Problem("duplicate_sent_id",
                                   f"sent_id {sid} occurs {sent_seen[sid]} times in {refs_uri}"))
            field_ = text_field if text_field in s else ("raw" if "raw" in s else text_field)
            text_en, p = check_text(s.get(field_), f"sent_id {sid}: English text ({field_})")
            if p:
                sp.append(p)
            if sid in zh:
                matched_translations.add(sid)
                text_zh, p = check_text(zh[sid], f"sent_id {sid}: Chinese text")
                if p:
                    sp.append(p)
            else:
                untranslated.append(sid)
                dup = sid in tr_info["duplicate_ids"]
                sp.append(_Problem(
                    "duplicate_translation" if dup else "no_translation",
                    f"sent_id {sid}: "
                    + ("translation refused (duplicate sent_id in the translation table)" if dup
                       else "no Chinese translation"),
                ))
            if sp:
                q.add("sentence", sid, sp, sample_id=sample_id)
                continue
            ann = anns[ref["_ann_id"]]
            rows.append(
                {
                    "sample_id": sample_id,
                    "dataset": dataset,
                    "split": ref["_split"],
                    "image_id": ref["_image_id"],
                    "image_uri": checked[ref["_image_id"]][0],
                    "ref_id": ref["_ref_id"],
                    "ann_id": ref["_ann_id"],
                    "category": category,
                    "bbox": [float(v) for v in ann["bbox"]],
                    "mask": mask_cache[ref["_ann_id"]][0],
                    "text_en": text_en,
                    "text_zh": text_zh,
                    "sent_id": sid,
                }
            )

    # ---- translations that match no expression
    sent_ids = set(sent_seen)
    unmatched = sorted(set(zh) - sent_ids)
    for sid in unmatched:
        q.add("translation", sid, [_Problem("unmatched_translation",
                                            f"sent_id {sid}: no expression with this id in "
                                            f"{refs_uri}")])

    # ---- outputs
    manifest = pd.DataFrame(rows, columns=[*mf.COLUMNS, "sent_id"]) if rows else None
    if manifest is None:
        manifest = mf.empty_manifest()
        manifest["sent_id"] = pd.Series([], dtype="int64")
    qdf = q.frame()
    out_manifest = storage.join(out_dir, "manifest.parquet")
    out_quarantine = storage.join(out_dir, "quarantine.parquet")
    out_summary = storage.join(out_dir, "summary.json")
    mf.write_manifest(manifest, out_manifest)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(qdf, schema=QUARANTINE_SCHEMA, preserve_index=False), buf)
    storage.write_bytes(out_quarantine, buf.getvalue())

    qcount = Counter(qdf["kind"])
    counts = {
        "image": {"in": len(checked), "kept": sum(image_ok.values()),
                  "quarantined": qcount["image"]},
        "ref": {"in": len(refs), "kept": n_refs_kept, "quarantined": qcount["ref"]},
        "sentence": {"in": n_sentences, "kept": len(rows), "quarantined": qcount["sentence"]},
        "translation": {"in": tr_info["rows"], "kept": len(matched_translations),
                        "quarantined": qcount["translation"]},
    }
    for kind, c in counts.items():
        if c["in"] != c["kept"] + c["quarantined"]:  # a bug here, never the user's input
            raise AssertionError(f"{kind} counts do not reconcile: {c}")
    summary = {
        "dataset": dataset,
        "split_by": split_by,
        "refer_root": str(refer_root),
        "images_root": str(images_root),
        "translations": str(translations),
        "text_field": text_field,
        "max_pixels": int(max_pixels),
        "counts": counts,
        "manifest_rows": len(rows),
        "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
        "quarantine_codes": {
            kind: dict(sorted(Counter(qdf.loc[qdf["kind"] == kind, "code"]).items()))
            for kind in KINDS
        },
        "unmatched_translation_ids": unmatched,
        "duplicate_translation_ids": tr_info["duplicate_ids"],
        "untranslated_sent_ids": sorted(untranslated),
        "missing_image_ids": sorted(
            i for i, (_, p) in checked.items() if p is not None and p.code == "missing_image"
        ),
        "outputs": {"manifest": out_manifest, "quarantine": out_quarantine,
                    "summary": out_summary},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    mf.write_json(out_summary, summary)
    return summary


# ------------------------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refer-root", required=True,
                   help="folder (or s3:// prefix) holding <dataset>/refs(<split_by>).p and "
                        "<dataset>/instances.json")
    p.add_argument("--dataset", required=True, choices=sorted(VALID_SPLIT_BY))
    p.add_argument("--split-by", required=True,
                   help="unc, google, umd or berkeley (refcoco: unc|google; refcoco+: unc; "
                        "refcocog: umd|google; refclef: berkeley|unc)")
    p.add_argument("--images", required=True,
                   help="image folder or s3:// prefix; instances.json file_name is relative to it")
    p.add_argument("--translations", required=True,
                   help="Chinese translation table (sent_id, text_zh): .csv, .jsonl or .parquet")
    p.add_argument("--out", required=True, help="output folder or s3:// prefix")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--text-field", choices=TEXT_FIELDS, default="sent",
                   help="English text: 'sent' (cleaned, lower case) or 'raw' (default sent)")
    p.add_argument("--workers", type=int, default=4, help="threads for image checks (default 4)")
    p.add_argument("--bounds-tolerance", type=float, default=1.0,
                   help="pixels a bbox/polygon may reach past the image border (default 1.0)")


def run(args) -> int:
    import pickle
    import sys

    try:
        s = import_refer(
            args.refer_root, args.dataset, args.split_by, args.images, args.translations,
            args.out, max_pixels=args.max_pixels, text_field=args.text_field,
            workers=args.workers, bounds_tolerance=args.bounds_tolerance,
        )
    except pickle.UnpicklingError as exc:  # hostile or damaged refs file: one line, no traceback
        print(f"refseg: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    c = s["counts"]
    print(
        f"{s['dataset']}/{s['split_by']}: {c['sentence']['kept']} of {c['sentence']['in']} "
        f"expressions kept ({c['sentence']['quarantined']} quarantined); images "
        f"{c['image']['kept']}/{c['image']['in']}, refs {c['ref']['kept']}/{c['ref']['in']}, "
        f"translations matched {c['translation']['kept']}/{c['translation']['in']} "
        f"in {s['seconds']:.1f} s"
    )
    print(f"manifest:   {s['outputs']['manifest']}")
    print(f"quarantine: {s['outputs']['quarantine']}")
    print(f"summary:    {s['outputs']['summary']}")
    return 0
