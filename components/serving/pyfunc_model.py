"""The registered model: an MLflow pyfunc that goes from raw inputs (an encoded image and an
expression) to a binary mask at the image's original size.

Artifacts carried by the model (``context.artifacts`` keys):
  ``checkpoint``  the network (``model.save_checkpoint`` file, read with ``weights_only=True``),
  ``tokenizer``   the tokenizer folder of the training run (vocabulary, tokenizer.json, jieba user
                  dictionary) read by ``components.tokenize.load_tokenizer``,
  ``preprocess``  ``preprocess.json``: the model's language, input size and default threshold.
The code of the ``model`` and ``components`` packages travels in the model's ``code/`` folder
(``code_paths``), so a fresh process with the dependencies installed loads it without this
repository.

Input DataFrame: ``image`` (PNG/JPEG bytes, or the same as a base64 string, optionally a
``data:image/...;base64,`` URL), ``text``, optional ``lang`` (``zh``/``en``; detected when absent
or empty). Output DataFrame, one row per input row: ``mask_png`` (base64 1-bit PNG at the image's
size, EXIF orientation applied), ``mask_rle`` (JSON ``{"size": [h, w], "counts": "..."}``, COCO
compressed RLE), ``score`` (mean probability inside the mask, 0.0 for an empty mask), ``lang``
(the expression's language, given or detected), ``warning`` (empty, or why the result is
doubtful, e.g. an English expression sent to the Chinese model).
Inference parameter: ``threshold`` (probability cut, default from preprocess.json, 0.5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from components import codec, errors

PREPROCESS_FORMAT = "bilingual-refseg/pyfunc-v1"
LANGS = ("zh", "en")
OUTPUT_COLUMNS = ("mask_png", "mask_rle", "score", "lang", "warning")
ENTRY_SCRIPT = (
    '"""bilingual-refseg pyfunc entry point (MLflow models from code)."""\n'
    "import mlflow\n\n"
    "from components.serving.pyfunc_model import RefSegPyfuncModel\n\n"
    "mlflow.models.set_model(RefSegPyfuncModel())\n"
)


class InputError(errors.InputError):
    """A request row that cannot be served; the message names the row."""


# ------------------------------------------------------------------------------------------------
# Encoding helpers (shared with the predict CLI and the tests)
def decode_image(value: Any, row: int | str = "?") -> np.ndarray:
    """PNG/JPEG bytes or base64 text -> uint8 HxWx3 RGB (EXIF orientation applied)."""
    return decode_image_for(value, row)[0]


def decode_image_for(value: Any, row: int | str = "?", min_side: int | None = None
                     ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode for a network of input size ``min_side``: a JPEG at least twice that size is
    decoded at 1/2, 1/4 or 1/8 scale by the DCT (never below ``min_side``; the network resizes
    to min_side anyway). Returns (uint8 hxwx3, full (H, W) after EXIF orientation)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(value, memoryview | bytearray):
        value = bytes(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"row {row}: image is a string but not valid base64: {exc}") from exc
    if not isinstance(value, bytes) or not value:
        raise InputError(f"row {row}: image must be PNG/JPEG bytes or a base64 string, "
                         f"got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(value)) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            if min_side and im.format == "JPEG":
                im.draft("RGB", (int(min_side), int(min_side)))
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"row {row}: image cannot be decoded as PNG/JPEG: {exc}") from exc
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"row {row}: image has no pixels")
    full = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    if min_side is None or arr.shape[:2] == full:
        full = arr.shape[:2]
    return arr, (int(full[0]), int(full[1]))


encode_png = codec.encode_png
decode_mask_png = codec.decode_png
encode_rle = codec.encode_rle


# ------------------------------------------------------------------------------------------------
@dataclass
class Preprocess:
    lang: str
    input_size: int
    threshold: float = 0.5
    format: str = PREPROCESS_FORMAT

    @classmethod
    def read(cls, path: str) -> Preprocess:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
        if d.get("format") != PREPROCESS_FORMAT:
            raise ValueError(f"{path}: not a {PREPROCESS_FORMAT} preprocessing file")
        return cls(lang=str(d["lang"]), input_size=int(d["input_size"]),
                   threshold=float(d.get("threshold", 0.5)))

    def write(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.__dict__, fh, indent=2, sort_keys=True)
        return path


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _load_tokenizer(directory: str, lang: str):
    """``components.tokenize.load_tokenizer``; a training run's folder may hold only its own
    language's vocabulary while tokenizer.json lists both: then load that language alone."""
    from pathlib import Path

    from components import tokenize as tk

    try:
        return tk.load_tokenizer(directory)
    except FileNotFoundError:
        cfg_path = Path(directory, "tokenizer.json")
        vocab = Path(directory, f"vocab_{lang}.json")
        if not cfg_path.is_file():
            raise
        if not vocab.is_file():
            raise FileNotFoundError(f"{vocab}: the tokenizer folder lacks the {lang} "
                                    "vocabulary the model was trained with") from None
        config = {**json.loads(cfg_path.read_text(encoding="utf-8")), "langs": [lang]}
        ud = Path(directory, "userdict_zh.txt")
        return tk.Tokenizer(config, {lang: json.loads(vocab.read_text(encoding="utf-8"))},
                            str(ud) if ud.is_file() else None)


class RefSegPredictor:
    """Checkpoint + tokenizer + preprocessing, no MLflow: what the pyfunc and the CLI share."""

    def __init__(self, checkpoint: str, tokenizer_dir: str, preprocess: Preprocess | None = None,
                 device: str | None = None):
        from model import load_checkpoint, prepare_model, select_device

        net, cfg, extra = load_checkpoint(checkpoint)
        self.device = select_device(device)
        self.net = prepare_model(net, self.device).eval()
        self.cfg = cfg
        lang = (preprocess.lang if preprocess else None) or extra.get("lang")
        if lang not in LANGS:
            raise ValueError(f"checkpoint {checkpoint!r}: unknown model language {lang!r}; "
                             f"expected one of {LANGS}")
        self.preprocess = preprocess or Preprocess(lang=lang, input_size=cfg.input_size)
        if self.preprocess.input_size != cfg.input_size:
            raise ValueError(f"preprocess input_size {self.preprocess.input_size} differs from the "
                             f"checkpoint's {cfg.input_size}")
        self.tokenizer = _load_tokenizer(tokenizer_dir, self.preprocess.lang)

    @property
    def lang(self) -> str:
        return self.preprocess.lang

    # --------------------------------------------------------------------------------------------
    def detect_language(self, text: str) -> str:
        fn = getattr(self.tokenizer, "detect_language", None)
        if fn is None:
            from components.tokenize import detect_language as fn
        lang = fn(text)
        return lang if lang in LANGS else self.lang

    def tokens(self, text: str, lang: str, row: int | str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"row {row}: text is empty")
        ids, length = self.tokenizer.encode(text, lang)
        ids = [int(i) for i in list(ids)[: int(length)]]
        if not ids:
            raise InputError(f"row {row}: text {text[:60]!r} gives no tokens")
        return ids

    def probabilities(self, image: np.ndarray, token_lists: list[list[int]],
                      size: tuple[int, int] | None = None) -> np.ndarray:
        """float32 [K, H, W]; ``size`` = the full image size when ``image`` was decoded smaller."""
        import torch
        import torch.nn.functional as F

        from model import predict_batch

        prob = predict_batch(self.net, image, token_lists, self.device)
        if size is not None and tuple(prob.shape[1:]) != tuple(size):
            prob = F.interpolate(torch.from_numpy(prob)[:, None], size=tuple(size),
                                 mode="bilinear", align_corners=False)[:, 0].numpy()
        return prob

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
        images = list(df["image"])
        texts = list(df["text"])
        langs = list(df["lang"]) if "lang" in df.columns else [None] * n

        # Rows sharing the same image run through the backbone once (predict_batch).
        groups: dict[Any, list[int]] = {}
        decoded: dict[Any, tuple[np.ndarray, tuple[int, int]]] = {}
        row_lang: list[str] = []
        warnings: list[str] = []
        row_tokens: list[list[int]] = []
        for i in range(n):
            lang = langs[i]
            detected = _missing(lang)
            text = texts[i]
            if detected:
                lang = self.detect_language(text if isinstance(text, str) else "")
            lang = str(lang).strip().lower()
            if lang not in LANGS:
                raise InputError(f"row {i}: lang must be one of {LANGS}, got {langs[i]!r}")
            warn = ""
            if lang != self.lang:
                how = "detected" if detected else "given"
                warn = (f"expression language {lang} ({how}) differs from this model's "
                        f"({self.lang}): tokenized with the {self.lang} vocabulary; use the "
                        f"bilingual-refseg-{lang} model")
            row_tokens.append(self.tokens(text, self.lang, i))
            row_lang.append(lang)
            warnings.append(warn)
            raw = images[i]
            key = raw if isinstance(raw, bytes | str) else hashlib.sha1(repr(raw).encode()).digest()
            if key not in decoded:
                decoded[key] = decode_image_for(raw, i, self.cfg.input_size)
            groups.setdefault(key, []).append(i)

        pngs, rles, scores = [""] * n, [""] * n, [0.0] * n
        for key, rows in groups.items():
            img, full = decoded[key]
            probs = self.probabilities(img, [row_tokens[i] for i in rows], full)
            for i, prob in zip(rows, probs, strict=True):
                mask = prob >= thr
                scores[i] = float(prob[mask].mean()) if mask.any() else 0.0
                pngs[i] = base64.b64encode(encode_png(mask)).decode("ascii")
                rles[i] = json.dumps(encode_rle(mask), separators=(",", ":"))
        cols = dict(zip(OUTPUT_COLUMNS, (pngs, rles, scores, row_lang, warnings), strict=True))
        return pd.DataFrame(cols)


# ------------------------------------------------------------------------------------------------
class RefSegPyfuncModel(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc`` wrapper; the network and tokenizer load once, in ``load_context``."""

    def load_context(self, context):
        arts = context.artifacts
        pre = Preprocess.read(arts["preprocess"])
        device = os.environ.get("REFSEG_DEVICE") or None
        self._predictor = RefSegPredictor(arts["checkpoint"], arts["tokenizer"], pre, device)

    def predict(self, context, model_input, params=None):
        if not hasattr(self, "_predictor"):
            self.load_context(context)
        threshold = (params or {}).get("threshold")
        return self._predictor.predict_frame(model_input, threshold)


def model_signature():
    """Explicit schema: image is binary (REST clients send base64, MLflow decodes it)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("binary", "image"), ColSpec("string", "text"),
                     ColSpec("string", "lang", required=False)])
    outputs = Schema([ColSpec("string", "mask_png"), ColSpec("string", "mask_rle"),
                      ColSpec("double", "score"), ColSpec("string", "lang"),
                      ColSpec("string", "warning")])
    params = ParamSchema([ParamSpec("threshold", "double", 0.5)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_input(lang: str) -> pd.DataFrame:
    """A tiny synthetic request: a 48x64 PNG with a red square and one expression."""
    img = np.zeros((48, 64, 3), dtype=np.uint8)
    img[10:30, 8:28] = (220, 30, 30)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    text = "左边的红色方块" if lang == "zh" else "the red square on the left"
    return pd.DataFrame({"image": [buf.getvalue()], "text": [text], "lang": [lang]})


def code_folders(dst: str) -> list[str]:
    """Copies of the ``model`` and ``components`` packages (sources + package data only)."""
    import shutil

    import components
    import model

    paths = []
    for pkg in (model, components):
        src = os.path.dirname(os.path.abspath(pkg.__file__))
        out = os.path.join(dst, os.path.basename(src))
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp"))
        paths.append(out)
    return paths


def pip_requirements() -> list[str]:
    """Pinned from this environment (skips MLflow's slow requirement inference)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "jieba",
                 "pycocotools", "pyyaml"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return reqs


def pyfunc_kwargs(checkpoint: str, tokenizer_dir: str, lang: str, workdir: str,
                  threshold: float = 0.5) -> dict[str, Any]:
    """Arguments shared by ``mlflow.pyfunc.log_model`` and ``save_model``."""
    from model.checkpoint import read_checkpoint

    payload = read_checkpoint(checkpoint)
    pre = Preprocess(lang=lang, input_size=int(payload["config"]["input_size"]),
                     threshold=float(threshold))
    os.makedirs(workdir, exist_ok=True)
    pre_path = pre.write(os.path.join(workdir, "preprocess.json"))
    # Models from code: the model is rebuilt from this script at load time (nothing unpickled).
    entry = os.path.join(workdir, "refseg_pyfunc.py")
    with open(entry, "w", encoding="utf-8") as fh:
        fh.write(ENTRY_SCRIPT)
    return dict(
        python_model=entry,
        artifacts={"checkpoint": checkpoint, "tokenizer": tokenizer_dir, "preprocess": pre_path},
        code_paths=code_folders(os.path.join(workdir, "code")),
        signature=model_signature(),
        input_example=example_input(lang),
        pip_requirements=pip_requirements(),
    )


def log_pyfunc_model(checkpoint: str, tokenizer_dir: str, lang: str, workdir: str,
                     name: str = "model", threshold: float = 0.5, tags: dict | None = None):
    """Log the pyfunc into the active run; returns MLflow's ``ModelInfo``."""
    kw = pyfunc_kwargs(checkpoint, tokenizer_dir, lang, workdir, threshold)
    return mlflow.pyfunc.log_model(name=name, tags=tags, **kw)


def save_pyfunc_model(path: str, checkpoint: str, tokenizer_dir: str, lang: str, workdir: str,
                      threshold: float = 0.5) -> str:
    """Write the pyfunc to a local folder (no tracking server); returns ``path``."""
    mlflow.pyfunc.save_model(path, **pyfunc_kwargs(checkpoint, tokenizer_dir, lang, workdir,
                                                   threshold))
    return path
