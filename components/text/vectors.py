"""Word vectors with gensim: pretrained files in three formats, or word2vec trained on the training
split, and the embedding matrix aligned with a vocabulary.

Formats: ``w2v-text`` (a header "count dim", then one word and its values per line), ``w2v-binary``
(the same header, then each word followed by raw float32 values) and ``glove`` (text without a
header). ``auto`` tells them apart from the file's first bytes. When gensim cannot read a file, the
file is read again line by line to name the first bad line in the error.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np

from components.errors import ConfigError, InputError, MissingInputError
from components.text.tokenizer import LANGS
from components.text.vocab import SPECIALS

VECTOR_FORMATS = ("auto", "w2v-text", "w2v-binary", "glove")


class VectorFileError(InputError):
    """A word-vector file is malformed or has the wrong dimension; names the file and line."""


def detect_vector_format(path: str) -> str:
    """``w2v-text`` (header "count dim"), ``w2v-binary`` (header + raw float32) or ``glove``."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if not head:
        raise VectorFileError(f"{path}: empty word-vector file")
    first, _, rest = head.partition(b"\n")
    parts = first.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        if b"\x00" in rest:
            return "w2v-binary"
        try:
            rest.decode("utf-8")
        except UnicodeDecodeError as exc:
            # a cut multi-byte character at the sample's end is still text
            if exc.start < len(rest) - 4:
                return "w2v-binary"
        return "w2v-text"
    return "glove"


def _diagnose_text(path: str, has_header: bool, expected_dim: int | None) -> str:
    """Find the first bad line of a text vector file (only run after gensim failed)."""
    dim = None
    declared = None
    n_vectors = 0
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if lineno == 1 and has_header:
                    parts = line.split()
                    if len(parts) != 2 or not all(p.isdigit() for p in parts):
                        return f"line 1: expected a header 'count dim', got {line.strip()[:60]!r}"
                    declared, dim = int(parts[0]), int(parts[1])
                    continue
                parts = line.rstrip("\n\r ").split(" ")
                if len(parts) == 1 and not parts[0]:
                    continue
                vals = parts[1:]
                if dim is None:
                    dim = len(vals)
                if len(vals) != dim:
                    return (f"line {lineno} (word {parts[0][:40]!r}): {len(vals)} values, "
                            f"expected {dim}")
                for v in vals:
                    try:
                        float(v)
                    except ValueError:
                        return f"line {lineno} (word {parts[0][:40]!r}): {v[:20]!r} is not a number"
                n_vectors += 1
        except UnicodeDecodeError as exc:
            return f"line {lineno + 1}: not UTF-8 text ({exc.reason})"
    if declared is not None and declared != n_vectors:
        return f"header (line 1) declares {declared} vectors, the file holds {n_vectors}"
    return "unreadable"


def _diagnose_binary(path: str) -> str:
    with open(path, "rb") as fh:
        header = fh.readline().split()
        if len(header) != 2 or not all(p.isdigit() for p in header):
            return f"line 1: expected a header 'count dim', got {b' '.join(header)[:60]!r}"
        declared, dim = int(header[0]), int(header[1])
        for i in range(declared):
            word = bytearray()
            while True:
                c = fh.read(1)
                if not c:
                    return (f"entry {i + 1} of {declared}: file ends inside the word "
                            f"(header declares {declared} vectors of dimension {dim})")
                if c == b" ":
                    break
                if c != b"\n":
                    word += c
            if len(fh.read(4 * dim)) != 4 * dim:
                return (f"entry {i + 1} of {declared} (word {bytes(word)[:40]!r}): file ends "
                        f"inside its {dim} float32 values")
    return "unreadable"


def load_vectors(path: str, fmt: str = "auto", expected_dim: int | None = None,
                 label: str = "vectors"):
    """Read a word-vector file with gensim; clear errors naming the file and line or dimension.
    Returns ``(KeyedVectors, format)``."""
    from gensim.models import KeyedVectors

    if fmt not in VECTOR_FORMATS:
        raise ConfigError(f"{label}: format must be one of {VECTOR_FORMATS}, got {fmt!r}")
    if not os.path.isfile(path):
        raise MissingInputError(f"{label} {path}: no such file")
    if fmt == "auto":
        fmt = detect_vector_format(path)
    try:
        kv = KeyedVectors.load_word2vec_format(
            path, binary=(fmt == "w2v-binary"), no_header=(fmt == "glove"), unicode_errors="strict"
        )
    except (ValueError, EOFError, UnicodeDecodeError, IndexError, OSError) as exc:
        where = (_diagnose_binary(path) if fmt == "w2v-binary"
                 else _diagnose_text(path, has_header=(fmt == "w2v-text"), expected_dim=expected_dim))
        raise VectorFileError(
            f"{label} {path} ({fmt}): malformed: {where} [gensim: {type(exc).__name__}: {exc}]"
        ) from None
    if len(kv) == 0:
        raise VectorFileError(f"{label} {path} ({fmt}): no vectors")
    if expected_dim is not None and kv.vector_size != int(expected_dim):
        raise VectorFileError(
            f"{label} {path} ({fmt}): vectors have dimension {kv.vector_size}, expected "
            f"{expected_dim}"
        )
    return kv, fmt


def auto_epochs(n_tokens: int) -> int:
    """Epochs of the trained fallback: about a million token visits, between 5 and 50."""
    return int(min(50, max(5, math.ceil(1_000_000 / max(1, n_tokens)))))


def train_vectors(token_lists: list[list[str]], dim: int, seed: int, epochs: int | None = None,
                  window: int = 5):
    """gensim Word2Vec on the training tokens: skip-gram, hierarchical softmax, deterministic.
    Returns ``(KeyedVectors, parameters)``."""
    from gensim.models import Word2Vec

    n_tokens = sum(len(t) for t in token_lists)
    epochs = auto_epochs(n_tokens) if epochs is None else int(epochs)
    model = Word2Vec(sentences=[t for t in token_lists if t], vector_size=int(dim), sg=1, hs=1,
                     negative=0, window=window, min_count=1, seed=int(seed), workers=1,
                     epochs=epochs)
    return model.wv, {"epochs": epochs, "window": window, "sg": 1, "hs": 1, "negative": 0,
                      "workers": 1, "seed": int(seed), "train_tokens": n_tokens}


def embedding_matrix(itos: list[str], kv, counts: Counter, seed: int, lang: str
                     ) -> tuple[np.ndarray, dict]:
    """[V, D] float32 aligned with ``itos``: found words copied, others N(0, std of the vectors)."""
    dim = kv.vector_size
    std = float(np.asarray(kv.vectors, dtype=np.float64).std())
    rng = np.random.default_rng([int(seed), LANGS.index(lang) if lang in LANGS else 2])
    emb = rng.normal(0.0, std, size=(len(itos), dim)).astype(np.float32)
    emb[0] = 0.0
    found_types = 0
    found_tokens = 0
    total_tokens = 0
    missing: list[str] = []
    for i, w in enumerate(itos):
        if w in SPECIALS:
            continue
        total_tokens += counts[w]
        idx = kv.key_to_index.get(w)
        if idx is None:
            missing.append(w)
            continue
        emb[i] = kv.vectors[idx]
        found_types += 1
        found_tokens += counts[w]
    n_types = len(itos) - len(SPECIALS)
    info = {
        "types_in_vocab": n_types,
        "types_found": found_types,
        "coverage_types": round(found_types / n_types, 6) if n_types else 0.0,
        "coverage_tokens": round(found_tokens / total_tokens, 6) if total_tokens else 0.0,
        "unknown_init": {"method": "normal", "mean": 0.0, "std": round(std, 6),
                         "seed": [int(seed), LANGS.index(lang) if lang in LANGS else 2],
                         "rows": len(missing) + 1, "padding_row": "zeros"},
        "missing_sample": sorted(missing, key=lambda w: -counts[w])[:20],
    }
    return emb, info


def word_vectors(train_tokens: list[list[str]], source: str | None, fmt: str = "auto",
                 dim: int | None = None, seed: int = 0, epochs: int | None = None,
                 label: str = "vectors") -> tuple[object, dict]:
    """The word vectors of one language: read from ``source`` (local or s3://; ``dim`` is then the
    dimension it must have), or, without one, word2vec of dimension ``dim`` trained on
    ``train_tokens``. Returns ``(KeyedVectors, description)`` (source, format, parameters)."""
    if source:
        import tempfile

        from components.data import storage

        with tempfile.TemporaryDirectory(prefix="refseg-vec-") as cache:
            path = storage.local_copy(str(source), cache)
            kv, fmt = load_vectors(path, fmt, dim, label=label)
        return kv, {"source": str(source), "format": fmt, "pretrained_size": len(kv)}
    kv, params = train_vectors(train_tokens, int(dim), seed, epochs)
    return kv, {"source": "trained", "format": "gensim Word2Vec", "word2vec": params}
