"""Per-text normalisation, tokenisation and checks of the tokenize step.

A text is refused (quarantined, with the reason) when it is empty after normalisation, is in
another script than its column's language (no Chinese characters in ``text_zh``, no Latin letters
in ``text_en``), still holds a control or format character after normalisation (NUL, a bidi
override: :mod:`components.checks.characters`; check-translations quarantines them first, this
keeps them out of the vocabulary when that step was skipped), or holds a token longer than ``max_token_chars``. :func:`screen` applies that to
every requested language of a manifest: a row is kept only when all of them pass, so every
language's encoded data holds the same rows in the same order.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from components.checks.characters import control_reason
from components.text import zh

MAX_TOKEN_CHARS = 30


def dominant_script(text: str) -> str:
    """The Unicode script word (``CJK``, ``LATIN``, ``CYRILLIC``...) of most letters of ``text``."""
    names = Counter()
    for c in text:
        if c.isalpha():
            try:
                names[unicodedata.name(c).split()[0]] += 1
            except ValueError:
                names["UNKNOWN"] += 1
    return names.most_common(1)[0][0] if names else "no letters"


def script_reason(norm: str, lang: str) -> str | None:
    """Why a normalised text is not in ``lang``'s script, or None."""
    if lang == "zh" and zh.count_han(norm) == 0:
        return f"wrong script: no Chinese characters (mostly {dominant_script(norm)})"
    if lang == "en" and zh.count_latin(norm) == 0:
        return f"wrong script: no Latin letters (mostly {dominant_script(norm)})"
    return None


def check_text(norm: str, tokens: list[str], lang: str, max_token_chars: int = MAX_TOKEN_CHARS
               ) -> str | None:
    """Reason to quarantine one text, or None."""
    if not norm or not tokens:
        return "empty after normalisation"
    reason = control_reason(norm, f"text_{lang}") or script_reason(norm, lang)
    if reason:
        return reason
    long = [t for t in tokens if len(t) > max_token_chars]
    if long:
        return f"token longer than {max_token_chars} characters: {long[0][:40]!r}"
    return None


def reason_kind(reason: str) -> str:
    """The kind of a quarantine reason (its text before the first colon)."""
    return reason.split(":")[0]


def tokenize_texts(texts: Sequence[str | None], lang: str, extra_userdicts: Sequence[str] = (),
                   workers: int | None = None) -> tuple[list[str], list[list[str]]]:
    """(normalised texts, token lists) of one language; each distinct text is processed once."""
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


def check_texts(norms: Sequence[str], tokens: Sequence[list[str]], lang: str,
                max_token_chars: int = MAX_TOKEN_CHARS) -> list[str | None]:
    """:func:`check_text` for each text (tokens depend only on the normalised text: checked once)."""
    checked: dict[str, str | None] = {}
    reasons = []
    for n, tk in zip(norms, tokens, strict=True):
        if n not in checked:
            checked[n] = check_text(n, tk, lang, max_token_chars)
        reasons.append(checked[n])
    return reasons


@dataclass
class Screening:
    """Which rows of a manifest pass the checks of every language, and why the others do not."""

    reasons: dict[str, list[str | None]]  # per language, per row: None or why it is refused
    splits: list[str]                      # per row
    sample_ids: list[str]                  # per row

    @cached_property
    def keep(self) -> np.ndarray:
        n = len(self.splits)
        return np.array([all(r[i] is None for r in self.reasons.values()) for i in range(n)],
                        dtype=bool)

    def refused(self, lang: str) -> np.ndarray:
        return np.array([r is not None for r in self.reasons[lang]])

    def quarantine_rows(self, texts: dict[str, list]) -> list[dict]:
        """One row per refused (sample, language): sample_id, lang, reason, split, text."""
        rows = []
        for g, reasons in self.reasons.items():
            col = texts[g]
            for i, r in enumerate(reasons):
                if r is not None:
                    rows.append({"sample_id": self.sample_ids[i], "lang": g, "reason": r,
                                 "split": self.splits[i],
                                 "text": None if col[i] is None else str(col[i])})
        return rows

    def reason_counts(self) -> dict[str, dict[str, int]]:
        return {g: dict(Counter(reason_kind(r) for r in reasons if r is not None))
                for g, reasons in self.reasons.items()}

    def split_counts(self, split_names: Sequence[str]) -> dict[str, dict]:
        """Per split: rows in / kept / quarantined, and the same per language (with the rows
        dropped because another language refused them)."""
        keep = self.keep
        split_arr = np.array(self.splits, dtype=object)
        out: dict[str, dict] = {}
        for s in split_names:
            in_s = split_arr == s
            out[s] = {"rows": {"in": int(in_s.sum()), "kept": int((in_s & keep).sum()),
                               "quarantined": int((in_s & ~keep).sum())}}
            for g in self.reasons:
                bad_g = self.refused(g)
                out[s][g] = {
                    "in": int(in_s.sum()), "kept": int((in_s & keep).sum()),
                    "quarantined": int((in_s & bad_g).sum()),
                    "dropped_for_other_language": int((in_s & ~bad_g & ~keep).sum()),
                }
        return out
