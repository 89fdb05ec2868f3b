"""The refer importer and its bad-input corpus (budget: under 60 s).

A small refer-layout fixture is built on the spot: tiny PNG/JPEG images, an instances.json with
polygons, compressed RLE and an uncompressed-RLE crowd annotation, refs pickles for several
dataset/split_by pairs (one hand-written exactly as Python 2's pickler writes protocol 2, with py2
``str`` keys and values; the others written by Python 3 at protocol 2), and the translation table
in CSV, JSONL and Parquet. Every bad record must come out quarantined with its reason, or refused
with a message naming it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.data import manifest as mf
from components.data import storage
from components.data.refer.quarantine import Quarantine
from components.data.safe_pickle import UnsafePickleError, safe_loads
from components.import_refer import (
    VALID_SPLIT_BY,
    ReferImportError,
    import_refer,
    read_translations,
)

MAX_PIXELS = 20_000  # the fixture's "huge" images exceed it; the good ones are far below

# image_id -> (file_name in instances.json, (width, height) in instances.json, how to write it)
IMAGES = {
    1: ("train2014/img1.png", (32, 24), "png"),
    2: ("train2014/img2.jpg", (40, 30), "jpeg"),
    3: ("train2014/corrupt.png", (32, 24), "garbage"),
    4: ("train2014/truncated.jpg", (64, 48), "truncated"),
    5: ("train2014/missing.png", (32, 24), None),
    6: ("train2014/wrongsize.png", (30, 30), "png20"),  # the file is 20x20
    7: ("train2014/huge.png", (210, 210), "png"),  # 44100 px > 2 x limit: PIL's bomb error
    8: ("train2014/big.png", (160, 160), "png"),  # 25600 px: between limit and 2 x limit
    9: ("../escape.png", (32, 24), None),
    10: ("/etc/passwd", (32, 24), None),
}
BAD_IMAGE_CODES = {
    3: "corrupt_image",
    4: "truncated_image",
    5: "missing_image",
    6: "size_mismatch",
    7: "too_many_pixels",
    8: "too_many_pixels",
    9: "unsafe_path",
    10: "unsafe_path",
    11: "missing_image",  # referenced by a ref, absent from instances.json
}
ZH = {
    1001: "左边的男人",
    1002: "左边那个人",
    1003: "中间的东西",
    1004: "一群人",
    1005: "后面的人",
    1006: "被截掉的车",
    1007: "下面的车",
    1008: "空的",
    1009: "空白",
    1010: "标点",
    1011: "坏的编码",
    1015: "好狗",
}


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def _bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def _poly_ann(aid: int, image_id: int, poly: list[list[float]], bbox=None, cat=1) -> dict:
    xs = [v for p in poly for v in p[0::2]]
    ys = [v for p in poly for v in p[1::2]]
    bbox = bbox or [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {"id": aid, "image_id": image_id, "category_id": cat, "segmentation": poly,
            "bbox": bbox, "iscrowd": 0, "area": 1.0}


def _annotations() -> list[dict]:
    from pycocotools import mask as mask_utils

    anns = [
        _poly_ann(101, 1, [[2, 2, 12, 2, 12, 10, 2, 10], [16, 4, 28, 4, 22, 20]]),
        _poly_ann(104, 2, [[30, 5, 60, 5, 60, 20, 30, 20]]),  # bbox and polygon past x = 40
        _poly_ann(106, 2, [[5, 5, 15, 5, 15, 40, 5, 40]], bbox=[5, 5, 10, 10]),  # polygon only
        _poly_ann(105, 2, [[5, 5, 20, 5, 20, 25, 5, 25]], cat=2),
    ]
    blob = _disk(24, 32, 12, 16, 7)  # compressed RLE on image 1
    rle = mask_utils.encode(np.asfortranarray(blob))
    anns.append({"id": 102, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0,
                 "segmentation": {"size": [24, 32], "counts": rle["counts"].decode("ascii")},
                 "bbox": _bbox_of(blob)})
    crowd = np.zeros((30, 40), np.uint8)  # uncompressed RLE crowd on image 2
    crowd[3:12, 4:30] = 1
    crowd[15:28, 25:37] = 1
    anns.append({"id": 103, "image_id": 2, "category_id": 1, "iscrowd": 1, "area": 1.0,
                 "segmentation": {"size": [30, 40], "counts": _uncompressed_rle(crowd)},
                 "bbox": _bbox_of(crowd)})
    for image_id in (3, 4, 5, 6, 7, 8, 9, 10, 11):
        anns.append(_poly_ann(200 + image_id, image_id, [[1, 1, 8, 1, 8, 8, 1, 8]]))
    return anns


def _refs(split_names: dict[str, str]) -> list[dict]:
    def sent(sid, text):
        return {"sent_id": sid, "sent": text, "raw": text if isinstance(text, bytes) else
                text.upper(), "tokens": text.split() if isinstance(text, str) else []}

    def ref(rid, aid, iid, split, sents, cat=1):
        return {"ref_id": rid, "ann_id": aid, "image_id": iid, "split": split_names[split],
                "category_id": cat, "sentences": [sent(*s) for s in sents],
                "sent_ids": [s[0] for s in sents], "file_name": f"x_{iid}_{aid}.jpg"}

    refs = [
        ref(1, 101, 1, "train", [(1001, "the man on the left"), (1002, "left guy")]),
        ref(2, 102, 1, "val", [(1003, "blob in the middle")]),
        ref(3, 103, 2, "testA", [(1004, "crowd of people"), (1005, "people at the back")]),
        ref(4, 104, 2, "train", [(1006, "the cut off car")]),
        ref(5, 106, 2, "train", [(1007, "the car below")]),
        ref(6, 105, 2, "testB", [
            (1008, ""),  # empty
            (1009, "   \t "),  # whitespace only
            (1010, "?! ... ,"),  # punctuation only
            (1011, b"\xff\xfe bad bytes"),  # invalid UTF-8 (py2 str)
            (1012, "dog without translation"),
            (1013, "dog with a duplicate translation"),
            (1014, "dog whose chinese is broken"),
            (1015, "good dog"),
        ], cat=2),
    ]
    for image_id in BAD_IMAGE_CODES:
        refs.append(ref(100 + image_id, 200 + image_id, image_id, "train",
                        [(1100 + image_id, f"thing in image {image_id}")]))
    return refs


def py2_dumps(obj) -> bytes:
    """Protocol-2 pickle as Python 2's cPickle writes it: text as py2 ``str`` (BINSTRING bytes),
    keys included. Loaded in Python 3 with encoding='bytes' they come back as bytes."""
    out = bytearray(b"\x80\x02")

    def w(o):
        if o is None:
            out.extend(b"N")
        elif o is True or o is False:
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, (str, bytes)):
            b = o.encode("utf-8") if isinstance(o, str) else o
            out.extend((b"U" + bytes([len(b)])) if len(b) < 256 else (b"T" + struct.pack("<i", len(b))))
            out.extend(b)
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for v in o:
                    w(v)
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}")
            if o:
                out.extend(b"(")
                for k, v in o.items():
                    w(k)
                    w(v)
                out.extend(b"u")
        else:  # pragma: no cover
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    return bytes(out)


VARIANTS = {  # (dataset, split_by) -> split names used and how the refs file is pickled
    ("refcoco", "unc"): ({"train": "train", "val": "val", "testA": "testA", "testB": "testB"}, "py2"),
    ("refcoco", "google"): ({"train": "train", "val": "val", "testA": "test", "testB": "test"}, 2),
    ("refcocog", "umd"): ({"train": "train", "val": "val", "testA": "test", "testB": "test"}, 2),
    ("refclef", "berkeley"): ({"train": "train", "val": "val", "testA": "test", "testB": "test"}, 2),
}


def _write_images(images_root: Path) -> None:
    rng = np.random.default_rng(0)
    for _image_id, (name, (w, h), kind) in IMAGES.items():
        if kind is None:
            continue
        path = images_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if kind == "png":
            Image.fromarray(pixels).save(path, format="PNG")
        elif kind == "png20":
            Image.fromarray(pixels[:20, :20]).save(path, format="PNG")
        elif kind == "jpeg":
            Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        elif kind == "garbage":
            path.write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
        elif kind == "truncated":
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
            path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _translation_rows() -> list[tuple[int, bytes]]:
    rows = [(sid, t.encode()) for sid, t in ZH.items()]
    rows += [(1100 + i, f"图{i}里的东西".encode()) for i in BAD_IMAGE_CODES]
    rows += [(1013, "重复一".encode()), (1013, "重复二".encode())]  # duplicate sent_id
    rows += [(1014, "狗".encode() + b"\xff\xfe")]  # invalid UTF-8 in the file
    rows += [(9999, "没有这个句子".encode())]  # matches no expression
    return rows


def _write_translations(root: Path) -> dict[str, Path]:
    rows = _translation_rows()
    csv = root / "zh.csv"
    csv.write_bytes(b"sent_id,text_zh\n" + b"".join(b"%d,%s\n" % (s, t) for s, t in rows))
    jsonl = root / "zh.jsonl"
    jsonl.write_bytes(b"".join(
        b'{"sent_id": %d, "text_zh": "%s"}\n' % (s, t) for s, t in rows
    ))
    parquet = root / "zh.parquet"
    pq.write_table(pa.table({"sent_id": pa.array([s for s, _ in rows], pa.int64()),
                             "text_zh": pa.array([t for _, t in rows], pa.binary())}), parquet)
    return {"csv": csv, "jsonl": jsonl, "parquet": parquet}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("refer")
    refer_root = root / "refer"
    _write_images(root / "images")
    anns = _annotations()
    instances = {
        "images": [{"id": i, "file_name": n, "width": w, "height": h}
                   for i, (n, (w, h), _) in IMAGES.items()],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }
    for (dataset, split_by), (names, how) in VARIANTS.items():
        d = refer_root / dataset
        d.mkdir(parents=True, exist_ok=True)
        (d / "instances.json").write_text(json.dumps(instances))
        refs = _refs(names)
        data = py2_dumps(refs) if how == "py2" else pickle.dumps(refs, protocol=how)
        (d / f"refs({split_by}).p").write_bytes(data)
    return {"root": root, "refer_root": refer_root, "images": root / "images",
            "translations": _write_translations(root), "anns": {a["id"]: a for a in anns}}


def _import(corpus, out, dataset="refcoco", split_by="unc", fmt="csv", **kw):
    return import_refer(str(corpus["refer_root"]), dataset, split_by, str(corpus["images"]),
                        str(corpus["translations"][fmt]), str(out), max_pixels=MAX_PIXELS, **kw)


EXPECTED_COUNTS = {
    "image": {"in": 11, "kept": 2, "quarantined": 9},
    "ref": {"in": 15, "kept": 4, "quarantined": 11},
    "sentence": {"in": 24, "kept": 6, "quarantined": 18},
    "translation": {"in": 25, "kept": 22, "quarantined": 3},
}
KEPT_SENTS = [1001, 1002, 1003, 1004, 1005, 1015]


@pytest.fixture(scope="module")
def unc(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_unc")
    summary = _import(corpus, out)
    return summary, mf.read_manifest(str(out / "manifest.parquet")), pd.read_parquet(
        out / "quarantine.parquet"), out


def test_counts_reconcile_and_summary(unc):
    summary, manifest, quarantine, out = unc
    assert summary["counts"] == EXPECTED_COUNTS
    assert json.loads((out / "summary.json").read_text())["counts"] == EXPECTED_COUNTS
    for kind, c in summary["counts"].items():
        assert c["in"] == c["kept"] + c["quarantined"]
        assert (quarantine["kind"] == kind).sum() == c["quarantined"]
    assert sorted(manifest["sent_id"]) == KEPT_SENTS
    assert len(manifest) == summary["manifest_rows"] == 6
    assert summary["splits"] == {"testA": 2, "testB": 1, "train": 2, "val": 1}
    assert summary["unmatched_translation_ids"] == [9999]
    assert summary["duplicate_translation_ids"] == [1013]
    assert summary["untranslated_sent_ids"] == [1012, 1013]
    assert summary["missing_image_ids"] == [5, 11]


def test_manifest_rows(unc, corpus):
    _, manifest, _, _ = unc
    row = manifest.set_index("sent_id").loc[1001]
    assert row["sample_id"] == "refcoco/unc/sent_1001"
    assert row["text_en"] == "the man on the left" and row["text_zh"] == "左边的男人"
    assert row["image_uri"] == str(corpus["images"] / "train2014/img1.png")
    assert (row["ref_id"], row["ann_id"], row["image_id"], row["category"]) == (1, 101, 1, "person")
    assert manifest.set_index("sent_id").loc[1015, "category"] == "dog"
    assert manifest.set_index("sent_id").loc[1015, "split"] == "testB"


def test_masks_equal_pycocotools_decoding(unc, corpus):
    from pycocotools.coco import COCO

    _, manifest, _, _ = unc
    coco = COCO(str(corpus["refer_root"] / "refcoco" / "instances.json"))
    seen = set()
    for r in manifest.to_dict("records"):
        ours = mf.decode_mask(r["mask"])
        ref = coco.annToMask(coco.anns[r["ann_id"]])
        assert ours.shape == ref.shape == (coco.imgs[r["image_id"]]["height"],
                                            coco.imgs[r["image_id"]]["width"])
        np.testing.assert_array_equal(ours, ref)
        assert ours.sum() > 0
        seen.add(r["ann_id"])
    assert seen == {101, 102, 103, 105}  # polygons, compressed RLE, uncompressed-RLE crowd
    # The uncompressed RLE crowd mask is the very array it was made from.
    crowd = np.zeros((30, 40), np.uint8)
    crowd[3:12, 4:30] = 1
    crowd[15:28, 25:37] = 1
    row = manifest[manifest["ann_id"] == 103].iloc[0]
    np.testing.assert_array_equal(mf.decode_mask(row["mask"]), crowd)


def _reason(quarantine, kind, record_id):
    hit = quarantine[(quarantine["kind"] == kind) & (quarantine["record_id"] == str(record_id))]
    assert len(hit) == 1, f"{kind} {record_id}: {len(hit)} quarantine rows"
    return hit.iloc[0]["code"], hit.iloc[0]["reason"]


@pytest.mark.parametrize("image_id,code", sorted(BAD_IMAGE_CODES.items()))
def test_bad_images_quarantined(unc, image_id, code):
    _, _, quarantine, _ = unc
    got_code, reason = _reason(quarantine, "image", image_id)
    assert got_code == code
    name = IMAGES.get(image_id, (None,))[0]
    if code == "unsafe_path":
        assert name in reason and f"image_id {image_id}" in reason
    elif image_id == 11:
        assert "image_id 11 is not in instances.json" in reason
    else:
        assert name in reason  # the URI names the file
    # The ref and the expression on that image follow, naming the image.
    ref_code, ref_reason = _reason(quarantine, "ref", 100 + image_id)
    assert ref_code == code and f"image {image_id} quarantined" in ref_reason
    s_code, s_reason = _reason(quarantine, "sentence", 1100 + image_id)
    assert s_code == code and f"ref {100 + image_id} quarantined" in s_reason


def test_image_reasons_say_why(unc):
    _, _, quarantine, _ = unc
    assert "truncated" in _reason(quarantine, "image", 4)[1]
    assert "20x20" in _reason(quarantine, "image", 6)[1] and "30x30" in _reason(quarantine, "image", 6)[1]
    assert "limit 20000" in _reason(quarantine, "image", 8)[1]
    assert "'..'" in _reason(quarantine, "image", 9)[1]
    assert "absolute path" in _reason(quarantine, "image", 10)[1]


@pytest.mark.parametrize(
    "kind,record_id,code,words",
    [
        ("ref", 4, "mask_out_of_bounds", ["ann_id 104", "bbox", "40x30"]),
        ("ref", 5, "mask_out_of_bounds", ["ann_id 106", "polygon", "y 5..40"]),
        ("sentence", 1006, "mask_out_of_bounds", ["ref 4 quarantined"]),
        ("sentence", 1008, "empty_text", ["sent_id 1008", "is empty"]),
        ("sentence", 1009, "empty_text", ["sent_id 1009", "only whitespace"]),
        ("sentence", 1010, "punctuation_only", ["sent_id 1010", "no letter or digit"]),
        ("sentence", 1011, "invalid_utf8", ["sent_id 1011", "English", "not valid UTF-8", "xff"]),
        ("sentence", 1012, "no_translation", ["sent_id 1012", "no Chinese translation"]),
        ("sentence", 1013, "duplicate_translation", ["sent_id 1013", "duplicate"]),
        ("sentence", 1014, "invalid_utf8", ["sent_id 1014", "Chinese", "not valid UTF-8"]),
        ("translation", 9999, "unmatched_translation", ["sent_id 9999", "no expression"]),
    ],
)
def test_bad_records_quarantined(unc, kind, record_id, code, words):
    _, _, quarantine, _ = unc
    got_code, reason = _reason(quarantine, kind, record_id)
    assert got_code == code
    for w in words:
        assert w in reason
    hit = quarantine[(quarantine["kind"] == kind) & (quarantine["record_id"] == str(record_id))]
    if kind == "sentence":
        assert hit.iloc[0]["sample_id"] == f"refcoco/unc/sent_{record_id}"


def test_duplicate_translation_rows_quarantined(unc):
    _, _, quarantine, _ = unc
    dup = quarantine[(quarantine["kind"] == "translation") & (quarantine["record_id"] == "1013")]
    assert len(dup) == 2 and set(dup["code"]) == {"duplicate_sent_id"}
    assert "sent_id 1013: 2 rows" in dup.iloc[0]["reason"]


@pytest.mark.parametrize(
    "variant,fmt",
    [(v, "csv") for v in sorted(VARIANTS)]
    + [(("refcoco", "unc"), "jsonl"), (("refcocog", "umd"), "parquet")],
)
def test_split_by_variants_and_formats(corpus, tmp_path, variant, fmt):
    dataset, split_by = variant
    summary = _import(corpus, tmp_path, dataset, split_by, fmt)
    assert summary["counts"] == EXPECTED_COUNTS
    manifest = mf.read_manifest(str(tmp_path / "manifest.parquet"))
    assert sorted(manifest["sent_id"]) == KEPT_SENTS
    assert all(s.startswith(f"{dataset}/{split_by}/sent_") for s in manifest["sample_id"])
    names = VARIANTS[variant][0]
    assert set(manifest["split"]) == {names[s] for s in ("train", "val", "testA", "testB")}
    q = pd.read_parquet(tmp_path / "quarantine.parquet")
    assert _reason(q, "sentence", 1014)[0] == "invalid_utf8"
    assert _reason(q, "sentence", 1011)[0] == "invalid_utf8"
    assert manifest.set_index("sent_id").loc[1003, "text_zh"] == "中间的东西"


def test_raw_text_field(corpus, tmp_path):
    _import(corpus, tmp_path, text_field="raw")
    manifest = mf.read_manifest(str(tmp_path / "manifest.parquet"))
    assert manifest.set_index("sent_id").loc[1001, "text_en"] == "THE MAN ON THE LEFT"


def test_invalid_split_by_lists_valid_pairs(corpus, tmp_path):
    with pytest.raises(ReferImportError) as err:
        _import(corpus, tmp_path, "refcoco+", "google")
    msg = str(err.value)
    assert "refcoco+ has no split_by 'google'" in msg
    for d, ss in VALID_SPLIT_BY.items():
        for s in ss:
            assert f"{d}/{s}" in msg
    with pytest.raises(ReferImportError, match="unknown dataset 'coco'"):
        _import(corpus, tmp_path, "coco", "unc")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_refused_and_never_runs(corpus, tmp_path):
    # The payload is live: plain pickle would run it.
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(_Payload(live), protocol=2))
    assert live.exists()

    marker = tmp_path / "marker"
    root = tmp_path / "refer"
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "instances.json").write_text(
        (corpus["refer_root"] / "refcoco" / "instances.json").read_text())
    refs = _refs(VARIANTS[("refcoco", "unc")][0])
    refs[1]["sentences"][0]["tokens"] = _Payload(marker)  # hidden deep inside a ref
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        import_refer(str(root), "refcoco", "unc", str(corpus["images"]),
                     str(corpus["translations"]["csv"]), str(tmp_path / "out"))
    global_name = f"{os.system.__module__}.system"  # posix.system on Linux
    assert str(err.value) == f"{root / 'refcoco' / 'refs(unc).p'}: refused global '{global_name}'"
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("protocol", range(6))
def test_safe_pickle_plain_data_all_protocols(protocol):
    obj = [{"ref_id": 1, "big": 2**70, "neg": -3, "f": 0.25, "t": (1, "x"), "b": b"\xff\x00",
            "s": {1, 2}, "fs": frozenset({"a"}), "none": None, "ok": True, "text": "左边",
            "nested": [[], {}, ()]}]
    assert safe_loads(pickle.dumps(obj, protocol=protocol), "p") == obj


@pytest.mark.parametrize(
    "data,refused",
    [
        (pickle.dumps(bytearray(b"x"), protocol=2), "__builtin__.bytearray"),  # via fix_imports
        (pickle.dumps(bytearray(b"x"), protocol=4), "builtins.bytearray"),
        (b"\x80\x02ccopyreg\n_reconstructor\n)R.", "copyreg._reconstructor"),
        (b"cbuiltins\neval\n(S'1'\ntR.", "builtins.eval"),
        (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93.",
         "os.system"),
    ],
)
def test_safe_pickle_refuses_globals(data, refused):
    with pytest.raises(UnsafePickleError, match="refused global '" + refused.replace(".", r"\.")):
        safe_loads(data, "f.p")


def test_safe_pickle_codecs_only_latin1():
    ok = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R."
    assert safe_loads(ok, "p") == b"\xff"
    bad = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match="rot13"):
        safe_loads(bad, "p")
    with pytest.raises(pickle.UnpicklingError, match="p: not a readable pickle"):
        safe_loads(b"\x80\x02]q\x00(K\x01", "p")  # truncated


def test_py2_pickle_is_really_py2_shaped(corpus):
    data = (corpus["refer_root"] / "refcoco" / "refs(unc).p").read_bytes()
    refs = safe_loads(data, "p")
    assert refs[0][b"sentences"][0][b"sent"] == b"the man on the left"  # py2 str -> bytes


def test_translation_table_errors(tmp_path):
    bad = tmp_path / "zh.txt"
    bad.write_text("x")
    with pytest.raises(ReferImportError, match=r"zh\.txt: unknown translation table format"):
        read_translations(str(bad), Quarantine())
    nocol = tmp_path / "zh.csv"
    nocol.write_text("id,zh\n1,狗\n")
    with pytest.raises(ReferImportError, match=r"zh\.csv: translation table lacks column\(s\) "
                                               r"sent_id, text_zh"):
        read_translations(str(nocol), Quarantine())
    bom = tmp_path / "bom.csv"  # spreadsheet export: UTF-8 byte order mark before the header
    bom.write_bytes(b"\xef\xbb\xbfsent_id,text_zh\n7," + "猫".encode() + b"\n")
    assert read_translations(str(bom), Quarantine())[0] == {7: "猫".encode()}
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"sent_id": 1, "text_zh": "狗"}\n{broken\n{"sent_id": "x1", "text_zh": "猫"}\n')
    q = Quarantine()
    table, info = read_translations(str(jl), q)
    assert table == {1: "狗"} and info["rows"] == 3
    assert [(r["record_id"], r["code"]) for r in q.rows] == [("line 2", "bad_row"),
                                                             ("line 3", "bad_sent_id")]


def test_s3_import_from_and_to_bucket(corpus, s3_bucket):
    src = f"{s3_bucket}/data"
    storage.copy_tree(str(corpus["root"]), src)
    out = f"{s3_bucket}/out/refcoco-unc"
    summary = import_refer(f"{src}/refer", "refcoco", "unc", f"{src}/images",
                           f"{src}/zh.parquet", out, max_pixels=MAX_PIXELS)
    assert summary["counts"] == EXPECTED_COUNTS
    assert summary["missing_image_ids"] == [5, 11]
    manifest = mf.read_manifest(f"{out}/manifest.parquet")
    assert sorted(manifest["sent_id"]) == KEPT_SENTS
    assert manifest.set_index("sent_id").loc[1001, "image_uri"] == \
        f"{src}/images/train2014/img1.png"
    q = pd.read_parquet(io.BytesIO(storage.read_bytes(f"{out}/quarantine.parquet")))
    assert _reason(q, "image", 4)[0] == "truncated_image"
    assert json.loads(storage.read_bytes(f"{out}/summary.json"))["counts"] == EXPECTED_COUNTS


def test_cli(corpus, tmp_path, capsys):
    from pipelines.cli import main

    args = ["data", "import-refer", "--refer-root", str(corpus["refer_root"]), "--dataset",
            "refcoco", "--split-by", "unc", "--images", str(corpus["images"]), "--translations",
            str(corpus["translations"]["jsonl"]), "--out", str(tmp_path), "--max-pixels",
            str(MAX_PIXELS)]
    assert main(args) == 0
    assert "6 of 24 expressions kept (18 quarantined)" in capsys.readouterr().out


def test_cli_hostile_pickle_one_line(tmp_path, capsys):
    from components import import_refer as refer

    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(_Payload(tmp_path / "m"), 2))
    p = __import__("argparse").ArgumentParser()
    refer.configure_parser(p)
    args = p.parse_args(["--refer-root", str(tmp_path), "--dataset", "refcoco", "--split-by", "unc",
                         "--images", str(tmp_path), "--translations", str(tmp_path / "zh.csv"),
                         "--out", str(tmp_path / "out")])
    assert refer.run(args) == 1
    assert "UnsafePickleError: " in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cli_user_error_is_one_line(corpus, tmp_path, capsys):
    from pipelines.cli import main

    args = ["data", "import-refer", "--refer-root", str(corpus["refer_root"]), "--dataset",
            "refcoco", "--split-by", "umd", "--images", str(corpus["images"]), "--translations",
            str(corpus["translations"]["csv"]), "--out", str(tmp_path)]
    assert main(args) == 1
    assert "refcoco has no split_by 'umd'" in capsys.readouterr().err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
