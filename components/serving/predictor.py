"""The predictor: a checkpoint, its tokenizer and its preprocessing, without MLflow. The pyfunc
(:mod:`components.serving.pyfunc`) and ``refseg predict`` with a local checkpoint both run it.

Input DataFrame: ``image`` (PNG/JPEG bytes, or the same as a base64 string, optionally a
``data:image/...;base64,`` URL), ``text``, optional ``lang`` (``zh``/``en``; detected when absent
or empty). Output DataFrame, one row per input row: ``mask_png`` (base64 1-bit PNG at the image's
size, EXIF orientation applied), ``mask_rle`` (JSON ``{"size": [h, w], "counts": "..."}``, COCO
compressed RLE), ``score`` (mean probability inside the mask, 0.0 for an empty mask), ``lang``
(the expression's language, given or detected), ``warning`` (empty, or why the result is
doubtful, e.g. an English expression sent to the Chinese model, or an expression none of whose
words the model knows; several are joined with "; "), ``words`` (how many words the expression
gives the network) and ``known_words`` (how many of them are in the model's vocabulary).

An image is opened once, by :func:`~components.serving.requests.decode_image_for`: over the
pixel limit (``max_pixels``, else ``$REFSEG_MAX_PIXELS``, else 50 M) it is refused from its
header; a large one is decoded at reduced scale, and the full-size mask is thresholded strip by
strip from the small probability map, so no full-size float array exists.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components import codec
from components.errors import CheckpointError
from components.serving import model_name
from components.serving.requests import (
    InputError,
    PixelLimit,
    decode_image_for,
    is_missing,
    pixel_limit,
)
from components.text.tokenizer import (
    LANGS,
    UNK,
    check_vocab_fingerprint,
    detect_language,
    load_tokenizer,
)
from model import ModelConfig, load_checkpoint, predict_batch, prepare_model, select_device
from model.pixels import convention_of

PREPROCESS_FORMAT = "bilingual-refseg/pyfunc-v1"
_SOURCE = {"input_size": "input_size", "pixels": "backbone_format", "resize": "resize"}
OUTPUT_COLUMNS = ("mask_png", "mask_rle", "score", "lang", "warning", "words", "known_words")
# Output pixels per strip when a small probability map is brought to the image's size (4 MB of
# float32): the full-size mask is built strip by strip.
STRIP_PIXELS = 1 << 20


@dataclass
class Preprocess:
    """``preprocess.json`` of a registered model: its language, input size, default threshold,
    pixel convention (``imagenet_rgb``/``caffe_bgr``, model/pixels.py) and resize mode
    (``stretch``/``pad``, model/geometry.py). The last two are read from the checkpoint's config
    when the model is logged; a file written before they existed lacks them (None): the
    checkpoint's values apply."""

    lang: str
    input_size: int
    threshold: float = 0.5
    format: str = PREPROCESS_FORMAT
    pixels: str | None = None
    resize: str | None = None

    @classmethod
    def of_config(cls, lang: str, config: dict[str, Any], threshold: float = 0.5) -> Preprocess:
        """The preprocessing of a checkpoint's config dict."""
        cfg = ModelConfig.from_dict(config)
        return cls(lang=lang, input_size=int(cfg.input_size), threshold=float(threshold),
                   pixels=convention_of(cfg.backbone_format), resize=cfg.resize)

    @classmethod
    def read(cls, path: str) -> Preprocess:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
        if d.get("format") != PREPROCESS_FORMAT:
            raise CheckpointError(f"{path}: not a {PREPROCESS_FORMAT} preprocessing file")
        return cls(lang=str(d["lang"]), input_size=int(d["input_size"]),
                   threshold=float(d.get("threshold", 0.5)), pixels=d.get("pixels"),
                   resize=d.get("resize"))

    def check(self, cfg: ModelConfig, checkpoint: str) -> Preprocess:
        """This preprocessing with the checkpoint's values where it has none; a value that
        differs from the checkpoint's config is a CheckpointError naming both."""
        own = {"input_size": int(cfg.input_size), "pixels": convention_of(cfg.backbone_format),
               "resize": cfg.resize}
        for key, theirs in own.items():
            mine = getattr(self, key)
            if mine is None:
                setattr(self, key, theirs)
            elif mine != theirs:
                raise CheckpointError(f"preprocess {key} {mine!r} differs from the checkpoint's "
                                      f"{theirs!r} ({checkpoint}: {_SOURCE[key]})")
        return self

    def write(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.__dict__, fh, indent=2, sort_keys=True)
        return path


@dataclass
class Expression:
    """An expression as the network reads it: ``ids`` (a lone ``<unk>`` when the text gives no
    word), how many ``words`` it gives (after the length cut) and how many of them are ``known``
    (in the vocabulary)."""

    ids: list[int]
    words: int
    known: int
    unknown: list[str] = field(default_factory=list)

    def warning(self, lang: str) -> str:
        """Why the mask cannot follow the text ("" when some word is known)."""
        if self.words == 0:
            return ("the expression gives no words (punctuation or symbols only): the mask "
                    "does not depend on the text")
        if self.known == 0:
            shown = ", ".join(repr(w) for w in self.unknown[:5])
            more = f" and {len(self.unknown) - 5} more" if len(self.unknown) > 5 else ""
            which = ("its only word" if self.words == 1
                     else f"none of its {self.words} words")
            return (f"the model's {lang} vocabulary knows {which} ({shown}{more}): the mask "
                    "does not depend on the text")
        return ""


def _source_index(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resampling from ``n_in`` to ``n_out`` samples as torch's ``align_corners=False``:
    for each output index the two input indices and the weight of the second."""
    src = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5
    src = np.maximum(src, 0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def mask_and_score(prob: np.ndarray, size: tuple[int, int], threshold: float
                   ) -> tuple[np.ndarray, float]:
    """The bool mask ``bilinear(prob) >= threshold`` at ``size`` (H, W) from a float [h, w]
    probability map, and the mean upsampled probability inside it (0.0 when empty). Rows are
    upsampled :data:`STRIP_PIXELS` at a time: the only full-size array is the mask itself."""
    h, w = prob.shape
    out_h, out_w = int(size[0]), int(size[1])
    if (h, w) != (out_h, out_w):
        c0, c1, cw = _source_index(w, out_w)
        cols = prob[:, c0] * (1 - cw) + prob[:, c1] * cw  # [h, W]: the small map, widened
        r0, r1, rw = _source_index(h, out_h)
    mask = np.empty((out_h, out_w), dtype=bool)
    inside = 0.0
    step = max(1, STRIP_PIXELS // max(out_w, 1))
    for top in range(0, out_h, step):
        rows = slice(top, min(out_h, top + step))
        if (h, w) == (out_h, out_w):
            strip = prob[rows]
        else:
            wr = rw[rows, None]
            strip = cols[r0[rows]] * (1 - wr) + cols[r1[rows]] * wr
        mask[rows] = strip >= threshold
        inside += float(strip[mask[rows]].sum(dtype=np.float64))
    n = int(np.count_nonzero(mask))
    return mask, (inside / n if n else 0.0)


def check_tokenizer(tokenizer, lang: str, vocab_size: int, extra: dict, checkpoint: str,
                    tokenizer_dir: str) -> None:
    """The tokenizer's vocabulary of ``lang`` is the one the checkpoint was trained on: its size
    (else ids past the embedding), then its fingerprint (same size, other words: wrong masks)."""
    vocab = tokenizer.vocabs[lang]
    source = f"tokenizer {tokenizer_dir}"
    if len(vocab) != int(vocab_size):
        raise InputError(f"checkpoint {checkpoint} has a vocabulary of {vocab_size} tokens but "
                         f"{source} has {len(vocab)} ({lang}): not the tokenizer this model was "
                         "trained with")
    check_vocab_fingerprint(extra, vocab, checkpoint, source)


class RefSegPredictor:
    """Checkpoint + tokenizer + preprocessing, no MLflow: what the pyfunc and the CLI share."""

    def __init__(self, checkpoint: str, tokenizer_dir: str, preprocess: Preprocess | None = None,
                 device: str | None = None, max_pixels: int | str | PixelLimit | None = None):
        """``max_pixels``: the largest image served (width x height); default
        ``$REFSEG_MAX_PIXELS``, else 50,000,000 (:func:`components.serving.requests.pixel_limit`)."""
        self.pixel_limit = (max_pixels if isinstance(max_pixels, PixelLimit)
                            else pixel_limit(max_pixels))
        net, cfg, extra = load_checkpoint(checkpoint)
        self.device = select_device(device)
        self.net = prepare_model(net, self.device).eval()
        self.cfg = cfg
        lang = (preprocess.lang if preprocess else None) or extra.get("lang")
        if lang not in LANGS:
            raise CheckpointError(f"checkpoint {checkpoint!r}: unknown model language {lang!r}; "
                                  f"expected one of {LANGS}")
        self.preprocess = (preprocess or Preprocess(lang=lang, input_size=cfg.input_size)
                           ).check(cfg, checkpoint)
        # A training run's folder holds its own language's vocabulary: load that one alone.
        self.tokenizer = load_tokenizer(tokenizer_dir, self.preprocess.lang)
        check_tokenizer(self.tokenizer, self.preprocess.lang, net.vocab_size, extra, checkpoint,
                        tokenizer_dir)

    @property
    def lang(self) -> str:
        return self.preprocess.lang

    # --------------------------------------------------------------------------------------------
    def detect_language(self, text: str) -> str:
        lang = detect_language(text)
        return lang if lang in LANGS else self.lang

    def expression(self, text: str, lang: str, row: int | str) -> Expression:
        """The expression's token ids and how many of its words the vocabulary knows; blank text
        is an InputError, text that gives no word is read as one ``<unk>``."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"row {row}: text is empty")
        ids, length = self.tokenizer.encode(text, lang)
        ids = [int(i) for i in list(ids)[: int(length)]]
        unk = self.tokenizer.stoi[lang].get(UNK, 1)
        if not ids:
            return Expression([unk], 0, 0)
        known = sum(i != unk for i in ids)
        # the words themselves only for the warning (a second segmentation, rare)
        unknown = [] if known else self.tokenizer.tokens(text, lang)[: len(ids)]
        return Expression(ids, len(ids), known, unknown)

    def tokens(self, text: str, lang: str, row: int | str) -> list[int]:
        return self.expression(text, lang, row).ids

    def probabilities(self, image: np.ndarray, token_lists: list[list[int]],
                      size: tuple[int, int] | None = None) -> np.ndarray:
        """float32 [K, H, W]; ``size`` = the full image size when ``image`` was decoded smaller."""
        prob = predict_batch(self.net, image, token_lists, self.device)
        if size is not None and tuple(prob.shape[1:]) != tuple(size):
            prob = F.interpolate(torch.from_numpy(prob)[:, None], size=tuple(size),
                                 mode="bilinear", align_corners=False)[:, 0].numpy()
        return prob

    def row_language(self, given: Any, text: Any, row: int) -> tuple[str, str]:
        """(the row's language, a warning or ""): given, else detected from the text."""
        detected = is_missing(given)
        lang = self.detect_language(text if isinstance(text, str) else "") if detected else given
        lang = str(lang).strip().lower()
        if lang not in LANGS:
            raise InputError(f"row {row}: lang must be one of {LANGS}, got {given!r}")
        if lang == self.lang:
            return lang, ""
        how = "detected" if detected else "given"
        return lang, (f"expression language {lang} ({how}) differs from this model's "
                      f"({self.lang}): tokenized with the {self.lang} vocabulary; use the "
                      f"{model_name(lang)} model")

    # --------------------------------------------------------------------------------------------
    def predict_frame(self, df: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
        if not isinstance(df, pd.DataFrame):
            df = pd.DataFrame(df)
        missing = [c for c in ("image", "text") if c not in df.columns]
        if missing:
            raise InputError(f"input lacks column(s) {missing}; expected image, text[, lang]")
        thr = float(self.preprocess.threshold if threshold is None else threshold)
        if not 0.0 < thr < 1.0:
            raise InputError(f"threshold must lie in (0, 1), got {thr}")
        n = len(df)
        images, texts = list(df["image"]), list(df["text"])
        langs = list(df["lang"]) if "lang" in df.columns else [None] * n

        # Rows sharing the same image run through the backbone once (predict_batch).
        groups: dict[Any, list[int]] = {}
        decoded: dict[Any, tuple[np.ndarray, tuple[int, int]]] = {}
        row_lang, warnings, exprs = [], [], []
        for i in range(n):
            lang, warn = self.row_language(langs[i], texts[i], i)
            expr = self.expression(texts[i], self.lang, i)
            exprs.append(expr)
            row_lang.append(lang)
            warnings.append("; ".join(w for w in (warn, expr.warning(self.lang)) if w))
            raw = images[i]
            key = raw if isinstance(raw, bytes | str) else hashlib.sha1(repr(raw).encode()).digest()
            if key not in decoded:
                decoded[key] = decode_image_for(raw, i, self.cfg.input_size, self.pixel_limit)
            groups.setdefault(key, []).append(i)

        pngs, rles, scores = [""] * n, [""] * n, [0.0] * n
        for key, rows in groups.items():
            img, full = decoded.pop(key)
            probs = predict_batch(self.net, img, [exprs[i].ids for i in rows], self.device)
            for i, prob in zip(rows, probs, strict=True):
                mask, scores[i] = mask_and_score(prob, full, thr)
                pngs[i] = base64.b64encode(codec.encode_png(mask)).decode("ascii")
                rles[i] = json.dumps(codec.encode_rle(mask), separators=(",", ":"))
                del mask
        cols = dict(zip(OUTPUT_COLUMNS, (pngs, rles, scores, row_lang, warnings,
                                         [e.words for e in exprs], [e.known for e in exprs]),
                        strict=True))
        return pd.DataFrame(cols)
