"""Vocabularies and fixed-length encoding of token lists.

A vocabulary is a list of tokens whose index is the token id: ``<pad>`` = 0, ``<unk>`` = 1, then the
words of the training split with at least ``min_count`` occurrences, by count (descending) and then
alphabetically, so the same tokens always give the same ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from components.errors import ConfigError
from components.text.tokenizer import PAD, UNK

SPECIALS = (PAD, UNK)


def build_vocab(token_lists: Iterable[list[str]], min_count: int = 1) -> tuple[list[str], Counter]:
    """Specials first, then words with count >= min_count by count (desc), then alphabetically."""
    if min_count < 1:
        raise ConfigError(f"min_count must be at least 1, got {min_count}")
    counts: Counter = Counter()
    for toks in token_lists:
        counts.update(toks)
    words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                   key=lambda w: (-counts[w], w))
    return list(SPECIALS) + words, counts


def encode(token_lists: Sequence[list[str]], stoi: dict[str, int], max_len: int
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """Token lists -> (ids int32 [N, T] 0-padded, lengths int32 [N], number truncated)."""
    n = len(token_lists)
    ids = np.zeros((n, max_len), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    truncated = 0
    unk = stoi[UNK]
    for i, toks in enumerate(token_lists):
        if len(toks) > max_len:
            truncated += 1
            toks = toks[:max_len]
        lengths[i] = len(toks)
        ids[i, : len(toks)] = [stoi.get(t, unk) for t in toks]
    return ids, lengths, truncated
