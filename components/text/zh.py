"""Text normalisation and word segmentation for both languages.

Chinese: :func:`normalize_zh` folds full-width forms (NFKC), maps Chinese/traditional punctuation to
one ASCII form, removes zero-width characters and collapses whitespace; :func:`segment` runs jieba
in precise mode with the HMM (Viterbi) for unknown words, on a *private* ``jieba.Tokenizer`` that has
the project's user dictionary (``components/data/userdict_zh.txt``) loaded once. Punctuation-only
tokens and whitespace are dropped (as the English tokens drop punctuation).

English: :func:`english_tokens` lower-cases and splits on anything that is not a letter or digit,
keeping apostrophes inside words ("man's", "don't"), like the refer toolkit's ``tokens``.

:func:`segment_many` segments a batch, unique strings only, on all cores through a process pool
when the batch is large.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

# The project's jieba user dictionary: its place in the package, and its path on this machine.
PROJECT_USERDICT_NAME = "components/data/userdict_zh.txt"
PROJECT_USERDICT = str(Path(__file__).resolve().parents[2] / PROJECT_USERDICT_NAME)

# Punctuation that NFKC leaves alone, mapped to one (ASCII) form.
_PUNCT = {
    "。": ".", "｡": ".", "、": ",", "､": ",", "〜": "~", "～": "~",
    "「": '"', "」": '"', "『": '"', "』": '"', "“": '"', "”": '"', "„": '"', "‟": '"',
    "《": '"', "》": '"', "〈": '"', "〉": '"', "«": '"', "»": '"', "〝": '"', "〞": '"',
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'", "´": "'",
    "【": "[", "】": "]", "〔": "(", "〕": ")", "〖": "[", "〗": "]",
    "—": "-", "–": "-", "―": "-", "‐": "-", "‑": "-", "‒": "-", "−": "-",
    "・": "·", "•": "·", "‧": "·",
}
_ZERO_WIDTH = {0x200B: None, 0x200C: None, 0x200D: None, 0x2060: None, 0xFEFF: None, 0x00AD: None}
_TRANSLATE = {ord(k): v for k, v in _PUNCT.items()} | _ZERO_WIDTH

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_WS = re.compile(r"\s+")
_HAN_GAP = re.compile(rf"(?<=[{_HAN}]) (?=[{_HAN}])")
HAN_RE = re.compile(rf"[{_HAN}]")
LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
_EN_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

# Above this many unique strings, segment_many uses a process pool.
POOL_THRESHOLD = 20_000


def normalize_zh(text: str | None) -> str:
    """NFKC (full-width -> half-width), one form of punctuation, whitespace collapsed.

    Spaces between two Chinese characters are removed (a translation artefact); a single space is
    kept between Latin words. ``None`` gives ``""``.
    """
    if not text:
        return ""
    t = unicodedata.normalize("NFKC", str(text)).translate(_TRANSLATE)
    t = _WS.sub(" ", t).strip()
    return _HAN_GAP.sub("", t)


def normalize_en(text: str | None) -> str:
    """NFKC, one apostrophe/quote form, whitespace collapsed (case kept)."""
    if not text:
        return ""
    t = unicodedata.normalize("NFKC", str(text)).translate(_TRANSLATE)
    return _WS.sub(" ", t).strip()


def english_tokens(text: str | None) -> list[str]:
    """Lower-cased word tokens: split on non-alphanumerics, apostrophes kept inside words."""
    return _EN_WORD.findall(normalize_en(text).lower())


@functools.lru_cache(maxsize=200_000)
def _is_punct(tok: str) -> bool:
    return all(unicodedata.category(c)[0] in "PZ" or c.isspace() for c in tok)


# ------------------------------------------------------------------------------------------------
# jieba: private tokenizers, one per (project dictionary on/off, extra user dictionaries)
_TOKENIZERS: dict[tuple, object] = {}


def tokenizer_key(extra_userdicts: Iterable[str] = (), project_dict: bool = True) -> tuple:
    return (bool(project_dict), tuple(str(Path(p).resolve()) for p in extra_userdicts))


def get_tokenizer(extra_userdicts: Iterable[str] = (), project_dict: bool = True):
    """A private ``jieba.Tokenizer`` with the user dictionaries loaded (built once per key)."""
    key = tokenizer_key(extra_userdicts, project_dict)
    tk = _TOKENIZERS.get(key)
    if tk is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        tk = jieba.Tokenizer()
        tk.initialize()
        dicts = ([PROJECT_USERDICT] if key[0] else []) + list(key[1])
        for path in dicts:
            _check_userdict(path)
            with open(path, "rb") as fh:  # jieba leaves a path's file open; give it a handle
                try:
                    tk.load_userdict(fh)
                except ValueError as exc:  # jieba names the bad line
                    from components.errors import InputError

                    raise InputError(f"jieba user dictionary {path}: {exc}") from None
        _TOKENIZERS[key] = tk
    return tk


def _check_userdict(path: str) -> None:
    """Name the file when a user dictionary is missing or not UTF-8 (jieba names bad lines)."""
    from components.errors import InputError, MissingInputError

    try:
        Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise MissingInputError(f"jieba user dictionary {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"jieba user dictionary {path}: not UTF-8 ({exc})") from None


def segment(text: str | None, extra_userdicts: Iterable[str] = (), project_dict: bool = True
            ) -> list[str]:
    """Normalise and segment one Chinese text (jieba precise mode, HMM on); punctuation dropped."""
    t = normalize_zh(text)
    if not t:
        return []
    tk = get_tokenizer(extra_userdicts, project_dict)
    return [w for w in tk.lcut(t, cut_all=False, HMM=True) if w.strip() and not _is_punct(w)]


def _segment_chunk(args: tuple) -> list[list[str]]:
    key, texts = args
    tk = get_tokenizer(key[1], key[0])
    out = []
    for t in texts:
        out.append([w for w in tk.lcut(t, cut_all=False, HMM=True) if w.strip() and not _is_punct(w)]
                   if t else [])
    return out


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def segment_many(texts: Sequence[str | None], workers: int | None = None,
                 extra_userdicts: Iterable[str] = (), project_dict: bool = True,
                 pool_threshold: int = POOL_THRESHOLD, normalized: bool = False
                 ) -> list[list[str]]:
    """Segment many texts; each distinct string is normalised and segmented once.

    ``workers`` None means all cores; a process pool is used only when there are at least
    ``pool_threshold`` distinct strings (below that, starting processes costs more than it saves).
    ``normalized=True`` skips :func:`normalize_zh` (the caller did it).
    """
    raw = [t or "" for t in texts]
    if normalized:
        normed = raw
    else:
        norm_of = {t: normalize_zh(t) for t in dict.fromkeys(raw)}
        normed = [norm_of[t] for t in raw]
    uniq = list(dict.fromkeys(normed))
    key = tokenizer_key(extra_userdicts, project_dict)
    get_tokenizer(key[1], key[0])  # build once here: forked workers inherit it
    n_workers = available_cores() if workers is None else max(1, int(workers))
    n_workers = min(n_workers, max(1, len(uniq)))
    if n_workers <= 1 or len(uniq) < pool_threshold:
        segs = _segment_chunk((key, uniq))
    else:
        n_chunks = n_workers * 4
        size = -(-len(uniq) // n_chunks)
        chunks = [(key, uniq[i:i + size]) for i in range(0, len(uniq), size)]
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(n_workers) as pool:
            segs = [s for part in pool.map(_segment_chunk, chunks) for s in part]
    table = dict(zip(uniq, segs, strict=True))
    return [list(table[t]) for t in normed]


def count_han(text: str) -> int:
    return len(HAN_RE.findall(text or ""))


def count_latin(text: str) -> int:
    return len(LATIN_RE.findall(text or ""))
