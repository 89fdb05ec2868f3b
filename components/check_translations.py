"""The check_translations step: Great Expectations checks of every English/Chinese pair.

Each row of the manifest is checked, the results are expressed as one Great Expectations suite (one
expectation per check) and validated through a checkpoint whose ``UpdateDataDocsAction`` publishes
the data validation report (Data Docs HTML). The checks:

completeness  ``text_en`` and ``text_zh`` both non-empty after normalisation (trim, NFKC).
script        the Chinese side is mostly Chinese characters (``min_cjk_ratio`` of Han among Han +
              Latin letters), has no U+FFFD replacement character, no mojibake (UTF-8 read as
              Latin-1/cp1252, "Ã", "â€"; or read as GBK, "锟斤拷", "鍙", "鐨") and no untranslated
              English word beyond the allowlist (``components/data/allowlist_en.txt``: single
              letters as in "T恤", brand names, abbreviations).
length        (Chinese jieba words + 1) / (English words + 1) lies in a band: configured, or learned
              from the data as median x/÷ exp(max(k MAD, log(min_factor))) of the log ratio.
meaning       the bilingual lexicon (``components/data/lexicon.tsv``, extendable with ``--lexicon``):
              a term on one side needs its counterpart on the other, and a term that contradicts
              it (left vs 右, red vs 蓝色, two vs 三) is a contradiction.
duplicates    one Chinese text given for different English expressions of different objects
              (``ann_id``) of the same image: the translation lost the distinction.
schema        ``sample_id`` present and unique, split known, ids and fields present, mask a
              decodable COCO RLE covering size[0] x size[1] pixels and not empty, bbox of positive
              size inside the image (mask size, tolerance ``bbox_tolerance`` pixels).

Per-row results are computed with pandas/vectorised Python (distinct strings once; jieba through
``components.zh.segment_many`` on all cores); each check becomes a column holding ``None`` for a
passing row and ``"<sample_id>: <reasons>"`` for a failing one, and the suite expects every such
column to be null, so the report lists failing rows by id under one section per check.

Output folder::

    clean.parquet       rows that pass every check (components.manifest.write_manifest)
    quarantine.parquet  rows that fail: all input columns + ``row`` (position in the input) and
                        ``checks`` and ``reasons`` (lists of strings)
    summary.json        counts (rows_in = rows_clean + rows_quarantined), counts per check and
                        reason, length band, gate, timings, report path
    gx/                 the Great Expectations project; Data Docs under gx/uncommitted/data_docs/

The gate: when the share of failing rows exceeds ``max_fail_rate`` the step raises
:class:`TranslationGateError` (a ``ValueError``) after writing every output.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components import manifest as mf
from components import storage, zh

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_LEXICON = str(DATA_DIR / "lexicon.tsv")
DEFAULT_ALLOWLIST = str(DATA_DIR / "allowlist_en.txt")
CHECKS = ("completeness", "script", "length", "meaning", "duplicates", "schema")
CHECK_DESCRIPTIONS = {
    "completeness": "completeness: text_en and text_zh are both non-empty after trimming",
    "script": "script: text_zh is mostly Chinese characters, has no U+FFFD, no mojibake (UTF-8 "
              "read as Latin-1 or GBK) and no untranslated English words beyond the allowlist",
    "length": "length: (Chinese jieba words + 1) / (English words + 1) lies in the band",
    "meaning": "meaning: every lexicon term (spatial, colour, number, ordinal, category) has its "
               "counterpart on the other side and none is contradicted (left vs 右)",
    "duplicates": "duplicates: no Chinese text is shared by different English expressions of "
                  "different objects in one image",
    "schema": "schema: sample_id unique, split known, fields present, mask decodable and "
              "non-empty, bbox inside the image",
}
LEXICON_CHECKS = ("both", "en", "zh")
DEFAULT_MAX_FAIL_RATE = 0.05


class TranslationGateError(ValueError):
    """The share of failing rows is over the threshold (the outputs are written all the same)."""


class LexiconError(ValueError):
    """A lexicon file is malformed; the message names the file and line."""


@dataclass
class CheckConfig:
    """Thresholds of the checks (every one a CLI option too)."""

    min_cjk_ratio: float = 0.6
    length_band: tuple[float, float] | None = None  # configured band, else learned
    length_mads: float = 4.0
    length_min_factor: float = 3.0
    known_splits: tuple[str, ...] = mf.KNOWN_SPLITS
    bbox_tolerance: float = 1.0
    lexicons: list[str] = field(default_factory=lambda: [DEFAULT_LEXICON])
    allowlists: list[str] = field(default_factory=lambda: [DEFAULT_ALLOWLIST])
    workers: int | None = None


# ------------------------------------------------------------------------------------------------
# Lexicon
@dataclass
class Concept:
    group: str
    name: str
    check: str
    en: list[str]
    zh: list[str]
    zh_exclude: list[str]


class Lexicon:
    """Concepts with English and Chinese terms; :meth:`en_concepts` / :meth:`zh_concepts` find them."""

    def __init__(self, concepts: list[Concept], sources: list[str]):
        self.concepts = {c.name: c for c in concepts}
        self.sources = sources
        # English: whole words / word sequences, plural -s/-es, longest first.
        en_map: dict[str, set[str]] = {}
        for c in concepts:
            for term in c.en:
                words = term.split()
                for last in (words[-1], words[-1] + "s", words[-1] + "es"):
                    en_map.setdefault(" ".join(words[:-1] + [last]), set()).add(c.name)
        self._en_map = en_map
        self._en_re = _alternation(en_map, boundaries=True)
        # Chinese: substrings, longest first; an entry means every concept whose term it contains,
        # less those that list it as an exclusion.
        entries = {t for c in concepts for t in c.zh + c.zh_exclude}
        zh_map: dict[str, set[str]] = {}
        for s in entries:
            got = {c.name for c in concepts if any(t in s for t in c.zh)}
            zh_map[s] = {n for n in got if s not in self.concepts[n].zh_exclude}
        self._zh_map = zh_map
        self._zh_re = _alternation(zh_map, boundaries=False)

    def en_concepts(self, tokens: list[str]) -> frozenset[str]:
        if not tokens or self._en_re is None:
            return frozenset()
        text = " ".join(tokens)
        return frozenset(n for m in self._en_re.findall(text) for n in self._en_map[m])

    def zh_concepts(self, text: str) -> frozenset[str]:
        if not text or self._zh_re is None:
            return frozenset()
        return frozenset(n for m in self._zh_re.findall(text) for n in self._zh_map[m])

    def compare(self, en: frozenset[str], zh_: frozenset[str]) -> list[str]:
        """Reasons (``kind: detail``) for one pair of concept sets; empty when they agree."""
        if en == zh_:
            return []
        only_en, only_zh = en - zh_, zh_ - en
        by_group: dict[str, tuple[list[str], list[str]]] = {}
        for n in only_en:
            by_group.setdefault(self.concepts[n].group, ([], []))[0].append(n)
        for n in only_zh:
            by_group.setdefault(self.concepts[n].group, ([], []))[1].append(n)
        reasons = []
        for group in sorted(by_group):
            e, z = sorted(by_group[group][0]), sorted(by_group[group][1])
            if e and z:
                reasons.append(
                    f"contradiction: en says {'/'.join(e)} but zh says "
                    f"{'/'.join(self._zh_label(n) for n in z)} ({group})")
                continue
            for n in e:
                if self.concepts[n].check in ("both", "en"):
                    reasons.append(f"missing in zh: en {n!r} has no "
                                   f"{'|'.join(self.concepts[n].zh[:3])} in zh")
            for n in z:
                if self.concepts[n].check in ("both", "zh"):
                    reasons.append(f"missing in en: zh {self._zh_label(n)} has no "
                                   f"{'|'.join(self.concepts[n].en[:3])} in en")
        return reasons

    def _zh_label(self, name: str) -> str:
        return f"{name}({self.concepts[name].zh[0]})"


def _alternation(mapping: dict[str, set[str]], boundaries: bool) -> re.Pattern | None:
    keys = sorted(mapping, key=lambda s: (-len(s), s))
    if not keys:
        return None
    body = "|".join(re.escape(k) for k in keys)
    return re.compile(rf"(?<![\w'])(?:{body})(?![\w'])" if boundaries else f"(?:{body})")


def load_lexicon(paths: list[str] | str | None = None) -> Lexicon:
    """Read one or more lexicon TSV files (format in ``components/data/lexicon.tsv``)."""
    if paths is None:
        paths = [DEFAULT_LEXICON]
    elif isinstance(paths, str):
        paths = [paths]
    concepts: list[Concept] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            text = storage.read_bytes(str(path)).decode("utf-8-sig")
        except FileNotFoundError:
            raise FileNotFoundError(f"lexicon {path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise LexiconError(f"lexicon {path}: not UTF-8 ({exc})") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in line.split("\t")]
            where = f"lexicon {path}, line {lineno}"
            if len(parts) not in (5, 6):
                raise LexiconError(f"{where}: expected 5 or 6 TAB-separated fields "
                                   f"(group, concept, check, en, zh[, zh exclusions]), got "
                                   f"{len(parts)}: {line!r:.80}")
            group, name, check, en, zh_terms = parts[:5]
            exclude = parts[5] if len(parts) == 6 else ""
            if check not in LEXICON_CHECKS:
                raise LexiconError(f"{where}: check must be one of {LEXICON_CHECKS}, got {check!r}")
            if not group or not name:
                raise LexiconError(f"{where}: empty group or concept name")
            en_terms = [" ".join(zh.english_tokens(t)) for t in en.split("|") if t.strip()]
            zh_list = [zh.normalize_zh(t) for t in zh_terms.split("|") if t.strip()]
            if not en_terms or not zh_list or not all(en_terms) or not all(zh_list):
                raise LexiconError(f"{where}: concept {name!r} needs English and Chinese terms")
            if name in seen:
                raise LexiconError(f"{where}: concept {name!r} already defined in {seen[name]}")
            seen[name] = where
            concepts.append(Concept(group, name, check, en_terms, zh_list,
                                    [zh.normalize_zh(t) for t in exclude.split("|") if t.strip()]))
    if not concepts:
        raise LexiconError(f"lexicon {', '.join(map(str, paths))}: no concepts")
    return Lexicon(concepts, [str(p) for p in paths])


def load_allowlist(paths: list[str] | str | None = None) -> set[str]:
    """Lower-cased English words allowed inside Chinese text (one a line, # comments)."""
    if paths is None:
        paths = [DEFAULT_ALLOWLIST]
    elif isinstance(paths, str):
        paths = [paths]
    words: set[str] = set()
    for path in paths:
        try:
            text = storage.read_bytes(str(path)).decode("utf-8-sig")
        except FileNotFoundError:
            raise FileNotFoundError(f"allowlist {path}: no such file") from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip().lower()
            if line:
                words.add(line)
    return words


# ------------------------------------------------------------------------------------------------
# Script checks
# UTF-8 bytes of Chinese read as Latin-1 / cp1252: a lead byte E3-E9 (ã..é) then continuation bytes
# (U+0080-U+00BF, or the cp1252 punctuation they map to); also UTF-8 of Latin-1 doubled (Ã, Â).
_CP1252_CONT = ("\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122")
_MOJIBAKE_LATIN = re.compile(rf"[\u00c2-\u00ef][{_CP1252_CONT}]|â€")
# UTF-8 read as GBK: typical sequences and characters that are rare in real text.
_MOJIBAKE_GBK = re.compile("锟斤拷|烫烫烫|屯屯屯|[鍙鐨鏄鍦銆锛鑹鎴缁宸鍚鍓閲鈥]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+(?:['’-][A-Za-z\u00c0-\u024f]+)*")


def _reverses_to_chinese(text: str, codec: str) -> bool:
    """True when ``text`` is UTF-8 Chinese that was decoded with ``codec`` (it round-trips)."""
    try:
        back = text.encode(codec).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return False
    if back == text:
        return False
    letters = [c for c in back if not c.isspace()]
    odd = [c for c in letters if "\u0080" <= c < "\u3000"]
    return not odd and zh.count_han(back) >= max(1, len(letters) // 2)


def script_reasons(raw: str, norm: str, allow: set[str], min_cjk_ratio: float) -> list[str]:
    """Reasons (``kind: detail``) why one Chinese text fails the script check."""
    out = []
    if "\ufffd" in raw:
        out.append("replacement character: U+FFFD in text_zh")
    if _MOJIBAKE_LATIN.search(raw) or _reverses_to_chinese(raw, "cp1252") or \
            _reverses_to_chinese(raw, "latin-1"):
        m = _MOJIBAKE_LATIN.search(raw)
        out.append(f"mojibake: UTF-8 read as Latin-1 ({(m.group(0) if m else raw[:6])!r})")
    elif _MOJIBAKE_GBK.search(raw) or _reverses_to_chinese(raw, "gbk"):
        m = _MOJIBAKE_GBK.search(raw)
        out.append(f"mojibake: UTF-8 read as GBK ({(m.group(0) if m else raw[:6])!r})")
    words = _LATIN_WORD.findall(norm)
    foreign = [w for w in words if len(w) > 1 and w.lower() not in allow]
    n_han = zh.count_han(norm)
    n_latin = sum(len(w) for w in words if len(w) > 1 and w.lower() not in allow)
    ratio = n_han / (n_han + n_latin) if (n_han + n_latin) else 0.0
    if ratio < min_cjk_ratio:
        out.append(f"low CJK ratio: {ratio:.2f} < {min_cjk_ratio:.2f}")
    if foreign:
        shown = ", ".join(repr(w) for w in list(dict.fromkeys(foreign))[:4])
        out.append(f"untranslated English: {shown}")
    return out


# ------------------------------------------------------------------------------------------------
# COCO RLE validation, vectorised (pycocotools' decoder does not bound-check the runs)
def rle_validate(counts: list, sizes: list) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """For COCO compressed RLE strings: (ok bool [n], area int64 [n], problem str per item).

    A string is decodable when it uses only characters 48..111, every number ends inside it, no
    number is wider than 32 bits, no run is negative and the runs add up to height x width.
    """
    n = len(counts)
    ok = np.ones(n, dtype=bool)
    problem = [""] * n
    hw = np.zeros(n, dtype=np.int64)
    enc: list[bytes] = []
    for i, (c, s) in enumerate(zip(counts, sizes, strict=True)):
        b = b""
        try:
            h, w = (int(v) for v in s)
            if h <= 0 or w <= 0:
                raise ValueError
            hw[i] = h * w
        except (TypeError, ValueError):
            ok[i], problem[i] = False, f"mask size must be [height, width] > 0, got {s!r}"
        if not isinstance(c, str) or not c:
            ok[i] = False
            problem[i] = problem[i] or "mask counts must be a non-empty RLE string"
        else:
            try:
                b = c.encode("ascii")
            except UnicodeEncodeError:
                ok[i], problem[i] = False, problem[i] or "mask counts has non-ASCII characters"
        enc.append(b if ok[i] else b"")
    lens = np.array([len(b) for b in enc], dtype=np.int64)
    area = np.zeros(n, dtype=np.int64)
    if lens.sum() == 0:
        return ok, area, problem
    buf = np.frombuffer(b"".join(enc), dtype=np.uint8).astype(np.int64) - 48
    sid = np.repeat(np.arange(n), lens)
    bad_char = (buf < 0) | (buf > 63)
    buf = np.clip(buf, 0, 63)
    end = (buf & 0x20) == 0
    last_pos = np.cumsum(lens)[lens > 0] - 1
    truncated_sid = sid[last_pos][~end[last_pos]]
    end[last_pos] = True  # cut numbers at the string's end (already marked invalid)
    num_id = np.concatenate([[0], np.cumsum(end)[:-1]])
    n_num = int(end.sum())
    num_start = np.flatnonzero(np.concatenate([[True], end[:-1]]))
    k = np.arange(len(buf)) - num_start[num_id]
    too_wide_sid = sid[k > 6]
    val = (buf & 0x1F) << (5 * np.minimum(k, 6))
    x = np.add.reduceat(val, num_start)
    last_k = k[end]
    neg = (buf[end] & 0x10) != 0
    x = np.where(neg, x - (np.int64(1) << (5 * (last_k + 1))), x)
    num_sid = sid[end]
    first_num = np.full(n, -1, dtype=np.int64)
    first_num[num_sid[::-1]] = np.arange(n_num)[::-1]
    m = np.arange(n_num) - first_num[num_sid]
    # runs: cnts[m] = x[m] + cnts[m-2] for m > 2, i.e. cumulative sums along each parity chain
    chain = np.where(m == 0, -1, num_sid * 2 + (m % 2))
    order = np.lexsort((m, chain))
    cs = np.cumsum(x[order])
    ch_sorted = chain[order]
    starts = np.flatnonzero(np.concatenate([[True], ch_sorted[1:] != ch_sorted[:-1]]))
    base = np.repeat(cs[starts] - x[order][starts], np.diff(np.append(starts, n_num)))
    cnts = np.empty(n_num, dtype=np.int64)
    cnts[order] = cs - base
    cnts = np.where(m == 0, x, cnts)
    total = np.bincount(num_sid, weights=cnts, minlength=n).astype(np.int64)
    area = np.bincount(num_sid, weights=np.where(m % 2 == 1, cnts, 0), minlength=n).astype(np.int64)
    negative_sid = num_sid[cnts < 0]
    for sids, why in ((sid[bad_char], "mask counts has characters outside the RLE alphabet"),
                      (truncated_sid, "mask counts ends inside a number"),
                      (too_wide_sid, "mask counts has a number wider than 32 bits"),
                      (negative_sid, "mask counts decodes to a negative run")):
        for i in np.unique(sids):
            if ok[i]:
                ok[i], problem[i] = False, why
    for i in np.flatnonzero(ok & (total != hw)):
        ok[i], problem[i] = False, f"mask runs cover {total[i]} pixels, size says {hw[i]}"
    area = np.where(ok, area, 0)
    return ok, area, problem


# ------------------------------------------------------------------------------------------------
# Reading the manifest leniently (the schema check must see faults that read_manifest refuses)
def read_raw(uri: str):
    """(pyarrow table, DataFrame) of a manifest whose header and column types are right; row-level
    faults (duplicate ids, bad masks) are left for the schema check."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except pa.ArrowInvalid as exc:
        raise mf.ManifestError(f"{uri}: not a Parquet file ({exc})") from None
    version = (table.schema.metadata or {}).get(mf.SCHEMA_VERSION_KEY)
    if version is None or version.decode() != mf.SCHEMA_VERSION:
        raise mf.ManifestError(f"{uri}: schema version {version!r} is not supported "
                               f"(expected {mf.SCHEMA_VERSION})")
    for name, typ in mf.COLUMNS.items():
        if name not in table.column_names:
            raise mf.ManifestError(f"{uri}: missing column {name!r}")
        if not table.schema.field(name).type.equals(typ):
            raise mf.ManifestError(f"{uri}: column {name!r} has type "
                                   f"{table.schema.field(name).type}, expected {typ}")
    df = pd.DataFrame({name: table.column(name).to_pylist() for name in mf.COLUMNS})
    return table, df


# ------------------------------------------------------------------------------------------------
# The per-row checks
def _unique_map(values: list, fn) -> list:
    cache: dict = {}
    out = []
    for v in values:
        r = cache.get(v, cache)
        if r is cache:
            r = cache[v] = fn(v)
        out.append(r)
    return out


def compute_checks(df: pd.DataFrame, cfg: CheckConfig | None = None, lexicon: Lexicon | None = None,
                   allow: set[str] | None = None, log=print) -> tuple[pd.DataFrame, dict]:
    """Per-row reasons for every check: a frame with one column per check holding a list of
    ``kind: detail`` strings (empty = pass), and statistics (the length band, timings)."""
    cfg = cfg or CheckConfig()
    lexicon = lexicon or load_lexicon(cfg.lexicons)
    allow = load_allowlist(cfg.allowlists) if allow is None else allow
    n = len(df)
    reasons = {c: [[] for _ in range(n)] for c in CHECKS}
    stats: dict = {"timings_s": {}}
    t0 = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal t0
        t1 = time.perf_counter()
        stats["timings_s"][name] = round(t1 - t0, 3)
        t0 = t1

    raw_en = [v if isinstance(v, str) else "" for v in df["text_en"]]
    raw_zh = [v if isinstance(v, str) else "" for v in df["text_zh"]]
    en_norm = _unique_map(raw_en, zh.normalize_en)
    zh_norm = _unique_map(raw_zh, zh.normalize_zh)
    en_toks = _unique_map(en_norm, zh.english_tokens)
    # completeness
    for i in range(n):
        if not en_norm[i]:
            reasons["completeness"][i].append("empty: text_en" + ("" if raw_en[i] or
                                              df["text_en"].iat[i] is not None else " (null)"))
        if not zh_norm[i]:
            reasons["completeness"][i].append("empty: text_zh" + ("" if raw_zh[i] or
                                              df["text_zh"].iat[i] is not None else " (null)"))
    tick("completeness")
    # script (Chinese side; U+FFFD and Latin-1 mojibake on the English side too)
    script_of: dict[tuple[str, str], list[str]] = {}
    for i in range(n):
        if zh_norm[i]:
            key = (raw_zh[i], zh_norm[i])
            got = script_of.get(key)
            if got is None:
                got = script_of[key] = script_reasons(raw_zh[i], zh_norm[i], allow,
                                                      cfg.min_cjk_ratio)
            reasons["script"][i].extend(got)
        if "\ufffd" in raw_en[i]:
            reasons["script"][i].append("replacement character: U+FFFD in text_en")
        if _MOJIBAKE_LATIN.search(raw_en[i]):
            reasons["script"][i].append("mojibake: text_en has UTF-8 read as Latin-1")
    tick("script")
    # length
    log(f"  segmenting {len(set(zh_norm))} distinct Chinese texts with jieba")
    zh_toks = zh.segment_many(zh_norm, workers=cfg.workers, normalized=True)
    tick("segment")
    n_zh = np.array([len(t) for t in zh_toks], dtype=np.float64)
    n_en = np.array([len(t) for t in en_toks], dtype=np.float64)
    both = (n_zh > 0) & (n_en > 0)
    ratio = (n_zh + 1) / (n_en + 1)
    if cfg.length_band is not None:
        lo, hi = (float(v) for v in cfg.length_band)
        stats["length_band"] = {"source": "configured", "low": lo, "high": hi}
    else:
        logr = np.log(ratio[both]) if both.any() else np.zeros(1)
        med = float(np.median(logr))
        mad = 1.4826 * float(np.median(np.abs(logr - med)))
        half = max(cfg.length_mads * mad, math.log(cfg.length_min_factor))
        lo, hi = math.exp(med - half), math.exp(med + half)
        stats["length_band"] = {"source": "learned", "low": round(lo, 4), "high": round(hi, 4),
                                "median": round(math.exp(med), 4), "mad_log": round(mad, 4),
                                "mads": cfg.length_mads, "min_factor": cfg.length_min_factor}
    stats["length_band"]["statistic"] = "(zh jieba words + 1) / (en words + 1)"
    if both.any():
        stats["words"] = {"zh_mean": round(float(n_zh[both].mean()), 3),
                          "en_mean": round(float(n_en[both].mean()), 3),
                          "zh_over_en_median": round(float(np.median(n_zh[both] / n_en[both])), 3)}
    for i in np.flatnonzero(both & ((ratio < lo) | (ratio > hi))):
        reasons["length"][i].append(
            f"ratio out of band: ({int(n_zh[i])}+1)/({int(n_en[i])}+1) = {ratio[i]:.2f} not in "
            f"[{lo:.2f}, {hi:.2f}]")
    tick("length")
    # meaning
    en_c = _unique_map([" ".join(t) for t in en_toks], lambda s: lexicon.en_concepts(s.split()))
    zh_c = _unique_map(zh_norm, lexicon.zh_concepts)
    cmp_cache: dict = {}
    for i in range(n):
        if not (en_norm[i] and zh_norm[i]):
            continue
        key = (en_c[i], zh_c[i])
        got = cmp_cache.get(key)
        if got is None:
            got = cmp_cache[key] = lexicon.compare(*key)
        reasons["meaning"][i].extend(got)
    tick("meaning")
    # duplicates: same zh text, different en text, different objects, same image
    dup = pd.DataFrame({"dataset": df["dataset"].astype(object).fillna(""),
                        "image_id": df["image_id"].astype(object).fillna(-1),
                        "zh": zh_norm, "en": [e.lower() for e in en_norm],
                        "ann": df["ann_id"].astype(object).fillna(-1)})
    dup = dup[dup["zh"] != ""]
    g = dup.groupby(["dataset", "image_id", "zh"], sort=False)
    flagged = dup[(g["ann"].transform("nunique") > 1) & (g["en"].transform("nunique") > 1)]
    if len(flagged):
        anns = flagged.groupby(["dataset", "image_id", "zh"], sort=False)["ann"].agg(
            lambda s: sorted(set(s)))
        for i, row in flagged.iterrows():
            others = [a for a in anns[(row["dataset"], row["image_id"], row["zh"])]
                      if a != row["ann"]]
            reasons["duplicates"][i].append(
                f"same zh text {row['zh']!r} for other objects of image {row['image_id']} "
                f"(ann_id {', '.join(map(str, others[:5]))}) with different English")
    tick("duplicates")
    _schema(df, cfg, reasons["schema"])
    tick("schema")
    return pd.DataFrame(reasons), stats


def _schema(df: pd.DataFrame, cfg: CheckConfig, out: list[list[str]]) -> None:
    ids = df["sample_id"]
    for i in np.flatnonzero(ids.map(lambda v: not isinstance(v, str) or not v.strip()).to_numpy()):
        out[i].append("missing: sample_id")
    counts = ids.map(ids.value_counts(dropna=True))
    for i in np.flatnonzero((counts.fillna(1) > 1).to_numpy()):
        out[i].append(f"duplicate id: sample_id {ids.iat[i]!r} occurs {int(counts.iat[i])} times")
    known = set(cfg.known_splits)
    for i in np.flatnonzero(~df["split"].isin(known).to_numpy()):
        out[i].append(f"unknown split: {df['split'].iat[i]!r} (known: {', '.join(cfg.known_splits)})")
    for col in ("dataset", "image_uri", "category"):
        bad = df[col].map(lambda v: not isinstance(v, str) or not v.strip()).to_numpy()
        for i in np.flatnonzero(bad):
            out[i].append(f"missing: {col}")
    for col in ("image_id", "ref_id", "ann_id"):
        for i in np.flatnonzero(df[col].isna().to_numpy()):
            out[i].append(f"missing: {col}")
    # masks: validate distinct (size, counts) once
    masks = df["mask"].tolist()
    keys = [(tuple(m["size"]) if isinstance(m, dict) and m.get("size") is not None else None,
             m.get("counts") if isinstance(m, dict) else None) for m in masks]
    uniq = list(dict.fromkeys(keys))
    ok_u, area_u, prob_u = rle_validate([k[1] for k in uniq], [k[0] for k in uniq])
    pos = {k: j for j, k in enumerate(uniq)}
    heights = np.full(len(df), np.nan)
    widths = np.full(len(df), np.nan)
    for i, k in enumerate(keys):
        j = pos[k]
        if masks[i] is None:
            out[i].append("mask: missing")
        elif not ok_u[j]:
            out[i].append(f"mask not decodable: {prob_u[j]}")
        elif area_u[j] == 0:
            out[i].append("mask: empty (no foreground pixel)")
        if ok_u[j]:
            heights[i], widths[i] = k[0]
    # bbox inside the image (mask size = image size)
    bb = np.full((len(df), 4), np.nan)
    for i, v in enumerate(df["bbox"]):
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (4,) or not np.isfinite(arr).all():
            out[i].append(f"bbox: expected 4 finite numbers [x, y, w, h], got {v!r}")
        else:
            bb[i] = arr
    x, y, w, h = bb.T
    tol = cfg.bbox_tolerance
    with np.errstate(invalid="ignore"):
        nonpos = (w <= 0) | (h <= 0)
        outside = (x < -tol) | (y < -tol) | (x + w > widths + tol) | (y + h > heights + tol)
    for i in np.flatnonzero(nonpos):
        out[i].append(f"bbox: width/height must be > 0, got {list(bb[i])}")
    for i in np.flatnonzero(outside & ~nonpos & np.isfinite(widths)):
        out[i].append(f"bbox {list(bb[i])} outside the {int(widths[i])}x{int(heights[i])} image")


# ------------------------------------------------------------------------------------------------
# Great Expectations
def run_great_expectations(ge_df: pd.DataFrame, gx_root: str, descriptions: dict[str, str]
                           ) -> dict:
    """One suite, one expectation per check column (values must be null), run by a checkpoint with
    UpdateDataDocsAction. Returns success, per-expectation results and the Data Docs paths."""
    import great_expectations as gx
    from great_expectations import expectations as gxe
    from great_expectations.checkpoint import UpdateDataDocsAction

    if os.path.exists(gx_root):
        shutil.rmtree(gx_root)
    os.makedirs(gx_root)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=gx_root)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("manifest")
    asset = source.add_dataframe_asset("expressions")
    batch = asset.add_batch_definition_whole_dataframe("all rows")
    suite = context.suites.add(gx.ExpectationSuite(name="translation_checks"))
    for name, desc in descriptions.items():
        suite.add_expectation(gxe.ExpectColumnValuesToBeNull(
            column=name, description=desc,
            notes=f"Failing rows show as '<sample_id>: <reasons>'. Check '{name}'.",
            meta={"check": name}))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(
        column="sample_id", description="schema: sample_id is unique", meta={"check": "schema"}))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest_translations", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="check_translations", validation_definitions=[validation],
        actions=[UpdateDataDocsAction(name="update_data_docs")],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20}))
    result = checkpoint.run(batch_parameters={"dataframe": ge_df})
    per = {}
    for vr in result.run_results.values():
        for r in vr.results:
            kw = r.expectation_config.kwargs
            key = kw.get("column") if r.expectation_config.type == "expect_column_values_to_be_null" \
                else f"{kw.get('column')}_unique"
            per[key] = {"success": bool(r.success),
                        "expectation": r.expectation_config.type,
                        "unexpected_count": int(r.result.get("unexpected_count") or 0),
                        "examples": [str(v) for v in r.result.get("partial_unexpected_list") or []][:5]}
    site = os.path.join(gx_root, "gx", "uncommitted", "data_docs", "local_site")
    index = os.path.join(site, "index.html")
    pages = sorted(str(p) for p in Path(site, "validations").rglob("*.html")) \
        if os.path.isdir(os.path.join(site, "validations")) else []
    return {"success": bool(result.success), "expectations": per, "report": index,
            "validation_page": pages[-1] if pages else None}


# ------------------------------------------------------------------------------------------------
# The step
def check_translations(manifest_uri: str, out_dir: str, max_fail_rate: float = DEFAULT_MAX_FAIL_RATE,
                       lexicon: list[str] | str | None = None, allowlist: list[str] | str | None = None,
                       min_cjk_ratio: float = 0.6, length_band: tuple[float, float] | None = None,
                       known_splits: tuple[str, ...] | None = None, bbox_tolerance: float = 1.0,
                       workers: int | None = None, progress: bool = True) -> dict:
    """Run every check on ``manifest_uri``, write the outputs to ``out_dir`` (local or s3://) and
    return the summary (``report``, ``rows_in``, ``rows_clean``, ``rows_quarantined``, ...).

    Raises :class:`TranslationGateError` after writing everything when the failing share exceeds
    ``max_fail_rate``."""
    if not 0.0 <= max_fail_rate <= 1.0:
        raise ValueError(f"max_fail_rate must be in [0, 1], got {max_fail_rate}")
    if not 0.0 <= min_cjk_ratio <= 1.0:
        raise ValueError(f"min_cjk_ratio must be in [0, 1], got {min_cjk_ratio}")
    if length_band is not None and not 0 < length_band[0] < length_band[1]:
        raise ValueError(f"length band must be 0 < low < high, got {length_band}")
    log = print if progress else (lambda *a, **k: None)
    t_start = time.perf_counter()
    lex_paths = [lexicon] if isinstance(lexicon, str) else list(lexicon or [DEFAULT_LEXICON])
    allow_paths = [allowlist] if isinstance(allowlist, str) else list(allowlist or [DEFAULT_ALLOWLIST])
    cfg = CheckConfig(min_cjk_ratio=min_cjk_ratio, length_band=length_band,
                      known_splits=tuple(known_splits or mf.KNOWN_SPLITS),
                      bbox_tolerance=bbox_tolerance, lexicons=lex_paths, allowlists=allow_paths,
                      workers=workers)
    lex = load_lexicon(lex_paths)
    allow = load_allowlist(allow_paths)
    log(f"check-translations: reading {manifest_uri}")
    t0 = time.perf_counter()
    table, df = read_raw(manifest_uri)
    t_read = time.perf_counter() - t0
    n = len(df)
    log(f"  {n} rows; running {len(CHECKS)} checks ({len(lex.concepts)} lexicon concepts)")
    reasons, stats = compute_checks(df, cfg, lex, allow, log=log)
    failed = {c: np.array([bool(r) for r in reasons[c]], dtype=bool) for c in CHECKS}
    any_fail = np.zeros(n, dtype=bool)
    for c in CHECKS:
        any_fail |= failed[c]
    ids = [str(v) if v is not None else f"<row {i}>" for i, v in enumerate(df["sample_id"])]

    final_out = str(out_dir)
    local_out = tempfile.mkdtemp(prefix="check-") if storage.is_s3(final_out) else final_out
    os.makedirs(local_out, exist_ok=True)
    # Great Expectations: one column per check, null = pass, "<sample_id>: reasons" = fail
    ge_df = pd.DataFrame({"sample_id": df["sample_id"].astype(object)})
    for c in CHECKS:
        ge_df[c] = [f"{ids[i]}: {'; '.join(r)}" if r else None for i, r in enumerate(reasons[c])]
    log("  validating with Great Expectations (suite 'translation_checks', Data Docs)")
    t0 = time.perf_counter()
    gx_result = run_great_expectations(ge_df, local_out, CHECK_DESCRIPTIONS)
    t_ge = time.perf_counter() - t0

    # outputs
    t0 = time.perf_counter()
    import pyarrow as pa
    import pyarrow.parquet as pq

    clean_idx = np.flatnonzero(~any_fail)
    bad_idx = np.flatnonzero(any_fail)
    clean_df = df.iloc[clean_idx].reset_index(drop=True)
    mf.write_manifest(clean_df, os.path.join(local_out, "clean.parquet"))
    row_checks = [[c for c in CHECKS if failed[c][i]] for i in bad_idx]
    row_reasons = [[f"{c}: {r}" for c in CHECKS for r in reasons[c].iat[i]] for i in bad_idx]
    qt = table.take(pa.array(bad_idx, type=pa.int64()))
    qt = qt.append_column("row", pa.array(bad_idx, type=pa.int64()))
    qt = qt.append_column("checks", pa.array(row_checks, type=pa.list_(pa.string())))
    qt = qt.append_column("reasons", pa.array(row_reasons, type=pa.list_(pa.string())))
    pq.write_table(qt, os.path.join(local_out, "quarantine.parquet"), compression="zstd")
    t_write = time.perf_counter() - t0

    kinds = Counter(_kind(r) for rs in row_reasons for r in rs)
    fail_rate = len(bad_idx) / n if n else 0.0
    gate_ok = fail_rate <= max_fail_rate
    summary = {
        "manifest": manifest_uri,
        "rows_in": n,
        "rows_clean": int(len(clean_idx)),
        "rows_quarantined": int(len(bad_idx)),
        "fail_rate": round(fail_rate, 6),
        "max_fail_rate": max_fail_rate,
        "gate": "pass" if gate_ok else "fail",
        "per_check": {c: int(failed[c].sum()) for c in CHECKS},
        "per_reason": dict(kinds.most_common()),
        "examples": {c: [ge_df[c].iat[i] for i in np.flatnonzero(failed[c])[:3]] for c in CHECKS},
        "length_band": stats["length_band"],
        "words": stats.get("words", {}),
        "config": {"min_cjk_ratio": min_cjk_ratio, "known_splits": list(cfg.known_splits),
                   "bbox_tolerance": bbox_tolerance, "lexicon": lex.sources,
                   "lexicon_concepts": len(lex.concepts), "allowlist": allow_paths},
        "great_expectations": {"suite": "translation_checks", "success": gx_result["success"],
                               "expectations": gx_result["expectations"]},
        "report": _final_path(gx_result["report"], local_out, final_out),
        "validation_page": _final_path(gx_result["validation_page"], local_out, final_out),
        "outputs": {k: storage.join(final_out, f) for k, f in
                    (("clean", "clean.parquet"), ("quarantine", "quarantine.parquet"),
                     ("summary", "summary.json"))},
        "timings_s": {"read": round(t_read, 3), **stats["timings_s"], "great_expectations":
                      round(t_ge, 3), "write": round(t_write, 3),
                      "total": round(time.perf_counter() - t_start, 3)},
    }
    assert summary["rows_clean"] + summary["rows_quarantined"] == n
    with open(os.path.join(local_out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, ensure_ascii=False)
    if storage.is_s3(final_out):
        storage.copy_tree(local_out, final_out)
        shutil.rmtree(local_out, ignore_errors=True)
    log(f"  {summary['rows_clean']} clean, {summary['rows_quarantined']} quarantined "
        f"({fail_rate:.2%}); per check: {summary['per_check']}")
    log(f"  report: {summary['report']}")
    if not gate_ok:
        top = ", ".join(f"{k} ({v})" for k, v in kinds.most_common(3))
        raise TranslationGateError(
            f"check-translations gate: {len(bad_idx)} of {n} rows fail ({fail_rate:.2%}), over "
            f"the threshold max_fail_rate={max_fail_rate:.2%}; top reasons: {top}; "
            f"quarantine and report in {final_out}")
    return summary


def _final_path(path: str | None, local_out: str, final_out: str) -> str | None:
    if path is None or not storage.is_s3(final_out):
        return path
    return storage.join(final_out, *Path(os.path.relpath(path, local_out)).parts)


def _kind(reason: str) -> str:
    """``"meaning: contradiction: en says ..."`` -> ``"meaning/contradiction"``."""
    check, _, rest = reason.partition(": ")
    return f"{check}/{rest.split(':', 1)[0].strip()}"


# ------------------------------------------------------------------------------------------------
# CLI
def _band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.5,4), got {text!r}") from None
    return lo, hi


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="bilingual manifest (Parquet, local or s3://)")
    p.add_argument("--out", required=True, help="output folder (local or s3://)")
    p.add_argument("--lexicon", action="append", default=None, metavar="FILE",
                   help="lexicon TSV (repeatable; default components/data/lexicon.tsv; give it "
                        "too to extend rather than replace it)")
    p.add_argument("--allowlist", action="append", default=None, metavar="FILE",
                   help="English words allowed in Chinese text (repeatable; default "
                        "components/data/allowlist_en.txt)")
    p.add_argument("--max-fail-rate", type=float, default=DEFAULT_MAX_FAIL_RATE,
                   help="gate: fail when the share of failing rows is above this (default 0.05)")
    p.add_argument("--min-cjk-ratio", type=float, default=0.6,
                   help="least share of Chinese characters in text_zh (default 0.6)")
    p.add_argument("--length-band", type=_band, default=None, metavar="LOW,HIGH",
                   help="band of (zh words + 1) / (en words + 1); default: learned from the data")
    p.add_argument("--workers", type=int, default=None, help="jieba processes (default: all cores)")


def run(args) -> int:
    s = check_translations(args.manifest, args.out, max_fail_rate=args.max_fail_rate,
                           lexicon=args.lexicon, allowlist=args.allowlist,
                           min_cjk_ratio=args.min_cjk_ratio, length_band=args.length_band,
                           workers=args.workers)
    print(f"check-translations: {s['rows_in']} rows -> {s['rows_clean']} clean, "
          f"{s['rows_quarantined']} quarantined ({s['fail_rate']:.2%}, gate "
          f"{s['max_fail_rate']:.2%}) in {s['timings_s']['total']} s; report {s['report']}")
    return 0
