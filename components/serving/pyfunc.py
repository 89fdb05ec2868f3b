"""The registered model: an MLflow pyfunc that goes from raw inputs (an encoded image and an
expression) to a binary mask at the image's original size (columns: see
:mod:`components.serving.predictor`).

Artifacts carried by the model (``context.artifacts`` keys):
  ``checkpoint``  the network (``model.save_checkpoint`` file, read with ``weights_only=True``),
  ``tokenizer``   the tokenizer folder of the training run (vocabulary, tokenizer.json, jieba user
                  dictionary) read by :func:`components.text.tokenizer.load_tokenizer`,
  ``preprocess``  ``preprocess.json``: the model's language, input size, default threshold, pixel
                  convention and resize mode (the last two from the checkpoint's config).
The model's ``code/`` folder (``code_paths``) holds the ``model`` package and only the modules of
``components`` that serving imports (:data:`SERVING_CODE`), so a fresh process with the
dependencies installed loads it without this repository.

Inference parameter: ``threshold`` (probability cut, default from preprocess.json, 0.5).
Model config (``mlflow.pyfunc.load_model(uri, model_config={"max_pixels": N})``): ``max_pixels``,
the largest image served (width x height); logged as None: ``$REFSEG_MAX_PIXELS``, else 50 M.
"""

from __future__ import annotations

import io
import os
import shutil
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from components.logs import get_logger

ENTRY_SCRIPT = (
    '"""bilingual-refseg pyfunc entry point (MLflow models from code)."""\n'
    "import mlflow\n\n"
    "from components.serving.pyfunc import RefSegPyfuncModel\n\n"
    "mlflow.models.set_model(RefSegPyfuncModel())\n"
)
# What of ``components/`` a registered model ships (paths inside the package): serving, the
# tokenizer with jieba's user dictionary, the mask codec and the small shared pieces they import.
SERVING_CODE = (
    "__init__.py", "errors.py", "logs.py", "codec.py", "serving",
    "text/__init__.py", "text/zh.py", "text/tokenizer.py",
    "data/__init__.py", "data/storage.py", "data/userdict_zh.txt",
)
PIP_DISTRIBUTIONS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "jieba",
                     "pycocotools", "pyyaml")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp")


class RefSegPyfuncModel(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc`` wrapper; the network and tokenizer load once, in ``load_context``."""

    def load_context(self, context):
        from components.serving.predictor import Preprocess, RefSegPredictor
        from components.serving.requests import pixel_limit

        arts = context.artifacts
        pre = Preprocess.read(arts["preprocess"])
        device = os.environ.get("REFSEG_DEVICE") or None
        config = getattr(context, "model_config", None) or {}
        limit = pixel_limit(config.get("max_pixels"), "the model config's max_pixels")
        self._predictor = RefSegPredictor(arts["checkpoint"], arts["tokenizer"], pre, device,
                                          max_pixels=limit)
        get_logger("serve").debug("model %s loaded on %s", pre.lang, self._predictor.device)

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
                      ColSpec("string", "warning"), ColSpec("long", "words"),
                      ColSpec("long", "known_words")])
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
    """Copies of the ``model`` package and of the :data:`SERVING_CODE` part of ``components``
    (sources + package data only) under ``dst``: the model's ``code_paths``."""
    import components
    import model

    src = os.path.dirname(os.path.abspath(model.__file__))
    model_out = os.path.join(dst, os.path.basename(src))
    shutil.copytree(src, model_out, ignore=_IGNORE)
    root = os.path.dirname(os.path.abspath(components.__file__))
    comp_out = os.path.join(dst, os.path.basename(root))
    for rel in SERVING_CODE:
        path, out = os.path.join(root, rel), os.path.join(comp_out, rel)
        if os.path.isdir(path):
            shutil.copytree(path, out, ignore=_IGNORE)
        else:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copy2(path, out)
    return [model_out, comp_out]


def pip_requirements() -> list[str]:
    """Pinned from this environment (skips MLflow's slow requirement inference)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in PIP_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return reqs


def pyfunc_kwargs(checkpoint: str, tokenizer_dir: str, lang: str, workdir: str,
                  threshold: float = 0.5) -> dict[str, Any]:
    """Arguments shared by ``mlflow.pyfunc.log_model`` and ``save_model``. The tokenizer must be
    the checkpoint's (vocabulary size and fingerprint): a mismatched pair is never logged."""
    from components.serving.predictor import Preprocess, check_tokenizer
    from components.text.tokenizer import load_tokenizer
    from model.checkpoint import read_checkpoint

    payload = read_checkpoint(checkpoint)
    check_tokenizer(load_tokenizer(tokenizer_dir, lang), lang, payload["vocab_size"],
                    payload["extra"], checkpoint, tokenizer_dir)
    pre = Preprocess.of_config(lang, payload["config"], threshold)
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
        # None: $REFSEG_MAX_PIXELS or the default; a key must exist to be set when loading
        model_config={"max_pixels": None},
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
