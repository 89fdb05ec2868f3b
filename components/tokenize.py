"""The tokenize step: segmentation, vocabularies, word vectors and encoded shards per language.

Chinese expressions are segmented with jieba (precise mode, HMM on) using the project's user
dictionary (``components/data/userdict_zh.txt``) plus any ``--zh-userdict`` files; English ones are
lower-cased word tokens (``components.zh``). A vocabulary per language is built from the training
split (``<pad>`` = 0, ``<unk>`` = 1, words by count then alphabetically), every split is encoded to
fixed-length id arrays, and one embedding matrix per language is aligned with its vocabulary: from a
pretrained file read with gensim (word2vec text or binary, GloVe text without header), or, without
one, from gensim ``Word2Vec`` trained on the training split (skip-gram, hierarchical softmax, one
worker, fixed seed: deterministic).

Rows whose text is empty after normalisation, holds a token longer than ``max_token_chars``, or is
in another script (no Chinese characters in ``text_zh``, no Latin letters in ``text_en``) are
quarantined with the reason; a row is kept only when all requested languages pass, so the manifest
and every language's shards hold the same rows in the same order.

Output folder (read by the train step)::

    manifest.parquet           kept rows of the input manifest (components.manifest.write_manifest)
    vocab_{lang}.json          JSON list of tokens, index = id
    embeddings_{lang}.npy      float32 [V, D], row 0 (padding) zeros
    shards/{lang}/{split}.npz  sample_id (unicode), tokens int32 [N, T] 0-padded, lengths int32 [N]
    tokenizer.json             configuration (max lengths, min count, user dictionary, vectors, dims)
    userdict_zh.txt            the user dictionary in effect (project + extra), for inference
    quarantine.parquet         sample_id, lang, reason (+ split, text)
    summary.json               counts, Table 1 lengths, truncation, vocab sizes, coverage, timings
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from components import storage, zh

LANGS = ("zh", "en")
TEXT_COLUMN = {"zh": "text_zh", "en": "text_en"}
DEFAULT_MAX_LEN = {"zh": 30, "en": 20}
DEFAULT_DIM = {"zh": 256, "en": 300}  # the paper's embedding sizes (trained fallback)
PAD, UNK = "<pad>", "<unk>"
SPECIALS = (PAD, UNK)
MAX_TOKEN_CHARS = 30
VECTOR_FORMATS = ("auto", "w2v-text", "w2v-binary", "glove")
TOKENIZER_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: same input, same bytes


class VectorFileError(ValueError):
    """A word-vector file is malformed or has the wrong dimension; names the file and line."""


# ------------------------------------------------------------------------------------------------
# Language detection and per-text checks
def detect_language(text: str | None) -> str:
    """``"zh"`` when the text has Chinese characters at least as many as Latin words, else ``"en"``."""
    t = text or ""
    n_han = zh.count_han(t)
    n_latin_words = len([w for w in zh.english_tokens(t) if zh.LATIN_RE.search(w)])
    return "zh" if n_han > 0 and n_han >= n_latin_words else "en"


def _dominant_script(text: str) -> str:
    names = Counter()
    for c in text:
        if c.isalpha():
            try:
                names[unicodedata.name(c).split()[0]] += 1
            except ValueError:
                names["UNKNOWN"] += 1
    return names.most_common(1)[0][0] if names else "no letters"


def _script_reason(norm: str, lang: str) -> str | None:
    if lang == "zh" and zh.count_han(norm) == 0:
        return f"wrong script: no Chinese characters (mostly {_dominant_script(norm)})"
    if lang == "en" and zh.count_latin(norm) == 0:
        return f"wrong script: no Latin letters (mostly {_dominant_script(norm)})"
    return None


def _check(norm: str, tokens: list[str], lang: str, max_token_chars: int) -> str | None:
    """Reason to quarantine one text, or None."""
    if not norm or not tokens:
        return "empty after normalisation"
    reason = _script_reason(norm, lang)
    if reason:
        return reason
    long = [t for t in tokens if len(t) > max_token_chars]
    if long:
        return f"token longer than {max_token_chars} characters: {long[0][:40]!r}"
    return None


def _tokenize_texts(texts: Sequence[str | None], lang: str, extra_userdicts: Sequence[str],
                    workers: int | None) -> tuple[list[str], list[list[str]]]:
    raw = [t if isinstance(t, str) else "" for t in texts]
    if lang == "zh":
        norm_of = {t: zh.normalize_zh(t) for t in dict.fromkeys(raw)}
        norms = [norm_of[t] for t in raw]
        toks = zh.segment_many(norms, workers=workers, extra_userdicts=extra_userdicts,
                               normalized=True)
    else:
        norm_of = {t: zh.normalize_en(t) for t in dict.fromkeys(raw)}
        norms = [norm_of[t] for t in raw]
        cache: dict[str, list[str]] = {}
        toks = []
        for n in norms:
            got = cache.get(n)
            if got is None:
                got = cache[n] = zh.english_tokens(n)
            toks.append(got)
    return norms, toks


# ------------------------------------------------------------------------------------------------
# Vocabulary and encoding
def build_vocab(token_lists: Iterable[list[str]], min_count: int = 1) -> tuple[list[str], Counter]:
    """Specials first, then words with count >= min_count by count (desc), then alphabetically."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
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


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (np.load-compatible, no pickle) with fixed timestamps: byte-identical reruns."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            one = io.BytesIO()
            np.lib.format.write_array(one, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, one.getvalue())
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Word vectors
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
    """Read a word-vector file with gensim; clear errors naming the file and line or dimension."""
    from gensim.models import KeyedVectors

    if fmt not in VECTOR_FORMATS:
        raise ValueError(f"{label}: format must be one of {VECTOR_FORMATS}, got {fmt!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{label} {path}: no such file")
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


def _auto_epochs(n_tokens: int) -> int:
    return int(min(50, max(5, math.ceil(1_000_000 / max(1, n_tokens)))))


def train_vectors(token_lists: list[list[str]], dim: int, seed: int, epochs: int | None = None,
                  window: int = 5):
    """gensim Word2Vec on the training tokens: skip-gram, hierarchical softmax, deterministic."""
    from gensim.models import Word2Vec

    n_tokens = sum(len(t) for t in token_lists)
    epochs = _auto_epochs(n_tokens) if epochs is None else int(epochs)
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


# ------------------------------------------------------------------------------------------------
# The tokenizer for inference
class Tokenizer:
    """Encodes one expression like the training data was encoded (see :func:`load_tokenizer`)."""

    def __init__(self, config: dict, vocabs: dict[str, list[str]], userdict: str | None):
        self.config = config
        self.vocabs = vocabs
        self.stoi = {lang: {w: i for i, w in enumerate(v)} for lang, v in vocabs.items()}
        self.max_len = {k: int(v) for k, v in config["max_len"].items()}
        self.userdict = userdict
        self.langs = tuple(vocabs)

    def tokens(self, text: str, lang: str) -> list[str]:
        if lang == "zh":
            extra = [self.userdict] if self.userdict else []
            return zh.segment(text, extra_userdicts=extra, project_dict=not self.userdict)
        if lang == "en":
            return zh.english_tokens(text)
        raise ValueError(f"lang must be 'zh' or 'en', got {lang!r}")

    def encode(self, text: str, lang: str) -> tuple[list[int], int]:
        """(ids padded with 0 to the language's max length, number of real tokens)."""
        if lang not in self.stoi:
            raise ValueError(f"this tokenizer has no {lang!r} vocabulary (it has {self.langs})")
        toks = self.tokens(text, lang)[: self.max_len[lang]]
        stoi = self.stoi[lang]
        ids = [stoi.get(t, 1) for t in toks]
        return ids + [0] * (self.max_len[lang] - len(ids)), len(ids)

    def decode(self, ids: Iterable[int], lang: str) -> list[str]:
        v = self.vocabs[lang]
        return [v[i] for i in ids if i != 0]

    @staticmethod
    def detect_language(text: str) -> str:
        return detect_language(text)


def load_tokenizer(directory: str) -> Tokenizer:
    """Load a tokenize step's output folder (local or s3://) for inference."""
    directory = str(directory)
    if storage.is_s3(directory):
        local = tempfile.mkdtemp(prefix="refseg-tok-")
        for name in ["tokenizer.json", "userdict_zh.txt"] + [f"vocab_{g}.json" for g in LANGS]:
            uri = storage.join(directory, name)
            if storage.exists(uri):
                Path(local, name).write_bytes(storage.read_bytes(uri))
        directory = local
    cfg_path = Path(directory, "tokenizer.json")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no such file (not a tokenize output folder?)")
    config = json.loads(cfg_path.read_text())
    vocabs = {}
    for lang in config["langs"]:
        vocabs[lang] = json.loads(Path(directory, f"vocab_{lang}.json").read_text())
    ud = Path(directory, "userdict_zh.txt")
    return Tokenizer(config, vocabs, str(ud) if ud.is_file() else None)


# ------------------------------------------------------------------------------------------------
# The step
def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"tokenize: {msg}", file=sys.stderr, flush=True)


def tokenize(
    manifest_uri: str,
    out_dir: str,
    zh_vectors: str | None = None,
    en_vectors: str | None = None,
    langs: Sequence[str] = ("zh", "en"),
    max_len_zh: int = 30,
    max_len_en: int = 20,
    min_count: int = 1,
    seed: int = 0,
    zh_userdict: str | Sequence[str] | None = None,
    workers: int | None = None,
    zh_vectors_format: str = "auto",
    en_vectors_format: str = "auto",
    zh_dim: int | None = None,
    en_dim: int | None = None,
    w2v_epochs: int | None = None,
    max_token_chars: int = MAX_TOKEN_CHARS,
    progress: bool = False,
) -> dict:
    """Run the step; returns the summary (also written to ``out_dir/summary.json``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components import manifest as mf

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    langs = tuple(dict.fromkeys(langs))
    bad = [g for g in langs if g not in LANGS]
    if bad or not langs:
        raise ValueError(f"langs must be a non-empty subset of {LANGS}, got {list(langs)}")
    max_len = {"zh": int(max_len_zh), "en": int(max_len_en)}
    for g in langs:
        if max_len[g] < 1:
            raise ValueError(f"max length for {g} must be at least 1, got {max_len[g]}")
    vec_path = {"zh": zh_vectors, "en": en_vectors}
    vec_fmt = {"zh": zh_vectors_format, "en": en_vectors_format}
    want_dim = {"zh": zh_dim, "en": en_dim}
    extra_ud = [zh_userdict] if isinstance(zh_userdict, str) else list(zh_userdict or [])
    for p in extra_ud:
        if storage.is_s3(p):
            raise ValueError(f"--zh-userdict {p}: give a local file")
        if not os.path.isfile(p):
            raise FileNotFoundError(f"--zh-userdict {p}: no such file")

    t = time.perf_counter()
    df = mf.read_manifest(str(manifest_uri))
    timings["read_manifest_s"] = time.perf_counter() - t
    n_in = len(df)
    if "train" not in set(df["split"]):
        raise ValueError(f"{manifest_uri}: no rows with split 'train' (vocabularies are built "
                         "from the training split)")
    _log(progress, f"{n_in} rows from {manifest_uri}")

    # 1. normalise + tokenise each language; find bad rows
    norms: dict[str, list[str]] = {}
    toks: dict[str, list[list[str]]] = {}
    reasons: dict[str, list[str | None]] = {}
    for g in langs:
        t = time.perf_counter()
        texts = df[TEXT_COLUMN[g]].tolist()
        _log(progress, f"{'segmenting' if g == 'zh' else 'tokenizing'} {len(texts)} {g} texts "
                       f"({len(set(texts))} distinct)")
        norms[g], toks[g] = _tokenize_texts(texts, g, extra_ud, workers)
        checked: dict[str, str | None] = {}  # tokens depend only on the normalised text
        reasons[g] = []
        for n, tk in zip(norms[g], toks[g], strict=True):
            if n not in checked:
                checked[n] = _check(n, tk, g, max_token_chars)
            reasons[g].append(checked[n])
        timings[f"tokenize_{g}_s"] = time.perf_counter() - t
    keep = np.array([all(reasons[g][i] is None for g in langs) for i in range(n_in)], dtype=bool)
    quarantine_rows = []
    splits_all = df["split"].tolist()
    ids_all = df["sample_id"].tolist()
    for g in langs:
        col = df[TEXT_COLUMN[g]].tolist()
        for i, r in enumerate(reasons[g]):
            if r is not None:
                quarantine_rows.append({"sample_id": ids_all[i], "lang": g, "reason": r,
                                        "split": splits_all[i],
                                        "text": None if col[i] is None else str(col[i])})
    kept_idx = np.flatnonzero(keep)
    kept_df = df.iloc[kept_idx].reset_index(drop=True)
    split_names = [s for s in mf.KNOWN_SPLITS if s in set(splits_all)]
    split_names += sorted(set(splits_all) - set(split_names))
    kept_splits = np.array([splits_all[i] for i in kept_idx], dtype=object)
    kept_ids = np.array(kept_df["sample_id"].tolist(), dtype=str)
    if not (kept_splits == "train").any():
        raise ValueError(f"{manifest_uri}: every training row was quarantined; see the reasons "
                         f"(first: {quarantine_rows[0]['reason'] if quarantine_rows else '-'})")

    # 2. vocabularies, encoding, vectors
    final_out = str(out_dir)
    local = tempfile.mkdtemp(prefix="refseg-tokenize-") if storage.is_s3(final_out) else final_out
    os.makedirs(local, exist_ok=True)
    summary_lang: dict[str, dict] = {}
    counts_split: dict[str, dict] = {}
    truncation: dict[str, dict] = {g: {} for g in langs}
    avg_len: dict[str, dict] = {}
    vectors_cfg: dict[str, dict] = {}
    split_arr = np.array(splits_all, dtype=object)
    for s in split_names:
        in_s = split_arr == s
        counts_split[s] = {"rows": {"in": int(in_s.sum()), "kept": int((in_s & keep).sum()),
                                    "quarantined": int((in_s & ~keep).sum())}}
        for g in langs:
            bad_g = np.array([r is not None for r in reasons[g]])
            counts_split[s][g] = {
                "in": int(in_s.sum()), "kept": int((in_s & keep).sum()),
                "quarantined": int((in_s & bad_g).sum()),
                "dropped_for_other_language": int((in_s & ~bad_g & ~keep).sum()),
            }
    for g in langs:
        t = time.perf_counter()
        kept_toks = [toks[g][i] for i in kept_idx]
        train_toks = [tk for tk, s in zip(kept_toks, kept_splits, strict=True) if s == "train"]
        itos, counts = build_vocab(train_toks, min_count)
        stoi = {w: i for i, w in enumerate(itos)}
        for s in split_names:
            sel = np.flatnonzero(kept_splits == s)
            ids, lengths, n_trunc = encode([kept_toks[i] for i in sel], stoi, max_len[g])
            truncation[g][s] = n_trunc
            sid = kept_ids[sel] if len(sel) else np.zeros(0, dtype="<U1")
            storage.write_bytes(os.path.join(local, "shards", g, f"{s}.npz"),
                                _npz_bytes({"sample_id": sid, "tokens": ids, "lengths": lengths}))
            n = len(sel)
            raw_len = [len(kept_toks[i]) for i in sel]
            entry = avg_len.setdefault(s, {"n": n})
            if g == "zh":
                entry["zh_words"] = round(float(np.mean(raw_len)), 3) if n else None
                entry["zh_chars"] = (round(float(np.mean([sum(map(len, kept_toks[i])) for i in sel])),
                                           3) if n else None)
            else:
                entry["en_words"] = round(float(np.mean(raw_len)), 3) if n else None
            entry[f"{g}_unk_share"] = (round(float((ids == 1).sum() / max(1, lengths.sum())), 6)
                                       if n else None)
        timings[f"vocab_encode_{g}_s"] = time.perf_counter() - t
        (Path(local) / f"vocab_{g}.json").write_text(json.dumps(itos, ensure_ascii=False))

        t = time.perf_counter()
        if vec_path[g]:
            src = str(vec_path[g])
            _log(progress, f"loading {g} vectors from {src}")
            with tempfile.TemporaryDirectory(prefix="refseg-vec-") as cache:
                path = storage.local_copy(src, cache)
                kv, fmt = load_vectors(path, vec_fmt[g], want_dim[g], label=f"--{g}-vectors")
            timings[f"vectors_load_{g}_s"] = time.perf_counter() - t
            vinfo = {"source": src, "format": fmt, "pretrained_size": len(kv)}
        else:
            dim = int(want_dim[g] or DEFAULT_DIM[g])
            _log(progress, f"training {g} word2vec ({dim}-d) on {len(train_toks)} expressions")
            kv, params = train_vectors(train_toks, dim, seed, w2v_epochs)
            timings[f"vectors_train_{g}_s"] = time.perf_counter() - t
            vinfo = {"source": "trained", "format": "gensim Word2Vec", "word2vec": params}
        t = time.perf_counter()
        emb, cov = embedding_matrix(itos, kv, counts, seed, g)
        del kv
        np.save(Path(local) / f"embeddings_{g}.npy", emb, allow_pickle=False)
        timings[f"embeddings_{g}_s"] = time.perf_counter() - t
        vinfo["dim"] = int(emb.shape[1])
        vectors_cfg[g] = vinfo
        summary_lang[g] = {"vocab_size": len(itos), "dim": int(emb.shape[1]),
                           "max_len": max_len[g], "train_tokens": int(sum(counts.values())),
                           "train_types": len(counts), "vectors": {**vinfo, **cov},
                           "truncated": truncation[g]}
        _log(progress, f"{g}: vocabulary {len(itos)}, dim {emb.shape[1]}, coverage "
                       f"{cov['coverage_tokens']:.1%} of tokens")

    # 3. the rest of the folder
    t = time.perf_counter()
    mf.write_manifest(kept_df, os.path.join(local, "manifest.parquet"))
    qschema = pa.schema([("sample_id", pa.string()), ("lang", pa.string()), ("reason", pa.string()),
                         ("split", pa.string()), ("text", pa.string())])
    qtable = pa.Table.from_pylist(quarantine_rows, schema=qschema)
    pq.write_table(qtable, os.path.join(local, "quarantine.parquet"))
    ud_lines = []
    if "zh" in langs:
        for p in [zh.PROJECT_USERDICT, *extra_ud]:
            ud_lines.append(Path(p).read_text(encoding="utf-8-sig").rstrip("\n"))
        Path(local, "userdict_zh.txt").write_text("\n".join(ud_lines) + "\n", encoding="utf-8")
    config = {
        "version": TOKENIZER_VERSION,
        "langs": list(langs),
        "max_len": {g: max_len[g] for g in langs},
        "min_count": int(min_count),
        "seed": int(seed),
        "specials": {PAD: 0, UNK: 1},
        "max_token_chars": int(max_token_chars),
        "zh_userdict": ({"project": "components/data/userdict_zh.txt", "extra": extra_ud,
                         "in_effect": "userdict_zh.txt"} if "zh" in langs else None),
        "segmenter": {"zh": "jieba precise mode, HMM on", "en": "lower-cased word tokens"},
        "vectors": vectors_cfg,
        "dims": {g: summary_lang[g]["dim"] for g in langs},
        "vocab_size": {g: summary_lang[g]["vocab_size"] for g in langs},
    }
    Path(local, "tokenizer.json").write_text(json.dumps(config, indent=2, ensure_ascii=False,
                                                        sort_keys=True))
    reason_counts = {g: dict(Counter(_reason_kind(r) for r in reasons[g] if r is not None))
                     for g in langs}
    summary = {
        "manifest": str(manifest_uri),
        "out": final_out,
        "rows": {"in": n_in, "kept": int(keep.sum()), "quarantined": int((~keep).sum())},
        "counts": counts_split,
        "quarantine_reasons": reason_counts,
        "avg_length": avg_len,
        "truncated": truncation,
        "langs": summary_lang,
        "config": {k: config[k] for k in ("max_len", "min_count", "seed", "max_token_chars")},
    }
    timings["write_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if storage.is_s3(final_out):
        mf.write_json(os.path.join(local, "summary.json"), summary)  # placeholder, rewritten below
        storage.copy_tree(local, final_out)
        timings["upload_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    mf.write_json(storage.join(final_out, "summary.json"), summary)
    if storage.is_s3(final_out):
        shutil.rmtree(local, ignore_errors=True)
    _log(progress, f"kept {summary['rows']['kept']} of {n_in} rows "
                   f"({summary['rows']['quarantined']} quarantined) in {timings['total_s']:.1f} s "
                   f"-> {final_out}")
    return summary


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]


# ------------------------------------------------------------------------------------------------
# CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Segment Chinese (jieba + the project's user dictionary) and tokenize English expressions, "
        "build vocabularies from the training split, encode every split to fixed-length id shards, "
        "and build one embedding matrix per language from a pretrained vector file (word2vec "
        "text/binary or GloVe) or, without one, from word2vec trained on the training split. "
        "Rows with empty, wrong-script or absurd-token text are quarantined with the reason.")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "examples:\n"
        "  refseg tokenize --manifest data/synth/manifest.parquet --out data/tok\n"
        "  refseg tokenize --manifest s3://b/clean/manifest.parquet --out s3://b/tok \\\n"
        "      --zh-vectors sgns.weibo.word --zh-dim 256 \\\n"
        "      --en-vectors glove.840B.300d.txt --en-dim 300 --zh-userdict my_words.txt\n"
        "outputs: manifest.parquet, vocab_{lang}.json, embeddings_{lang}.npy,\n"
        "  shards/{lang}/{split}.npz, tokenizer.json, quarantine.parquet, summary.json")
    p.add_argument("--manifest", required=True, help="input manifest (Parquet), local or s3://")
    p.add_argument("--out", required=True, help="output folder, local or s3://")
    p.add_argument("--langs", default="zh,en", help="languages to process, comma-separated (default zh,en)")
    for g in LANGS:
        name = "Chinese" if g == "zh" else "English"
        p.add_argument(f"--{g}-vectors", default=None, metavar="FILE",
                       help=f"pretrained {name} word vectors (local or s3://); without it word2vec "
                            "is trained on the training split")
        p.add_argument(f"--{g}-vectors-format", default="auto", choices=VECTOR_FORMATS,
                       help="vector file format (default auto: header 'count dim' -> word2vec "
                            "text or binary, no header -> GloVe)")
        p.add_argument(f"--{g}-dim", type=int, default=None,
                       help=f"expected dimension of --{g}-vectors (error on mismatch); dimension "
                            f"of trained vectors (default {DEFAULT_DIM[g]})")
        p.add_argument(f"--max-len-{g}", type=int, default=DEFAULT_MAX_LEN[g],
                       help=f"maximum {name} length T in tokens; longer expressions are truncated "
                            f"(default {DEFAULT_MAX_LEN[g]})")
    p.add_argument("--min-count", type=int, default=1,
                   help="minimum count in the training split for a word to enter the vocabulary "
                        "(default 1)")
    p.add_argument("--zh-userdict", action="append", default=[], metavar="FILE",
                   help="extra jieba user dictionary ('word [freq] [tag]' per line); repeatable")
    p.add_argument("--w2v-epochs", type=int, default=None,
                   help="epochs of the trained word2vec fallback (default: 5-50 by corpus size)")
    p.add_argument("--max-token-chars", type=int, default=MAX_TOKEN_CHARS,
                   help=f"rows with a longer token are quarantined (default {MAX_TOKEN_CHARS})")
    p.add_argument("--seed", type=int, default=0, help="random seed of word2vec and unknown-word vectors (default 0)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for jieba (default: all cores)")


def run(args) -> int:
    summary = tokenize(
        args.manifest, args.out, zh_vectors=args.zh_vectors, en_vectors=args.en_vectors,
        langs=[g.strip() for g in args.langs.split(",") if g.strip()],
        max_len_zh=args.max_len_zh, max_len_en=args.max_len_en, min_count=args.min_count,
        seed=args.seed, zh_userdict=args.zh_userdict or None, workers=args.workers,
        zh_vectors_format=args.zh_vectors_format, en_vectors_format=args.en_vectors_format,
        zh_dim=args.zh_dim, en_dim=args.en_dim, w2v_epochs=args.w2v_epochs,
        max_token_chars=args.max_token_chars, progress=True,
    )
    rows = summary["rows"]
    print(f"tokenized {rows['in']} rows: {rows['kept']} kept, {rows['quarantined']} quarantined")
    for g, info in summary["langs"].items():
        v = info["vectors"]
        print(f"  {g}: vocab {info['vocab_size']}, dim {info['dim']}, vectors {v['source']}, "
              f"coverage {v['coverage_tokens']:.1%} tokens / {v['coverage_types']:.1%} types, "
              f"truncated {sum(info['truncated'].values())}")
    for s, a in summary["avg_length"].items():
        parts = [f"{k} {a[k]}" for k in ("zh_words", "zh_chars", "en_words") if a.get(k) is not None]
        print(f"  {s} ({a['n']}): " + ", ".join(parts))
    print(f"-> {summary['out']}")
    return 0
