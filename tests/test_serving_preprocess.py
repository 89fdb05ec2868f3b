"""The registered model's preprocessing (components/serving/predictor.py ``Preprocess``): the
pixel convention and the resize mode come from the checkpoint's config when the pyfunc is logged,
a preprocess.json that disagrees with the checkpoint is refused, an old one without them takes
the checkpoint's. Budget: a few seconds (a tiny network, the session's tokenize output)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.errors import CheckpointError
from components.serving.predictor import PREPROCESS_FORMAT, Preprocess, RefSegPredictor
from model import build_model, load_config, save_checkpoint


@pytest.fixture(scope="module")
def pad_checkpoint(data_dir, tmp_path_factory):
    vocab = json.loads((data_dir / "vocab_zh.json").read_text(encoding="utf-8"))
    cfg = load_config("small", dict(input_size=32, backbone_widths=[8, 8, 16, 16], c_v=16,
                                    c_l=16, c_m=16, embed_dim=16, convlstm_hidden=8,
                                    le_reduction=4, mutan_rank=2, resize="pad"))
    path = tmp_path_factory.mktemp("pad-model") / "best.pt"
    save_checkpoint(str(path), build_model(cfg, len(vocab)), cfg, {"lang": "zh"})
    return str(path)


def test_logged_preprocess_carries_pixels_and_resize(pad_checkpoint, data_dir, tmp_path):
    from components.serving.pyfunc import pyfunc_kwargs

    kw = pyfunc_kwargs(pad_checkpoint, str(data_dir), "zh", str(tmp_path / "work"))
    d = json.loads(open(kw["artifacts"]["preprocess"], encoding="utf-8").read())
    assert (d["pixels"], d["resize"], d["input_size"]) == ("imagenet_rgb", "pad", 32)
    pred = RefSegPredictor(pad_checkpoint, str(data_dir),
                           Preprocess.read(kw["artifacts"]["preprocess"]))
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 70, 3), 128, np.uint8)).save(buf, format="PNG")
    out = pred.predict_frame(pd.DataFrame({"image": [buf.getvalue()], "text": ["左边的红色圆"]}))
    assert json.loads(out["mask_rle"][0])["size"] == [30, 70]


def test_disagreeing_preprocess_is_refused_and_old_files_take_the_checkpoints(
        pad_checkpoint, data_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"preprocess resize 'stretch' differs from the "
                                              r"checkpoint's 'pad'"):
        RefSegPredictor(pad_checkpoint, str(data_dir),
                        Preprocess("zh", 32, pixels="imagenet_rgb", resize="stretch"))
    with pytest.raises(CheckpointError, match=r"pixels 'caffe_bgr' differs .* 'imagenet_rgb'"):
        RefSegPredictor(pad_checkpoint, str(data_dir), Preprocess("zh", 32, pixels="caffe_bgr"))
    old = tmp_path / "preprocess.json"
    old.write_text(json.dumps({"format": PREPROCESS_FORMAT, "lang": "zh", "input_size": 32,
                               "threshold": 0.4}), encoding="utf-8")
    pre = Preprocess.read(str(old))
    assert (pre.pixels, pre.resize) == (None, None)
    pred = RefSegPredictor(pad_checkpoint, str(data_dir), pre)
    assert (pred.preprocess.pixels, pred.preprocess.resize, pred.preprocess.threshold) == (
        "imagenet_rgb", "pad", 0.4)
