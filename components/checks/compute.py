"""Every check on every row of a manifest: :func:`compute_checks`.

The checks, in the order they run and report:

completeness  ``text_en`` and ``text_zh`` both non-empty after normalisation (trim, NFKC).
script        see :mod:`components.checks.script`; and no control or format character on either
              side (:mod:`components.checks.characters`).
length        see :mod:`components.checks.length`; and neither side longer than its language's
              maximum in characters (:mod:`components.checks.characters`).
meaning       the bilingual lexicon (:mod:`components.checks.lexicon`): a term on one side needs its
              counterpart on the other, and a term that contradicts it (left vs 右) is a
              contradiction.
duplicates    one Chinese text given for different English expressions of different objects
              (``ann_id``) of the same image: the translation lost the distinction.
schema        see :mod:`components.checks.schema`.
image         see :mod:`components.checks.images`: each distinct image opened and decoded once
              (allowed scheme and root, present, decodable, not truncated, within the pixel
              limit, the size of every mask that uses it). Only when :func:`compute_checks` is
              given an :class:`ImagePolicy` (the step always gives one).

Work is done once per distinct string (normalisation, tokens, script, lexicon look-ups); jieba runs
through ``components.text.zh.segment_many`` on all cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.checks.characters import DEFAULT_MAX_CHARS, control_reason, too_long_reason
from components.checks.images import ImagePolicy, image_reasons
from components.checks.length import length_reasons
from components.checks.lexicon import (
    DEFAULT_ALLOWLIST,
    DEFAULT_LEXICON,
    Lexicon,
    load_allowlist,
    load_lexicon,
)
from components.checks.schema import schema_reasons
from components.checks.script import english_script_reasons, script_reasons
from components.data import manifest as mf
from components.data.image_check import DEFAULT_MAX_PIXELS
from components.logs import get_logger
from components.text import zh

EN, ZH = mf.TEXT_COLUMN["en"], mf.TEXT_COLUMN["zh"]
CHECKS = ("completeness", "script", "length", "meaning", "duplicates", "schema", "image")
CHECK_DESCRIPTIONS = {
    "completeness": f"completeness: {EN} and {ZH} are both non-empty after trimming",
    "script": f"script: {ZH} is mostly Chinese characters, has no U+FFFD, no mojibake (UTF-8 "
              "read as Latin-1 or GBK) and no untranslated English words beyond the allowlist; "
              "neither side has a control or format character (NUL, bidi override, zero-width)",
    "length": "length: (Chinese jieba words + 1) / (English words + 1) lies in the band and "
              "neither side is longer than its maximum in characters",
    "meaning": "meaning: every lexicon term (spatial, colour, number, ordinal, category) has its "
               "counterpart on the other side and none is contradicted (left vs 右)",
    "duplicates": "duplicates: no Chinese text is shared by different English expressions of "
                  "different objects in one image",
    "schema": "schema: sample_id unique, split known, fields present, image_uri safe (an "
              "s3:// key without '..' or an absolute part), mask decodable and non-empty, bbox "
              "inside the image",
    "image": "image: every image is an allowed local path or s3:// object under the allowed "
             "roots, present, fully decodable, within the pixel limit, and the size of its masks",
}


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
    max_chars_en: int = DEFAULT_MAX_CHARS["en"]
    max_chars_zh: int = DEFAULT_MAX_CHARS["zh"]
    image_roots: tuple[str, ...] | None = None  # None: the manifest's folder and any s3:// object
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def image_policy(self, manifest_uri: str) -> ImagePolicy:
        """Where the images of ``manifest_uri`` may be, and how big."""
        return ImagePolicy.of(manifest_uri, self.image_roots, self.max_image_pixels, self.workers)


@dataclass
class _Texts:
    """Both sides of every row: as given ("" for null), normalised, and English tokens."""

    raw_en: list[str]
    raw_zh: list[str]
    en_norm: list[str]
    zh_norm: list[str]
    en_toks: list[list[str]]

    @classmethod
    def of(cls, df: pd.DataFrame) -> _Texts:
        raw_en = [v if isinstance(v, str) else "" for v in df[EN]]
        raw_zh = [v if isinstance(v, str) else "" for v in df[ZH]]
        en_norm = _unique_map(raw_en, zh.normalize_en)
        return cls(raw_en, raw_zh, en_norm, _unique_map(raw_zh, zh.normalize_zh),
                   _unique_map(en_norm, zh.english_tokens))


class _Timer:
    """Seconds per phase, each from the end of the previous one."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def lap(self, name: str) -> None:
        t1 = time.perf_counter()
        self.timings[name] = round(t1 - self._t0, 3)
        self._t0 = t1


def compute_checks(df: pd.DataFrame, cfg: CheckConfig | None = None, lexicon: Lexicon | None = None,
                   allow: set[str] | None = None, images: ImagePolicy | None = None
                   ) -> tuple[pd.DataFrame, dict]:
    """Per-row reasons for every check: a frame with one column per check holding a list of
    ``kind: detail`` strings (empty = pass), and statistics (the length band, images, timings).
    Images are opened only with an ``images`` policy (without one the image check passes)."""
    log = get_logger("check-translations")
    cfg = cfg or CheckConfig()
    lexicon = lexicon or load_lexicon(cfg.lexicons)
    allow = load_allowlist(cfg.allowlists) if allow is None else allow
    reasons = {c: [[] for _ in range(len(df))] for c in CHECKS}
    timer = _Timer()
    texts = _Texts.of(df)
    _completeness(df, texts, reasons["completeness"])
    timer.lap("completeness")
    _script(texts, allow, cfg.min_cjk_ratio, reasons["script"])
    _controls(texts, reasons["script"])
    timer.lap("script")
    log.info("segmenting %d distinct Chinese texts with jieba", len(set(texts.zh_norm)))
    zh_toks = zh.segment_many(texts.zh_norm, workers=cfg.workers, normalized=True)
    timer.lap("segment")
    stats = length_reasons(np.array([len(t) for t in zh_toks], dtype=np.float64),
                           np.array([len(t) for t in texts.en_toks], dtype=np.float64),
                           cfg.length_band, cfg.length_mads, cfg.length_min_factor,
                           reasons["length"])
    _too_long(texts, cfg, reasons["length"])
    timer.lap("length")
    _meaning(texts, lexicon, reasons["meaning"])
    timer.lap("meaning")
    _duplicates(df, texts, reasons["duplicates"])
    timer.lap("duplicates")
    schema_reasons(df, tuple(cfg.known_splits), cfg.bbox_tolerance, reasons["schema"])
    timer.lap("schema")
    if images is not None:
        log.info("opening %d distinct images", df["image_uri"].nunique())
        stats.update(image_reasons(df, images, reasons["image"]))
        timer.lap("image")
    return pd.DataFrame(reasons), {"timings_s": timer.timings, **stats}


def _unique_map(values: list, fn) -> list:
    """``[fn(v) for v in values]``, calling ``fn`` once per distinct value."""
    cache: dict = {}
    out = []
    for v in values:
        r = cache.get(v, cache)
        if r is cache:
            r = cache[v] = fn(v)
        out.append(r)
    return out


def _completeness(df: pd.DataFrame, texts: _Texts, out: list[list[str]]) -> None:
    for i in range(len(df)):
        if not texts.en_norm[i]:
            null = not texts.raw_en[i] and df[EN].iat[i] is None
            out[i].append(f"empty: {EN}" + (" (null)" if null else ""))
        if not texts.zh_norm[i]:
            null = not texts.raw_zh[i] and df[ZH].iat[i] is None
            out[i].append(f"empty: {ZH}" + (" (null)" if null else ""))


def _script(texts: _Texts, allow: set[str], min_cjk_ratio: float, out: list[list[str]]) -> None:
    """Chinese side: :func:`script_reasons`; English side: U+FFFD and Latin-1 mojibake."""
    script_of: dict[tuple[str, str], list[str]] = {}
    for i, (raw_zh, zh_norm) in enumerate(zip(texts.raw_zh, texts.zh_norm, strict=True)):
        if zh_norm:
            key = (raw_zh, zh_norm)
            got = script_of.get(key)
            if got is None:
                got = script_of[key] = script_reasons(raw_zh, zh_norm, allow, min_cjk_ratio)
            out[i].extend(got)
        out[i].extend(english_script_reasons(texts.raw_en[i]))


def _controls(texts: _Texts, out: list[list[str]]) -> None:
    """Control and format characters on either side, as given (each distinct text once)."""
    for raw, column in ((texts.raw_en, EN), (texts.raw_zh, ZH)):
        for i, why in enumerate(_unique_map(raw, lambda t, c=column: control_reason(t, c))):
            if why:
                out[i].append(why)


def _too_long(texts: _Texts, cfg: CheckConfig, out: list[list[str]]) -> None:
    """Either side longer than its language's maximum in characters (as given)."""
    for raw, column, limit, option in ((texts.raw_en, EN, cfg.max_chars_en, "--max-chars-en"),
                                       (texts.raw_zh, ZH, cfg.max_chars_zh, "--max-chars-zh")):
        for i, text in enumerate(raw):
            if len(text) > limit:
                out[i].append(too_long_reason(text, column, limit, option))


def _meaning(texts: _Texts, lexicon: Lexicon, out: list[list[str]]) -> None:
    """Lexicon concepts of each side, compared once per distinct pair of concept sets."""
    en_c = _unique_map([" ".join(t) for t in texts.en_toks],
                       lambda s: lexicon.en_concepts(s.split()))
    zh_c = _unique_map(texts.zh_norm, lexicon.zh_concepts)
    cmp_cache: dict = {}
    for i in range(len(out)):
        if not (texts.en_norm[i] and texts.zh_norm[i]):
            continue
        key = (en_c[i], zh_c[i])
        got = cmp_cache.get(key)
        if got is None:
            got = cmp_cache[key] = lexicon.compare(*key)
        out[i].extend(got)


def _duplicates(df: pd.DataFrame, texts: _Texts, out: list[list[str]]) -> None:
    """Same zh text, different en text, different objects, same image: every row of the group."""
    dup = pd.DataFrame({"dataset": df["dataset"].astype(object).fillna(""),
                        "image_id": df["image_id"].astype(object).fillna(-1),
                        "zh": texts.zh_norm, "en": [e.lower() for e in texts.en_norm],
                        "ann": df["ann_id"].astype(object).fillna(-1)})
    dup = dup[dup["zh"] != ""]
    g = dup.groupby(["dataset", "image_id", "zh"], sort=False)
    flagged = dup[(g["ann"].transform("nunique") > 1) & (g["en"].transform("nunique") > 1)]
    if not len(flagged):
        return
    anns = flagged.groupby(["dataset", "image_id", "zh"], sort=False)["ann"].agg(
        lambda s: sorted(set(s)))
    for i, row in flagged.iterrows():
        others = [a for a in anns[(row["dataset"], row["image_id"], row["zh"])] if a != row["ann"]]
        out[i].append(
            f"same zh text {row['zh']!r} for other objects of image {row['image_id']} "
            f"(ann_id {', '.join(map(str, others[:5]))}) with different English")
