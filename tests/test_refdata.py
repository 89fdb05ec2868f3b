"""Grouped data loading (components/refdata.py) on the synthetic set after the real tokenize step:
grouping by image, resizing (bilinear images, nearest masks), s3:// images through the cache, the
seeded sampler (expression cap, DDP sharding, resume offset). Budget: a few seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data import manifest as mf
from components.data.refdata import (
    GroupedSampler,
    PairSampler,
    RefDataError,
    RefDataset,
    collate_grouped,
)


def test_items_group_all_expressions_of_an_image(data_dir):
    df = mf.read_manifest(str(data_dir / "manifest.parquet"))
    for lang in ("zh", "en"):
        ds = RefDataset(str(data_dir), lang, "train", input_size=64)
        train = df[df["split"] == "train"]
        assert len(ds) == train["image_id"].nunique()
        assert ds.num_expressions == len(train)
        assert sum(ds.expression_counts()) == len(train)
        assert ds.image_ids() == sorted(train["image_id"].unique().tolist())
        it = ds[3]
        k = len(it["sample_ids"])
        want = train[train["image_id"] == it["image_id"]]["sample_id"].tolist()
        assert sorted(it["sample_ids"]) == sorted(want) and k == len(want)
        assert it["image"].shape == (3, 64, 64) and it["image"].dtype == torch.float32
        assert 0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0
        assert it["tokens"].dtype == torch.int64 and it["tokens"].shape[0] == k
        assert it["lengths"].shape == (k,) and int(it["lengths"].min()) >= 1
        assert it["masks"].shape == (k, 1, 64, 64)
        assert set(torch.unique(it["masks"]).tolist()) <= {0.0, 1.0}


def test_resizing_matches_full_resolution(data_dir):
    ds128 = RefDataset(str(data_dir), "en", "val", input_size=128)  # synth images are 128 px
    ds64 = RefDataset(str(data_dir), "en", "val", input_size=64)
    it = ds128[0]
    sid = it["sample_ids"][0]
    full = ds128.full_mask(sid)
    assert full.shape == (128, 128)
    np.testing.assert_array_equal(it["masks"][0, 0].numpy(), full.astype(np.float32))
    orig = ds128.original_image(it["image_id"])
    assert orig.dtype == np.uint8 and orig.shape == (128, 128, 3)
    np.testing.assert_allclose(it["image"].permute(1, 2, 0).numpy(), orig / 255.0, atol=1e-6)
    # nearest: every low-res mask pixel equals the full-res pixel at the cell centre
    small = ds64[0]["masks"][0, 0].numpy()
    np.testing.assert_array_equal(small, full[1::2, 1::2].astype(np.float32))
    # antialiased bilinear 2x downsampling (the same call as model.predict): a smoothed version
    # close to the mean of each 2x2 block, unlike nearest sampling of one pixel
    img64 = ds64[0]["image"].permute(1, 2, 0).numpy()
    block = orig.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3)) / 255.0
    nearest = orig[1::2, 1::2] / 255.0
    assert np.abs(img64 - block).mean() < 0.5 * np.abs(nearest - block).mean()


def test_collate_builds_image_index_and_trims_padding(data_dir):
    ds = RefDataset(str(data_dir), "zh", "train", input_size=32)
    items = [ds[0], ds[1], ds[2]]
    b = collate_grouped(items)
    ks = [len(it["sample_ids"]) for it in items]
    n = sum(ks)
    assert b["images"].shape == (3, 3, 32, 32)
    assert b["tokens"].shape == (n, int(b["lengths"].max()))
    assert b["image_index"].tolist() == [i for i, k in enumerate(ks) for _ in range(k)]
    assert b["masks"].shape == (n, 1, 32, 32)
    assert b["sample_ids"] == [s for it in items for s in it["sample_ids"]]
    assert (b["tokens"][:, : int(b["lengths"].min())] > 0).all()


def test_deterministic_and_subset_selection(data_dir):
    a = RefDataset(str(data_dir), "en", "train", input_size=32)
    b = RefDataset(str(data_dir), "en", "train", input_size=32, memory_cache=True)
    for i in (0, 5):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["tokens"], y["tokens"])
        assert torch.equal(x["masks"], y["masks"]) and x["sample_ids"] == y["sample_ids"]
    full = a[0]
    sub = a[(0, (1,))] if len(full["sample_ids"]) > 1 else a[(0, (0,))]
    j = 1 if len(full["sample_ids"]) > 1 else 0
    assert sub["sample_ids"] == [full["sample_ids"][j]]
    assert torch.equal(sub["masks"][0], full["masks"][j])


def test_sampler_caps_shuffles_and_shards():
    counts = [1, 5, 2, 0, 7, 3, 1, 4]
    s = GroupedSampler(counts, seed=3, max_expressions=2, batch_size=2, drop_last=False)
    items = s.epoch_items()
    seen = {}
    for i, sel in items:
        assert 1 <= len(sel) <= 2
        seen.setdefault(i, []).extend(sel)
    assert {i: sorted(v) for i, v in seen.items()} == {
        i: list(range(c)) for i, c in enumerate(counts) if c}
    assert s.epoch_items() == GroupedSampler(counts, seed=3, max_expressions=2).epoch_items()
    assert s.epoch_items(1) != s.epoch_items(0)
    assert GroupedSampler(counts, seed=4, max_expressions=2).epoch_items() != items
    # DDP: the union of the ranks' i-th batches is the single-process i-th global batch
    one = GroupedSampler(counts, seed=3, batch_size=4)
    two = [GroupedSampler(counts, seed=3, batch_size=2, num_replicas=2, rank=r) for r in (0, 1)]
    glob = list(one)
    per = [list(t) for t in two]
    assert len(glob) % 4 == 0 and len(per[0]) == len(per[1]) == len(glob) // 2
    for i in range(len(glob) // 4):
        assert sorted(per[0][2 * i:2 * i + 2] + per[1][2 * i:2 * i + 2]) == sorted(
            glob[4 * i:4 * i + 4])
    # resume inside an epoch
    one.set_start(4)
    assert list(one) == glob[4:]
    one.set_epoch(2)
    assert one.start == 0 and list(one) == one.epoch_items(2)
    # an epoch shorter than a global batch is padded by repeating
    tiny = GroupedSampler([2, 1], seed=0, batch_size=3)
    assert len(list(tiny)) == 3 and tiny.batches_per_epoch() == 1


def test_pair_sampler_covers_every_pair_once_seeded_and_sharded():
    """batching: pair: every (image, expression) pair exactly once per epoch, one seeded
    permutation per epoch, two ranks without overlap whose i-th batches make the global i-th."""
    counts = [1, 5, 2, 0, 7, 3, 1, 4]  # 23 pairs
    pairs = sorted((i, (j,)) for i, k in enumerate(counts) for j in range(k))
    s = PairSampler(counts, seed=3, batch_size=1, drop_last=False)
    items = s.epoch_items()
    assert len(items) == 23 and sorted(items) == pairs
    assert items != pairs  # shuffled
    assert items == PairSampler(counts, seed=3).epoch_items()  # deterministic with the seed
    assert PairSampler(counts, seed=4).epoch_items() != items
    assert s.epoch_items(1) != items and sorted(s.epoch_items(1)) == pairs
    assert PairSampler(counts, shuffle=False, drop_last=False).epoch_items() == pairs
    # 2 ranks x 2 pairs: disjoint shards, the union of their i-th batches is the global i-th
    one = PairSampler(counts, seed=3, batch_size=4)
    two = [PairSampler(counts, seed=3, batch_size=2, num_replicas=2, rank=r) for r in (0, 1)]
    glob, per = list(one), [list(t) for t in two]
    assert len(glob) == 20 and one.batches_per_epoch() == 5  # 23 cut to whole global batches
    assert len(per[0]) == len(per[1]) == 10 and not set(per[0]) & set(per[1])
    assert sorted(per[0] + per[1]) == sorted(glob) and set(glob) <= set(pairs)
    for i in range(5):
        assert sorted(per[0][2 * i:2 * i + 2] + per[1][2 * i:2 * i + 2]) == sorted(
            glob[4 * i:4 * i + 4])
    # resume inside an epoch: the rest of the same order
    two[1].set_start(4)
    assert list(two[1]) == per[1][4:] and len(two[1]) == 6
    two[1].set_epoch(1)
    assert list(two[1]) == two[1].epoch_items(1)[1::2]


def test_pair_items_are_groups_of_one(data_dir):
    """A pair is the dataset's item with one expression; a batch of pairs is one image each."""
    ds = RefDataset(str(data_dir), "en", "train", input_size=32)
    cached = RefDataset(str(data_dir), "en", "train", input_size=32, memory_cache=True)
    s = PairSampler(ds.expression_counts(), seed=0, batch_size=3)
    assert len(s.epoch_items()) == ds.num_expressions - ds.num_expressions % 3
    keys = list(s)[:3]
    b = collate_grouped([ds[k] for k in keys])
    assert b["images"].shape == (3, 3, 32, 32) and b["image_index"].tolist() == [0, 1, 2]
    assert b["masks"].shape == (3, 1, 32, 32) and b["tokens"].shape[0] == 3
    for n, (i, (j,)) in enumerate(keys):
        full = ds[i]
        assert b["sample_ids"][n] == full["sample_ids"][j]
        assert torch.equal(b["masks"][n], full["masks"][j])
        assert torch.equal(cached[(i, (j,))]["masks"][0], full["masks"][j])
        assert torch.equal(b["images"][n], full["image"])


def test_images_from_s3_through_the_cache(data_dir, s3_bucket, tmp_path):
    from components.data import storage

    df = mf.read_manifest(str(data_dir / "manifest.parquet"))
    moved = tmp_path / "data"
    shutil.copytree(data_dir, moved)
    uris = []
    for u in df["image_uri"]:
        key = f"{s3_bucket}/images/{Path(u).name}"
        if key not in uris:
            storage.write_bytes(key, Path(u).read_bytes())
            uris.append(key)
    df["image_uri"] = [f"{s3_bucket}/images/{Path(u).name}" for u in df["image_uri"]]
    mf.write_manifest(df, str(moved / "manifest.parquet"))
    cache = tmp_path / "cache"
    ds = RefDataset(str(moved), "en", "val", input_size=128, cache_dir=str(cache))
    local = RefDataset(str(data_dir), "en", "val", input_size=128)
    assert torch.equal(ds[0]["image"], local[0]["image"])
    assert any(cache.rglob("*.png"))


def test_errors_name_the_record(data_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    df = mf.read_manifest(str(bad / "manifest.parquet"))
    victim = df[df["split"] == "val"]["sample_id"].iloc[0]
    mf.write_manifest(df[df["sample_id"] != victim], str(bad / "manifest.parquet"))
    with pytest.raises(RefDataError, match=f"sample '{victim}'.*not in"):
        RefDataset(str(bad), "en", "val", input_size=32)
    with pytest.raises(FileNotFoundError, match="testC.npz"):
        RefDataset(str(data_dir), "en", "testC", input_size=32)
    with pytest.raises(ValueError, match="lang"):
        RefDataset(str(data_dir), "fr", "val", input_size=32)
