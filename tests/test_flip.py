"""Augmentations that keep expressions true (components/data/flip.py, augment.py): the left/right
words of the lexicon, the top/bottom pairs, the token-id tables, the sampler's draws, and flipped
and zoomed training items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.data.augment import FLIP_H, FLIP_V, Augmentation, zoom_out
from components.data.flip import VERTICAL, MirrorTable, english_pairs, flip_draws, mirror_word
from components.data.refdata import GroupedSampler, PairSampler, RefDataset
from components.text.tokenized import TokenizedData


def test_english_pairs_come_from_the_lexicon_in_order():
    pairs = english_pairs()
    assert pairs["left"] == "right" and pairs["right"] == "left"
    assert pairs["leftmost"] == "rightmost" and pairs["rightside"] == "leftside"
    assert "red" not in pairs and "top" not in pairs


@pytest.mark.parametrize("word,want", [("左边", "右边"), ("最右", "最左"), ("左侧的", "右侧的"),
                                       ("左右", "左右"), ("红色", "红色"), ("左", "右")])
def test_chinese_words_swap_left_and_right(word, want):
    assert mirror_word(word, "zh", {}) == want


def test_table_maps_ids_and_blocks_words_without_a_mirror():
    vocab = ["<pad>", "<unk>", "the", "left", "right", "red", "leftside", "circle"]
    t = MirrorTable(vocab, "en")
    toks = np.array([[2, 3, 5, 7], [2, 4, 0, 0]])
    assert t.mirror(toks).tolist() == [[2, 4, 5, 7], [2, 3, 0, 0]]
    assert t.flippable(toks)
    assert not t.flippable(np.array([[2, 6, 7, 0]]))  # "leftside" has no "rightside" here
    assert sorted(t.swapped) == [("left", "right"), ("right", "left")]
    zh = MirrorTable(["<pad>", "<unk>", "左边", "右边", "最左", "圆形"], "zh")
    assert zh.ids.tolist() == [0, 1, 3, 2, 4, 5] and zh.blocked.tolist() == [0, 0, 0, 0, 1, 0]


def test_sampler_draws_flips_without_changing_the_order():
    counts = [3, 1, 4, 2, 5]
    for cls in (GroupedSampler, PairSampler):
        plain = cls(counts, seed=3, batch_size=2).epoch_items(1)
        flipped = cls(counts, seed=3, batch_size=2, hflip=0.5).epoch_items(1)
        again = cls(counts, seed=3, batch_size=2, hflip=0.5).epoch_items(1)
        assert flipped == again and len(flipped) == len(plain)
        assert [(f[0], f[1]) if f[1] is not None else f[0] for f in flipped] == plain
        assert {f[2] for f in flipped} == {True, False}
    assert flip_draws(1000, 0.5, 0, 0) != flip_draws(1000, 0.5, 0, 1)
    assert 400 < sum(flip_draws(1000, 0.5, 0, 0)) < 600 and flip_draws(5, 0.0, 0, 0) == [False] * 5


def test_a_flipped_item_mirrors_image_masks_and_words(data_dir):
    data = TokenizedData(str(data_dir))
    vocab = data.read_vocab("en")
    ds = RefDataset(str(data_dir), "en", "train", 64)
    ds.mirror = MirrorTable(vocab, "en")
    left, right = vocab.index("left"), vocab.index("right")
    index = next(i for i in range(len(ds)) if (ds[i]["tokens"] == left).any()
                 and ds.mirror.flippable(ds[i]["tokens"].numpy()))
    plain, flipped = ds[(index, None, False)], ds[(index, None, True)]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    assert torch.equal(flipped["tokens"] == right, plain["tokens"] == left)
    assert torch.equal(flipped["lengths"], plain["lengths"])
    assert flipped["sample_ids"] == plain["sample_ids"]


def test_vertical_table_swaps_paired_words_and_blocks_the_rest():
    vocab = ["<pad>", "<unk>", "the", "top", "bottom", "above", "below", "beneath", "on", "of",
             "cup", "topmost"]
    t = MirrorTable(vocab, "en", axis=VERTICAL)
    assert t.mirror(np.array([[2, 10, 5, 2, 3]])).tolist() == [[2, 10, 6, 2, 4]]
    assert t.ids[11] == 11 and t.blocked[11]  # "topmost" without "bottommost" in the vocabulary
    assert t.flippable(np.array([[2, 10, 5, 2, 3]]))
    assert not t.flippable(np.array([[2, 10, 7, 2, 0]]))  # "beneath": no pair
    assert not t.flippable(np.array([[2, 10, 8, 3, 9]]))  # "on top of" mirrors to "below"
    assert t.flippable(np.array([[8, 2, 3]]))  # "on the top" is fine
    assert "left" not in dict(MirrorTable(["left", "right"], "en", axis=VERTICAL).swapped)
    zh = MirrorTable(["<pad>", "上面", "下面", "最上面", "最下面", "上衣", "左边", "圆形"], "zh",
                     axis=VERTICAL)
    assert zh.ids.tolist() == [0, 2, 1, 4, 3, 5, 6, 7]
    assert zh.blocked.tolist() == [0, 0, 0, 0, 0, 1, 0, 0]  # 上衣 (a jacket) names no side
    with pytest.raises(ValueError, match="axis"):
        MirrorTable(vocab, "en", axis="diagonal")


def test_augmentation_draws_are_seeded_and_independent():
    counts = [3, 1, 4, 2, 5, 2, 2, 3]
    plain = GroupedSampler(counts, seed=3, batch_size=2).epoch_items(1)
    h = GroupedSampler(counts, seed=3, batch_size=2, hflip=0.5).epoch_items(1)
    hvz = GroupedSampler(counts, seed=3, batch_size=2, hflip=0.5, vflip=0.5,
                         zoom_out=0.3).epoch_items(1)
    assert [it[0] for it in hvz] == plain  # the order is drawn as without augmentation
    assert [it[2] & FLIP_H for it in hvz] == [int(it[2]) for it in h]  # vflip leaves hflip's draws
    assert {it[2] & FLIP_V for it in hvz} == {0, FLIP_V}
    assert all(0.7 <= z[0] <= 1 and 0 <= z[1] <= 1 and 0 <= z[2] <= 1 for *_, z in hvz)
    assert hvz == GroupedSampler(counts, seed=3, batch_size=2, hflip=0.5, vflip=0.5,
                                 zoom_out=0.3).epoch_items(1)
    zooms = Augmentation(zoom_out=0.5).draws(2000, 0, 0)
    assert {c for c, _ in zooms} == {0} and 0.5 <= min(z[0] for _, z in zooms) < 0.51
    with pytest.raises(ValueError, match="zoom_out"):
        Augmentation(zoom_out=1.0)


def test_zoom_out_shrinks_into_the_region_and_fills_the_rest():
    img = torch.rand(3, 40, 40)
    mask = torch.zeros(2, 1, 40, 40)
    mask[0, 0, 10:30, 10:30] = 1
    fill = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    zi = zoom_out(img, (40, 32), (0.5, 1.0, 0.0), fill, binary=False)
    zm = zoom_out(mask, (40, 32), (0.5, 1.0, 0.0), 0.0, binary=True)
    assert torch.equal(zi[:, :, 32:], img[:, :, 32:])  # outside the region: untouched
    assert torch.equal(zi[:, 20:, :32], fill.expand(3, 20, 32))  # below the placed image
    assert torch.equal(zi[:, :20, :16], fill.expand(3, 20, 16))  # left of it (x offset 1)
    assert zm[0, 0, :20, 16:32].sum() == 10 * 10 and zm.sum() == zm[0].sum()
    assert set(zm.unique().tolist()) == {0.0, 1.0}
    assert zoom_out(img, (40, 40), (1.0, 0.3, 0.3), fill, binary=False) is img


def test_an_augmented_item_flips_both_ways_and_zooms(data_dir):
    data = TokenizedData(str(data_dir))
    vocab = data.read_vocab("en")
    ds = RefDataset(str(data_dir), "en", "train", 64)
    ds.mirror, ds.vmirror = MirrorTable(vocab, "en"), MirrorTable(vocab, "en", axis=VERTICAL)
    top, bottom = vocab.index("top"), vocab.index("bottom")
    index = next(i for i in range(len(ds)) if (ds[i]["tokens"] == top).any()
                 and ds.vmirror.flippable(ds[i]["tokens"].numpy())
                 and ds.mirror.flippable(ds[i]["tokens"].numpy()))
    plain = ds[(index, None, 0, None)]
    both = ds[(index, None, FLIP_H | FLIP_V, None)]
    assert torch.equal(both["image"], plain["image"].flip(-1).flip(-2))
    assert torch.equal(both["masks"], plain["masks"].flip(-1).flip(-2))
    assert torch.equal(both["tokens"] == bottom, plain["tokens"] == top)
    zoomed = ds[(index, None, 0, (0.5, 0.0, 0.0))]
    assert torch.equal(zoomed["tokens"], plain["tokens"])
    assert torch.allclose(zoomed["masks"].sum(), plain["masks"].sum() / 4, rtol=0.2)
    assert zoomed["masks"][..., 32:, :].sum() == 0 and zoomed["masks"][..., :, 32:].sum() == 0
