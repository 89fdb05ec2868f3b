"""``refseg predict``: one image + one expression -> mask PNG, overlay PNG, score, language.

``--model`` is an MLflow model URI (``models:/bilingual-refseg-zh@champion``, ``runs:/...``,
``models:/m-...``) loaded through ``mlflow.pyfunc``, or a local checkpoint file (``best.pt``)
used directly with ``--tokenizer DIR`` (no MLflow server needed).
"""

from __future__ import annotations

import argparse
import os

from components.errors import ConfigError, MissingInputError
from components.logs import get_logger

log = get_logger("predict")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS (or any MLflow model URI), or a local checkpoint .pt")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder (required with a local checkpoint)")
    p.add_argument("--image", required=True, help="PNG/JPEG file")
    p.add_argument("--text", required=True, help="referring expression (Chinese or English)")
    p.add_argument("--lang", choices=("zh", "en"), default=None,
                   help="language of --text (default: detected)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold (default: the model's, 0.5)")
    p.add_argument("--out", default="mask.png",
                   help="mask PNG to write; the overlay goes next to it as <stem>.overlay.png")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")
    p.add_argument("--max-pixels", default=None, metavar="N",
                   help="refuse an image of more than N pixels (width x height), read from its "
                        "header before decoding (default $REFSEG_MAX_PIXELS, else 50000000)")


def overlay_path(out: str) -> str:
    stem, _ = os.path.splitext(out)
    return f"{stem}.overlay.png"


def make_overlay(image, mask, color=(255, 0, 64), alpha=0.5, strip_rows=512, inplace=False):
    """uint8 HxWx3 image and HxW 0/1 mask -> uint8 HxWx3 with the mask tinted and outlined.
    Blended ``strip_rows`` rows at a time: no full-size float copy of the image; ``inplace``:
    drawn on ``image`` itself (a writable uint8 array), no copy at all."""
    import numpy as np

    img = np.asarray(image)
    m = np.asarray(mask).astype(bool, copy=False)
    # 1-pixel outline: mask pixels with a non-mask 4-neighbour.
    pad = np.pad(m, 1, constant_values=False)
    edge = m & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    del pad
    tint = np.asarray(color, dtype=np.float32)
    out = img if inplace else np.array(img, dtype=np.uint8)
    for top in range(0, out.shape[0], strip_rows):
        rows = slice(top, top + strip_rows)
        sm, part = m[rows], out[rows]
        blend = (1 - alpha) * part[sm].astype(np.float32) + alpha * tint
        part[sm] = blend.clip(0, 255).astype(np.uint8)
        part[edge[rows]] = color
    return out


def _is_uri(model: str) -> bool:
    """``scheme:/...`` (models:/, runs:/, s3://, ...), not a local path."""
    scheme, sep, _ = model.partition(":/")
    return bool(sep) and len(scheme) > 1 and scheme.replace("-", "").isalnum()


def _is_local_checkpoint(model: str) -> bool:
    return os.path.isfile(model) and not model.startswith(("models:/", "runs:/"))


class _LocalModel:
    """A local checkpoint behind the pyfunc's ``predict(DataFrame, params=...)``."""

    def __init__(self, checkpoint: str, tokenizer: str, max_pixels: int | None = None):
        from components.serving.predictor import RefSegPredictor

        self.predictor = RefSegPredictor(checkpoint, tokenizer, max_pixels=max_pixels)

    def predict(self, df, params=None):
        return self.predictor.predict_frame(df, (params or {}).get("threshold"))


def load_model(model: str, tokenizer: str | None = None, tracking_uri: str | None = None,
               max_pixels: int | None = None):
    """Something with ``.predict(DataFrame, params=...)`` returning the pyfunc's output frame.
    ``max_pixels``: the model's pixel limit (default: its own, ``$REFSEG_MAX_PIXELS`` or 50 M)."""
    if _is_local_checkpoint(model):
        if not tokenizer:
            raise ConfigError(f"--model {model} is a local checkpoint: pass --tokenizer DIR "
                              "(the training run's tokenizer/ folder)")
        log.info("local checkpoint %s, tokenizer %s", model, tokenizer)
        return _LocalModel(model, tokenizer, max_pixels)
    if not _is_uri(model) and not os.path.exists(model):
        raise MissingInputError(f"--model {model}: no such file, folder or model URI")
    _check_models_uri(model)
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    log.info("loading %s", model)
    # a model logged before max_pixels existed has no model config (the CLI checks the header)
    config = {"max_pixels": max_pixels} if max_pixels is not None else None
    try:
        return mlflow.pyfunc.load_model(model, model_config=config)
    except MlflowException as exc:
        # an unknown model, version, run or alias (sqlite stores say INVALID_PARAMETER_VALUE
        # for a missing alias); any other failure is not the user's
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        why = exc.message.strip().splitlines()[0] if exc.message.strip() else exc.error_code
        raise MissingInputError(f"--model {model}: not found ({why}){_aliases_hint(model)}"
                                ) from None


def _check_models_uri(model: str) -> None:
    """``models:/`` must be followed by NAME@ALIAS, NAME/VERSION (or stage, latest) or a logged
    model id: anything else is a ConfigError before MLflow is asked."""
    if not model.startswith("models:/"):
        return
    rest = model[len("models:/"):]
    name = rest.partition("@")[0].partition("/")[0]
    if not name or rest.endswith(("@", "/")) or rest.count("@") > 1:
        raise ConfigError(f"--model {model}: expected models:/NAME@ALIAS (e.g. "
                          "models:/bilingual-refseg-zh@champion), models:/NAME/VERSION or "
                          "models:/m-<logged model id>")


def _aliases_hint(model: str) -> str:
    """For ``models:/NAME@ALIAS``: the aliases NAME has (or that it is not registered)."""
    if not model.startswith("models:/") or "@" not in model:
        return ""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = model[len("models:/"):].partition("@")[0]
    try:
        aliases = sorted((MlflowClient().get_registered_model(name).aliases or {}).keys())
    except MlflowException:
        return f"; no registered model {name!r}"
    return f"; {name} has aliases: {', '.join(aliases) if aliases else 'none'}"


def run(args) -> int:
    import numpy as np
    import pandas as pd
    from PIL import Image

    from components.codec import decode_png
    from components.serving.requests import decode_image, image_size, pixel_limit

    if not os.path.isfile(args.image):
        raise MissingInputError(f"--image {args.image}: no such file")
    limit = pixel_limit(args.max_pixels, "--max-pixels")
    with open(args.image, "rb") as fh:
        raw = fh.read()
    where = f"--image {args.image}"
    size = image_size(raw, where, limit)  # the header alone: refused before the model loads
    df = pd.DataFrame({"image": [raw], "text": [args.text], "lang": [args.lang]})
    if args.lang is None:
        df = df.drop(columns=["lang"])
    model = load_model(args.model, args.tokenizer, args.tracking_uri,
                       limit.pixels if args.max_pixels is not None else None)
    params = {"threshold": float(args.threshold)} if args.threshold is not None else None
    res = model.predict(df, params=params).iloc[0]
    del df
    mask = decode_png(res["mask_png"])
    if mask.shape != size:
        raise RuntimeError(f"mask {mask.shape} does not match the image {size}")
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(mask * np.uint8(255)).save(args.out)
    ov = overlay_path(args.out)
    # the full-size image only now, after the network has run
    Image.fromarray(make_overlay(decode_image(raw, where, limit), mask, inplace=True)).save(ov)
    print(f"lang: {res['lang']}")
    print(f"score: {float(res['score']):.4f}")
    print(f"mask: {args.out} ({int(mask.sum())} of {mask.size} pixels)")
    print(f"overlay: {ov}")
    if res.get("warning"):
        log.warning("%s", res["warning"])
    return 0
