"""The synthetic bilingual dataset and the Table 1 statistics."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from components.data import manifest as mf
from components.synth import generate


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic_and_seed_dependent(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(str(a), n_images=20, seed=3)
    generate(str(b), n_images=20, seed=3)
    generate(str(c), n_images=20, seed=4)
    da, db, dc = (mf.read_manifest(str(p / "manifest.parquet")) for p in (a, b, c))
    cols = ["sample_id", "split", "text_en", "text_zh", "bbox", "ann_id"]
    assert da[cols].equals(db[cols])
    assert [m["counts"] for m in da["mask"]] == [m["counts"] for m in db["mask"]]
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert not da[["text_en", "text_zh"]].equals(dc[["text_en", "text_zh"]])


def test_synth_rows_are_consistent(synth_dataset):
    df = mf.read_manifest(str(synth_dataset / "manifest.parquet"))
    summary = json.loads((synth_dataset / "summary.json").read_text())
    assert summary["expressions"] == len(df) > 200
    assert set(df["split"]) <= {"train", "val", "testA", "testB"}
    assert {"train", "val"} <= set(df["split"])
    # one split per image
    assert (df.groupby("image_id")["split"].nunique() == 1).all()
    for row in df.sample(40, random_state=0).itertuples():
        m = mf.decode_mask(row.mask)
        img = np.asarray(Image.open(row.image_uri))
        assert m.shape == img.shape[:2] == (128, 128)
        ys, xs = np.nonzero(m)
        x, y, w, h = row.bbox
        assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (x, y, w, h)
        # the object's pixels carry its colour: the mask region differs from the background
        assert m.sum() > 20
        assert row.text_en.strip() and row.text_zh.strip()
        assert any("\u4e00" <= ch <= "\u9fff" for ch in row.text_zh)


def test_synth_expressions_are_unambiguous(synth_dataset):
    """Within an image, the same expression never refers to two different objects."""
    df = mf.read_manifest(str(synth_dataset / "manifest.parquet"))
    for col in ("text_en", "text_zh"):
        n_objects = df.groupby(["image_id", col])["ann_id"].nunique()
        assert (n_objects == 1).all(), n_objects[n_objects > 1].head()
    # English and Chinese are paired one to one per object
    pairs = df.groupby(["image_id", "text_en"])["text_zh"].nunique()
    assert (pairs == 1).all()


def test_synth_distractors_and_relations_present(synth_dataset):
    df = mf.read_manifest(str(synth_dataset / "manifest.parquet"))
    assert df["text_en"].str.contains(" left of | right of | above | below ").any()
    assert df["text_zh"].str.contains("左边的|右边的").any()
    per_image = df.groupby("image_id")["ann_id"].nunique()
    assert per_image.max() >= 2  # several referred objects in one image


def test_synth_to_s3_and_back(s3_bucket):
    uri = f"{s3_bucket}/synth"
    summary = generate(uri, n_images=5, seed=1)
    df = mf.read_manifest(summary["manifest"])
    assert len(df) == summary["expressions"]
    assert all(u.startswith(uri + "/images/") for u in df["image_uri"])
    from components.data import storage

    img = Image.open(__import__("io").BytesIO(storage.read_bytes(df["image_uri"].iloc[0])))
    assert img.size == (128, 128)


def test_stats_table1(synth_dataset):
    from components.stats import table1

    df = mf.read_manifest(str(synth_dataset / "manifest.parquet"))
    t = table1(df, workers=1)
    assert t.loc["all", "expressions"] == len(df)
    assert t.loc["all", "images"] == df["image_id"].nunique()
    assert t.loc["train", "expressions"] == (df["split"] == "train").sum()
    # English words of a known row: hand-counted average
    en = df["text_en"].str.split().str.len().mean()
    assert abs(t.loc["all", "en_words"] - round(en, 2)) < 0.011
    assert t.loc["all", "zh_chars"] > t.loc["all", "zh_words"] >= 1
    assert t.loc["all", "missing_zh"] == 0


def test_stats_counts_missing_text():
    from components.stats import table1

    base = {
        "dataset": "x", "split": "train", "image_id": 1, "image_uri": "/tmp/x.png", "ref_id": 1,
        "category": "c", "bbox": [0.0, 0.0, 1.0, 1.0], "mask": {"size": [2, 2], "counts": "04"},
    }
    import pandas as pd

    df = pd.DataFrame([
        {**base, "sample_id": "a", "ann_id": 1, "text_en": "the red car", "text_zh": "红色的车"},
        {**base, "sample_id": "b", "ann_id": 2, "text_en": "left man", "text_zh": "  "},
    ])
    t = table1(df, workers=1)
    assert t.loc["train", "missing_zh"] == 1
    assert t.loc["train", "en_words"] == 2.5
    assert t.loc["train", "zh_chars"] == 4.0


def test_cli_synth_then_stats(tmp_path):
    out = tmp_path / "d"
    exe = [sys.executable, "-m", "pipelines.cli"]
    r = subprocess.run(exe + ["data", "synth", "--out", str(out), "--images", "10", "--seed", "2"],
                       capture_output=True, text=True, check=True)
    assert "expressions" in r.stdout
    r = subprocess.run(exe + ["data", "stats", "--manifest", str(out / "manifest.parquet"),
                              "--json", str(tmp_path / "t1.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "t1.json").read_text())
    assert rows[-1]["split"] == "all" and rows[-1]["images"] == 10
    r = subprocess.run(exe + ["data", "stats", "--manifest", str(tmp_path / "missing.parquet")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "missing.parquet" in r.stderr
