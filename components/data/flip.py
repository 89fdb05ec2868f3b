"""Horizontal and vertical flips for training that keep every expression true of its image.

Mirroring an image turns "the man on the left" into a wrong description; mirroring it and swapping
the left/right words keeps it right. The words come from the lexicon of the translation checks
(``components/data/lexicon.tsv``, concepts ``left`` and ``right``): English variants are paired in
the order the lexicon lists them (left/right, leftmost/rightmost, lefthand/righthand,
leftside/rightside); a Chinese token swaps every 左 with 右 and back (左边 <-> 右边, 最左 <-> 最右),
unless it holds both (左右, "left and right", stays). Swapping works on token ids: a word whose
mirror is not in the vocabulary blocks the flip of any expression that uses it (that item is then
not flipped, never wrongly flipped).

A vertical flip swaps top and bottom words from explicit pairs (``VERTICAL_EN``, ``VERTICAL_ZH``),
not by characters: 上 and 下 also sit in words that name no side (上衣, a jacket), so a Chinese
token holding 上, 下, 顶 or 底 that is not in the pairs blocks the flip, and so does an English
word of the lexicon's ``top``/``bottom`` concepts without a pair (beneath, atop, ...) and the
phrase "on top" (its mirror is "below", not "on bottom").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ZH_SWAP = str.maketrans({"左": "右", "右": "左"})
HORIZONTAL, VERTICAL = "horizontal", "vertical"
VERTICAL_EN = [("top", "bottom"), ("topmost", "bottommost"), ("above", "below"),
               ("upper", "lower"), ("uppermost", "lowermost")]
VERTICAL_ZH = [("上", "下"), ("上面", "下面"), ("上方", "下方"), ("上边", "下边"), ("上部", "下部"),
               ("上端", "下端"), ("上侧", "下侧"), ("最上", "最下"), ("最上面", "最下面"),
               ("最上方", "最下方"), ("最上边", "最下边"), ("顶部", "底部"), ("顶端", "底端")]
ZH_VERTICAL_CHARS = "上下顶底"
BLOCKED_EN_PHRASES = [("on", "top")]  # vertical: "on top of X" mirrors to "below X"


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


def vertical_pairs(lang: str, lexicon=None) -> tuple[dict[str, str], set[str]]:
    """(top <-> bottom word pairs, words that name a vertical side but have no pair)."""
    pairs = dict(VERTICAL_EN if lang == "en" else VERTICAL_ZH)
    pairs.update({b: a for a, b in pairs.items()})
    if lang != "en":
        return pairs, set()
    if lexicon is None:
        from components.checks.lexicon import load_lexicon

        lexicon = load_lexicon()
    side = {w for c in ("top", "bottom") for term in lexicon.concepts[c].en for w in term.split()}
    return pairs, side - set(pairs) - {"on", "of"}


def mirror_word(word: str, lang: str, en_pairs: dict[str, str]) -> str:
    """The word a horizontal flip turns ``word`` into (itself when it names no side)."""
    if lang == "en":
        return en_pairs.get(word, word)
    if ("左" in word) != ("右" in word):
        return word.translate(ZH_SWAP)
    return word


def _vertical_word(word: str, lang: str, pairs: dict[str, str], unpaired: set[str]) -> str | None:
    """The word a vertical flip turns ``word`` into; None when it names a side without a pair."""
    if word in pairs:
        return pairs[word]
    if lang == "en":
        return None if word in unpaired else word
    return None if any(ch in word for ch in ZH_VERTICAL_CHARS) else word


class MirrorTable:
    """Token id -> the id of its mirrored word, for one vocabulary and one ``axis``
    (``horizontal``: left/right; ``vertical``: top/bottom)."""

    def __init__(self, vocab: Sequence[str], lang: str, en_pairs: dict[str, str] | None = None,
                 axis: str = HORIZONTAL):
        if axis not in (HORIZONTAL, VERTICAL):
            raise ValueError(f"axis must be {HORIZONTAL!r} or {VERTICAL!r}, got {axis!r}")
        self.axis = axis
        index = {w: i for i, w in enumerate(vocab)}
        self.ids = np.arange(len(vocab), dtype=np.int64)
        self.blocked = np.zeros(len(vocab), dtype=bool)
        self.swapped: list[tuple[str, str]] = []
        self.blocked_phrases: list[tuple[int, int]] = []
        if axis == HORIZONTAL:
            pairs = english_pairs() if en_pairs is None and lang == "en" else (en_pairs or {})
            mirror = lambda w: mirror_word(w, lang, pairs)  # noqa: E731
        else:
            vpairs, unpaired = vertical_pairs(lang)
            mirror = lambda w: _vertical_word(w, lang, vpairs, unpaired)  # noqa: E731
            if lang == "en":
                self.blocked_phrases = [(index[a], index[b]) for a, b in BLOCKED_EN_PHRASES
                                        if a in index and b in index]
        for i, w in enumerate(vocab):
            m = mirror(w)
            if m == w:
                continue
            if m is not None and m in index:
                self.ids[i] = index[m]
                self.swapped.append((w, m))
            else:
                self.blocked[i] = True

    def flippable(self, tokens: np.ndarray) -> bool:
        """Whether every expression of ``tokens`` (int ids, padding included) can be mirrored."""
        tokens = np.asarray(tokens)
        if self.blocked[tokens].any():
            return False
        for a, b in self.blocked_phrases:
            if ((tokens[..., :-1] == a) & (tokens[..., 1:] == b)).any():
                return False
        return True

    def mirror(self, tokens: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(tokens)]


def flip_draws(n: int, probability: float, seed: int, epoch: int) -> list[bool]:
    """Which of an epoch's ``n`` items are flipped: a generator of its own (seed, epoch), so the
    order of the items is drawn exactly as without flips."""
    from components.data.augment import _bernoulli

    return _bernoulli(n, probability, seed, epoch, "hflip")
