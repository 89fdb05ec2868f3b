"""Horizontal flip that keeps expressions true (components/data/flip.py): the left/right words of
the lexicon, the token-id table, the sampler's draws, and a flipped training item."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.data.flip import MirrorTable, english_pairs, flip_draws, mirror_word
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
