"""Horizontal flip for training that keeps every expression true of its image.

Mirroring an image turns "the man on the left" into a wrong description; mirroring it and swapping
the left/right words keeps it right. The words come from the lexicon of the translation checks
(``components/data/lexicon.tsv``, concepts ``left`` and ``right``): English variants are paired in
the order the lexicon lists them (left/right, leftmost/rightmost, lefthand/righthand,
leftside/rightside); a Chinese token swaps every 左 with 右 and back (左边 <-> 右边, 最左 <-> 最右),
unless it holds both (左右, "left and right", stays). Swapping works on token ids: a word whose
mirror is not in the vocabulary blocks the flip of any expression that uses it (that item is then
not flipped, never wrongly flipped).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ZH_SWAP = str.maketrans({"左": "右", "右": "左"})


def english_pairs(lexicon=None) -> dict[str, str]:
    """left <-> right word pairs (both directions) from the lexicon's ``left``/``right`` concepts."""
    if lexicon is None:
        from components.checks.lexicon import load_lexicon

        lexicon = load_lexicon()
    left, right = lexicon.concepts["left"].en, lexicon.concepts["right"].en
    if len(left) != len(right):
        raise ValueError(f"lexicon: 'left' has {len(left)} English terms and 'right' "
                         f"{len(right)}; they are paired in order")
    pairs = dict(zip(left, right, strict=True))
    pairs.update({r: lf for lf, r in pairs.items()})
    return pairs


def mirror_word(word: str, lang: str, en_pairs: dict[str, str]) -> str:
    """The word a horizontal flip turns ``word`` into (itself when it names no side)."""
    if lang == "en":
        return en_pairs.get(word, word)
    if ("左" in word) != ("右" in word):
        return word.translate(ZH_SWAP)
    return word


class MirrorTable:
    """Token id -> the id of its mirrored word, for one vocabulary."""

    def __init__(self, vocab: Sequence[str], lang: str, en_pairs: dict[str, str] | None = None):
        pairs = english_pairs() if en_pairs is None and lang == "en" else (en_pairs or {})
        index = {w: i for i, w in enumerate(vocab)}
        self.ids = np.arange(len(vocab), dtype=np.int64)
        self.blocked = np.zeros(len(vocab), dtype=bool)
        self.swapped: list[tuple[str, str]] = []
        for i, w in enumerate(vocab):
            m = mirror_word(w, lang, pairs)
            if m == w:
                continue
            if m in index:
                self.ids[i] = index[m]
                self.swapped.append((w, m))
            else:
                self.blocked[i] = True

    def flippable(self, tokens: np.ndarray) -> bool:
        """Whether every expression of ``tokens`` (int ids, padding included) can be mirrored."""
        return not bool(self.blocked[np.asarray(tokens)].any())

    def mirror(self, tokens: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(tokens)]


def flip_draws(n: int, probability: float, seed: int, epoch: int) -> list[bool]:
    """Which of an epoch's ``n`` items are flipped: a generator of its own (seed, epoch), so the
    order of the items is drawn exactly as without flips."""
    if probability <= 0 or n == 0:
        return [False] * n
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919_000_000)
    return (torch.rand(n, generator=g) < probability).tolist()
