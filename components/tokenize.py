"""The tokenize step: segmentation, vocabularies, word vectors and encoded shards per language.

Chinese expressions are segmented with jieba (precise mode, HMM on) using the project's user
dictionary (``components/data/``) plus any ``--zh-userdict`` files; English ones are lower-cased
word tokens (:mod:`components.text.zh`). A vocabulary per language is built from the training split
(``<pad>`` = 0, ``<unk>`` = 1, words by count then alphabetically; :mod:`components.text.vocab`),
every split is encoded to fixed-length id arrays, and one embedding matrix per language is aligned
with its vocabulary (:mod:`components.text.vectors`): from a pretrained file read with gensim
(word2vec text or binary, GloVe text without header), or, without one, from gensim ``Word2Vec``
trained on the training split (skip-gram, hierarchical softmax, one worker, fixed seed:
deterministic).

Rows whose text is empty after normalisation, holds a token longer than ``max_token_chars``, or is
in another script (no Chinese characters in ``text_zh``, no Latin letters in ``text_en``) are
quarantined with the reason (:mod:`components.text.checks`); a row is kept only when all requested
languages pass, so the manifest and every language's shards hold the same rows in the same order.

The output folder (read by the train step) is :class:`components.text.tokenized.TokenizedData`:
kept manifest, vocabularies, embeddings, shards per language and split, the tokenizer
(:mod:`components.text.tokenizer`), the quarantine and a summary (counts, Table 1 lengths,
truncation, vocab sizes, coverage, timings), and last the completion marker
(:mod:`components.data.outputs`) that train and evaluate check. Files of the folder's layout that
this run does not write (another language's, a split no longer there) are removed.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from components.data import storage
from components.data.manifest import TEXT_COLUMN
from components.data.names import RULE as SPLIT_RULE
from components.data.names import is_split_name
from components.data.outputs import check_file, step_output
from components.errors import ConfigError, InputError, MissingInputError
from components.logs import get_logger
from components.text import zh
from components.text.checks import (
    MAX_TOKEN_CHARS,
    Screening,
    check_texts,
    tokenize_texts,
)
from components.text.tokenized import STEP, SUMMARY_FILE, TokenizedData, file_names, owned
from components.text.tokenizer import (
    LANGS,
    PAD,
    UNK,
    USERDICT_FILE,
    VERSION,
    Tokenizer,
)
from components.text.vectors import VECTOR_FORMATS, embedding_matrix, word_vectors
from components.text.vocab import build_vocab, encode

__all__ = ["TokenizeOptions", "configure_parser", "run", "run_tokenize", "tokenize"]

DEFAULT_MAX_LEN = {"zh": 30, "en": 20}
DEFAULT_DIM = {"zh": 256, "en": 300}  # the paper's embedding sizes (trained fallback)

log = get_logger("tokenize")


@dataclass
class TokenizeOptions:
    """What one run of the step reads, writes and how (the CLI flags, one field each)."""

    manifest: str
    out: str
    langs: Sequence[str] = LANGS
    zh_vectors: str | None = None
    en_vectors: str | None = None
    zh_vectors_format: str = "auto"
    en_vectors_format: str = "auto"
    zh_dim: int | None = None            # expected dim of --zh-vectors, or of trained vectors
    en_dim: int | None = None
    max_len_zh: int = DEFAULT_MAX_LEN["zh"]
    max_len_en: int = DEFAULT_MAX_LEN["en"]
    min_count: int = 1
    seed: int = 0
    zh_userdict: Sequence[str] = field(default_factory=list)  # extra jieba user dictionaries
    workers: int | None = None           # jieba processes (None: all cores)
    w2v_epochs: int | None = None        # trained fallback (None: 5-50 by corpus size)
    max_token_chars: int = MAX_TOKEN_CHARS

    def __post_init__(self) -> None:
        self.manifest, self.out = str(self.manifest), str(self.out)
        self.langs = tuple(dict.fromkeys(self.langs))
        ud = self.zh_userdict
        self.zh_userdict = [ud] if isinstance(ud, str) else list(ud or [])

    def max_len(self, lang: str) -> int:
        return int(getattr(self, f"max_len_{lang}"))

    def vectors(self, lang: str) -> tuple[str | None, str, int | None]:
        """(pretrained file or None, its format, the dimension asked for) of ``lang``."""
        return (getattr(self, f"{lang}_vectors"), getattr(self, f"{lang}_vectors_format"),
                getattr(self, f"{lang}_dim"))

    def check(self) -> None:
        """Refuse options that cannot work, before any data is read."""
        bad = [g for g in self.langs if g not in LANGS]
        if bad or not self.langs:
            raise ConfigError(f"langs must be a non-empty subset of {LANGS}, got {list(self.langs)}")
        for g in self.langs:
            if self.max_len(g) < 1:
                raise ConfigError(f"max length for {g} must be at least 1, got {self.max_len(g)}")
        for p in self.zh_userdict:
            if storage.is_s3(p):
                raise ConfigError(f"--zh-userdict {p}: give a local file")
            if not os.path.isfile(p):
                raise MissingInputError(f"--zh-userdict {p}: no such file")


class _Timings(dict):
    """Seconds per phase, in the order the phases ran."""

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self[key] = time.perf_counter() - t


# ------------------------------------------------------------------------------------------------
# The step
def run_tokenize(opts: TokenizeOptions) -> dict:
    """Run the step; returns the summary (also written to the output folder)."""
    from components.data import manifest as mf

    t_start, timings = time.perf_counter(), _Timings()
    opts.check()
    with timings("read_manifest_s"):
        check_file(opts.manifest)  # a manifest beside a marker must be the one it lists
        df = mf.read_manifest(opts.manifest)
    _check_split_names(df, opts.manifest)
    if "train" not in set(df["split"]):
        raise InputError(f"{opts.manifest}: no rows with split 'train' (vocabularies are built "
                         "from the training split)")
    log.info(f"{len(df)} rows from {opts.manifest}")

    # 1. normalise + tokenise each language; refuse bad rows
    texts = {g: df[TEXT_COLUMN[g]].tolist() for g in opts.langs}
    tokens, reasons = {}, {}
    for g in opts.langs:
        with timings(f"tokenize_{g}_s"):
            log.info(f"{'segmenting' if g == 'zh' else 'tokenizing'} {len(texts[g])} {g} texts "
                     f"({len(set(texts[g]))} distinct)")
            norms, tokens[g] = tokenize_texts(texts[g], g, opts.zh_userdict, opts.workers)
            reasons[g] = check_texts(norms, tokens[g], g, opts.max_token_chars)
    screen = Screening(reasons, df["split"].tolist(), df["sample_id"].tolist())
    kept = _Kept.of(screen, df)
    quarantine = screen.quarantine_rows(texts)
    if not (kept.splits == "train").any():
        raise InputError(f"{opts.manifest}: every training row was quarantined; see the reasons "
                         f"(first: {quarantine[0]['reason'] if quarantine else '-'})")
    summary = _summary_head(opts, screen, kept)

    # 2. vocabularies, encoded shards, word vectors; 3. the rest of the folder
    with step_output(opts.out, STEP, prefix="refseg-tokenize-", owns=owned) as out:
        data = TokenizedData(out.local)
        vocabs, vectors = {}, {}
        for g in opts.langs:
            vocabs[g], vectors[g], summary["langs"][g] = _language(data, g, tokens[g], kept, opts,
                                                                   summary, timings)
        with timings("write_s"):
            data.write_manifest(kept.df)
            data.write_quarantine(quarantine)
            userdict = (data.write_userdict([zh.PROJECT_USERDICT, *opts.zh_userdict])
                        if "zh" in opts.langs else None)
            config = _tokenizer_config(opts, vectors, summary["langs"])
            data.save_tokenizer(Tokenizer(config, vocabs, userdict))
        t_upload = time.perf_counter()
        out.publish()
        if storage.is_s3(opts.out):
            timings["upload_s"] = time.perf_counter() - t_upload
        summary["config"] = {k: config[k] for k in ("max_len", "min_count", "seed",
                                                    "max_token_chars")}
        timings["total_s"] = time.perf_counter() - t_start
        summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
        TokenizedData(opts.out).write_summary(summary)
        out.add(SUMMARY_FILE)  # then the marker, last
    rows = summary["rows"]
    log.info(f"kept {rows['kept']} of {rows['in']} rows ({rows['quarantined']} quarantined) in "
             f"{timings['total_s']:.1f} s -> {opts.out}")
    return summary


def tokenize(manifest_uri: str, out_dir: str, **options) -> dict:
    """:func:`run_tokenize` with the options as keywords (``zh_vectors=...``, ``langs=...``, ...:
    the fields of :class:`TokenizeOptions`)."""
    return run_tokenize(TokenizeOptions(manifest_uri, out_dir, **options))


# ------------------------------------------------------------------------------------------------
# Pieces of the step
def _check_split_names(df, manifest: str) -> None:
    """Every row's split is a valid split name (it becomes a shard's file name); the first row
    that is not is an InputError naming its sample_id."""
    bad = [s for s in dict.fromkeys(df["split"]) if not is_split_name(s)]
    if bad:
        sid = df["sample_id"][df["split"] == bad[0]].iloc[0]
        raise InputError(f"{manifest}: sample_id {sid!r}: split {bad[0]!r} is not a valid split "
                         f"name: use {SPLIT_RULE} (check-translations quarantines such rows)")


@dataclass
class _Kept:
    """The rows every language passed, in manifest order, and the splits present."""

    index: np.ndarray        # row numbers in the input manifest
    df: object               # those rows (a DataFrame)
    splits: np.ndarray       # their splits
    sample_ids: np.ndarray   # their sample ids (unicode)
    split_names: list[str]   # every split of the input: known ones first, then the others sorted

    @classmethod
    def of(cls, screen: Screening, df) -> _Kept:
        from components.data.manifest import KNOWN_SPLITS

        index = np.flatnonzero(screen.keep)
        kept_df = df.iloc[index].reset_index(drop=True)
        names = [s for s in KNOWN_SPLITS if s in set(screen.splits)]
        names += sorted(set(screen.splits) - set(names))
        return cls(index, kept_df, np.array([screen.splits[i] for i in index], dtype=object),
                   np.array(kept_df["sample_id"].tolist(), dtype=str), names)


def _summary_head(opts: TokenizeOptions, screen: Screening, kept: _Kept) -> dict:
    keep = screen.keep
    return {
        "manifest": opts.manifest,
        "out": opts.out,
        "rows": {"in": len(keep), "kept": int(keep.sum()), "quarantined": int((~keep).sum())},
        "counts": screen.split_counts(kept.split_names),
        "quarantine_reasons": screen.reason_counts(),
        "avg_length": {},
        "truncated": {g: {} for g in opts.langs},
        "langs": {},
    }


def _language(data: TokenizedData, g: str, tokens: list[list[str]], kept: _Kept,
              opts: TokenizeOptions, summary: dict, timings: _Timings
              ) -> tuple[list[str], dict, dict]:
    """Vocabulary, shards and embeddings of one language: (vocabulary, where its vectors come
    from, its summary entry)."""
    with timings(f"vocab_encode_{g}_s"):
        kept_toks = [tokens[i] for i in kept.index]
        train_toks = [tk for tk, s in zip(kept_toks, kept.splits, strict=True) if s == "train"]
        itos, counts = build_vocab(train_toks, opts.min_count)
        _write_shards(data, g, kept_toks, kept, {w: i for i, w in enumerate(itos)},
                      opts.max_len(g), summary)
    source, fmt, dim = opts.vectors(g)
    t = time.perf_counter()
    if source:
        log.info(f"loading {g} vectors from {source}")
    else:
        dim = int(dim or DEFAULT_DIM[g])
        log.info(f"training {g} word2vec ({dim}-d) on {len(train_toks)} expressions")
    kv, vinfo = word_vectors(train_toks, source, fmt, dim, opts.seed, opts.w2v_epochs,
                             label=f"--{g}-vectors")
    timings[f"vectors_{'load' if source else 'train'}_{g}_s"] = time.perf_counter() - t
    with timings(f"embeddings_{g}_s"):
        emb, coverage = embedding_matrix(itos, kv, counts, opts.seed, g)
        del kv
        data.write_embeddings(g, emb)
    vinfo["dim"] = int(emb.shape[1])
    log.info(f"{g}: vocabulary {len(itos)}, dim {emb.shape[1]}, coverage "
             f"{coverage['coverage_tokens']:.1%} of tokens")
    return itos, vinfo, {"vocab_size": len(itos), "dim": int(emb.shape[1]), "max_len": opts.max_len(g),
                  "train_tokens": int(sum(counts.values())), "train_types": len(counts),
                  "vectors": {**vinfo, **coverage}, "truncated": summary["truncated"][g]}


def _write_shards(data: TokenizedData, g: str, kept_toks: list[list[str]], kept: _Kept,
                  stoi: dict[str, int], max_len: int, summary: dict) -> None:
    """Encode and write every split of one language; note truncation and Table 1 lengths."""
    for s in kept.split_names:
        sel = np.flatnonzero(kept.splits == s)
        ids, lengths, n_trunc = encode([kept_toks[i] for i in sel], stoi, max_len)
        summary["truncated"][g][s] = n_trunc
        sid = kept.sample_ids[sel] if len(sel) else np.zeros(0, dtype="<U1")
        data.write_shard(g, s, sid, ids, lengths)
        n = len(sel)
        raw_len = [len(kept_toks[i]) for i in sel]
        entry = summary["avg_length"].setdefault(s, {"n": n})
        if g == "zh":
            entry["zh_words"] = round(float(np.mean(raw_len)), 3) if n else None
            entry["zh_chars"] = (round(float(np.mean([sum(map(len, kept_toks[i])) for i in sel])),
                                       3) if n else None)
        else:
            entry["en_words"] = round(float(np.mean(raw_len)), 3) if n else None
        entry[f"{g}_unk_share"] = (round(float((ids == 1).sum() / max(1, lengths.sum())), 6)
                                   if n else None)


def _tokenizer_config(opts: TokenizeOptions, vectors: dict[str, dict], langs_info: dict[str, dict]
                      ) -> dict:
    """``tokenizer.json``: what encodes an expression like the training data was encoded."""
    langs = opts.langs
    return {
        "version": VERSION,
        "langs": list(langs),
        "max_len": {g: opts.max_len(g) for g in langs},
        "min_count": int(opts.min_count),
        "seed": int(opts.seed),
        "specials": {PAD: 0, UNK: 1},
        "max_token_chars": int(opts.max_token_chars),
        "zh_userdict": ({"project": zh.PROJECT_USERDICT_NAME, "extra": list(opts.zh_userdict),
                         "in_effect": USERDICT_FILE} if "zh" in langs else None),
        "segmenter": {"zh": "jieba precise mode, HMM on", "en": "lower-cased word tokens"},
        "vectors": vectors,
        "dims": {g: langs_info[g]["dim"] for g in langs},
        "vocab_size": {g: langs_info[g]["vocab_size"] for g in langs},
    }


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
    names = file_names()
    p.epilog = (
        "examples:\n"
        "  refseg tokenize --manifest data/synth/manifest.parquet --out data/tok\n"
        "  refseg tokenize --manifest s3://b/clean/manifest.parquet --out s3://b/tok \\\n"
        "      --zh-vectors sgns.weibo.word --zh-dim 256 \\\n"
        "      --en-vectors glove.840B.300d.txt --en-dim 300 --zh-userdict my_words.txt\n"
        f"outputs: {', '.join(names[:3])},\n  {', '.join(names[3:])}")
    p.add_argument("--manifest", required=True, help="input manifest (Parquet), local or s3://")
    p.add_argument("--out", required=True, help="output folder, local or s3://")
    p.add_argument("--langs", default="zh,en", help="languages to process, comma-separated (default zh,en)")
    for g in LANGS:
        _language_options(p, g)
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


def _language_options(p: argparse.ArgumentParser, g: str) -> None:
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


def options_from_args(args) -> TokenizeOptions:
    return TokenizeOptions(
        args.manifest, args.out, langs=[g.strip() for g in args.langs.split(",") if g.strip()],
        zh_vectors=args.zh_vectors, en_vectors=args.en_vectors,
        zh_vectors_format=args.zh_vectors_format, en_vectors_format=args.en_vectors_format,
        zh_dim=args.zh_dim, en_dim=args.en_dim, max_len_zh=args.max_len_zh,
        max_len_en=args.max_len_en, min_count=args.min_count, seed=args.seed,
        zh_userdict=args.zh_userdict or [], workers=args.workers, w2v_epochs=args.w2v_epochs,
        max_token_chars=args.max_token_chars)


def run(args) -> int:
    summary = run_tokenize(options_from_args(args))
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
