"""A prediction's memory is bounded and a doubtful one says so (docs/reliability.md, "An image's
size is bounded"; docs/registry-and-serving.md): an image over the pixel limit is refused from
its header (CLI: one line, exit 1; pyfunc: the row named), Pillow's decompression-bomb refusal
reads the same, a large image is decoded at reduced scale with the mask still at its original
size, and an expression the vocabulary knows none of gets a warning (CLI stderr, the pyfunc's
``warning``, ``words`` and ``known_words`` columns). Budget: a few seconds (a tiny untrained
network, the session's tokenize output)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.codec import decode_png
from components.serving.requests import InputError
from pipelines.cli import main

ZH = "左边的红色方块"


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("refseg: error:")]
    assert len(lines) == 1 and err.rstrip().splitlines()[-1] == lines[0], err
    return lines[0]


def _scene(h: int, w: int, fmt: str, orientation: int = 1) -> bytes:
    """A smooth scene with a red square and a blue disc, encoded as ``fmt``."""
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([60 + 80 * yy // h, 90 + 60 * xx // w, np.full_like(yy, 110)], -1)
    img[h // 5: h // 2, w // 8: w // 3] = (220, 30, 30)
    img[(yy - 0.6 * h) ** 2 + (xx - 0.7 * w) ** 2 < (0.15 * min(h, w)) ** 2] = (30, 40, 210)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format=fmt, exif=exif,
                                               **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny(data_dir, tmp_path_factory):
    """A tiny untrained network (input 64 px) on the session's tokenize output: (checkpoint,
    tokenizer folder)."""
    from components.text.tokenizer import FINGERPRINT_KEY, vocab_fingerprint
    from model import build_model, load_config, save_checkpoint

    vocab = json.loads((Path(data_dir) / "vocab_zh.json").read_text(encoding="utf-8"))
    cfg = load_config("small", dict(input_size=64, backbone_widths=[8, 8, 16, 16], c_v=16,
                                    c_l=16, c_m=16, embed_dim=16, convlstm_hidden=8,
                                    le_reduction=4, mutan_rank=2, seed=3))
    path = tmp_path_factory.mktemp("limits-model") / "best.pt"
    save_checkpoint(str(path), build_model(cfg, len(vocab)), cfg,
                    {"lang": "zh", FINGERPRINT_KEY: vocab_fingerprint(vocab)})
    return str(path), str(data_dir)


@pytest.fixture(scope="module")
def pyfunc_artifacts(tiny, tmp_path_factory):
    """What a registered model carries (checkpoint, tokenizer, preprocess.json), for the pyfunc
    wrapper driven through MLflow's own context class (saving a model costs seconds; the saved
    model's load-time config is tested in a fresh process in test_register.py)."""
    from components.serving.predictor import Preprocess
    from model.checkpoint import read_checkpoint

    pre = Preprocess.of_config("zh", read_checkpoint(tiny[0])["config"])
    path = pre.write(str(tmp_path_factory.mktemp("limits-pyfunc") / "preprocess.json"))
    return {"checkpoint": tiny[0], "tokenizer": tiny[1], "preprocess": path}


def _pyfunc(artifacts: dict, max_pixels=None):
    """The registered model's wrapper loaded as MLflow loads it, with ``model_config``."""
    from mlflow.pyfunc import PythonModelContext

    from components.serving.pyfunc import RefSegPyfuncModel

    context = PythonModelContext(artifacts=artifacts, model_config={"max_pixels": max_pixels})
    model = RefSegPyfuncModel()
    model.load_context(context)
    return lambda df: model.predict(context, df)


# ------------------------------------------------------------------------------------------------
# the pixel limit
def test_cli_refuses_an_image_over_the_pixel_limit_in_one_line(tiny, tmp_path, capsys,
                                                               monkeypatch):
    image = tmp_path / "scene.png"
    image.write_bytes(_scene(40, 56, "PNG"))  # 2,240 pixels
    out = tmp_path / "mask.png"
    common = ["predict", "--model", tiny[0], "--tokenizer", tiny[1], "--image", str(image),
              "--text", ZH, "--out", str(out)]
    assert main([*common, "--max-pixels", "2000"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"refseg: error: --image {image}: image of 56x40 (2,240 pixels) is over the "
                    "limit of 2,000 pixels (set by --max-pixels or REFSEG_MAX_PIXELS)")
    assert not out.exists()
    monkeypatch.setenv("REFSEG_MAX_PIXELS", "2000")
    assert main(common) == 1
    assert "over the limit of 2,000 pixels" in _one_error_line(capsys.readouterr().err)
    assert main([*common, "--max-pixels", "lots"]) == 1  # the option wins over the variable
    assert _one_error_line(capsys.readouterr().err) == (
        "refseg: error: --max-pixels: expected a whole number of pixels >= 1 (e.g. 50000000), "
        "got 'lots'")
    assert not out.exists()
    assert main([*common, "--max-pixels", "2240"]) == 0  # the limit itself is allowed
    assert decode_png(out.read_bytes()).shape == (40, 56)


def test_pillows_decompression_bomb_refusal_is_the_same_one_line(tiny, tmp_path, capsys,
                                                                  monkeypatch):
    image = tmp_path / "bomb.png"
    image.write_bytes(_scene(40, 56, "PNG"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2,000 pixels
    rc = main(["predict", "--model", tiny[0], "--tokenizer", tiny[1], "--image", str(image),
               "--text", ZH, "--out", str(tmp_path / "mask.png")])
    assert rc == 1
    assert _one_error_line(capsys.readouterr().err) == (
        f"refseg: error: --image {image}: image of 2,240 pixels is over the limit of 2,000 "
        "pixels (Pillow's own limit; --max-pixels or REFSEG_MAX_PIXELS cannot raise it)")


def test_the_pyfunc_refuses_an_image_over_its_limit(pyfunc_artifacts, monkeypatch):
    df = pd.DataFrame({"image": [_scene(48, 64, "PNG"), _scene(40, 56, "PNG")],
                       "text": [ZH, ZH]})
    predict = _pyfunc(pyfunc_artifacts, max_pixels=3000)
    with pytest.raises(InputError) as err:
        predict(df)
    assert str(err.value) == ("row 0: image of 64x48 (3,072 pixels) is over the limit of 3,000 "
                              "pixels (set by the model config's max_pixels or REFSEG_MAX_PIXELS)")
    assert len(predict(df.iloc[1:])) == 1
    monkeypatch.setenv("REFSEG_MAX_PIXELS", "2000")  # read when the model loads
    with pytest.raises(InputError, match=r"row 0: image of 64x48 .* limit of 2,000 pixels"):
        _pyfunc(pyfunc_artifacts)(df)


# ------------------------------------------------------------------------------------------------
# reduced-scale decoding
@pytest.mark.parametrize("fmt,decoded", [("JPEG", (75, 100)), ("PNG", (67, 89))])
def test_a_large_image_is_decoded_small_and_its_mask_keeps_its_size(tiny, fmt, decoded):
    """JPEG: 1/8 scale by the DCT; PNG: box-reduced by 9; both sides stay >= the input size 64.
    Tolerance: the mask agrees with the full-scale decode's at IoU >= 0.98, at a threshold that
    halves the full-scale probability map (the network is untrained: its map is flat)."""
    from components.serving.predictor import RefSegPredictor
    from components.serving.requests import decode_image, decode_image_for

    pred = RefSegPredictor(*tiny, device="cpu")
    raw = _scene(600, 800, fmt)
    small, full = decode_image_for(raw, 0, 64)
    assert small.shape == (*decoded, 3) and full == (600, 800)
    prob = pred.probabilities(decode_image(raw), [pred.tokens(ZH, "zh", 0)])[0]
    thr = float(np.median(prob))
    out = pred.predict_frame(pd.DataFrame({"image": [raw], "text": [ZH]}), threshold=thr)
    mask, ref = decode_png(out["mask_png"][0]).astype(bool), prob >= thr
    assert mask.shape == (600, 800)
    assert (mask & ref).sum() / (mask | ref).sum() >= 0.98
    rotated = _scene(600, 800, fmt, orientation=6)  # stored landscape, shown portrait
    assert decode_image_for(rotated, 0, 64)[1] == (800, 600)
    out = pred.predict_frame(pd.DataFrame({"image": [rotated], "text": [ZH]}))
    assert json.loads(out["mask_rle"][0])["size"] == [800, 600]


# ------------------------------------------------------------------------------------------------
# an expression the vocabulary knows none of
def test_the_pyfunc_counts_known_words_and_warns_when_none_is(pyfunc_artifacts):
    png = _scene(40, 56, "PNG")
    out = _pyfunc(pyfunc_artifacts)(pd.DataFrame(
        {"image": [png] * 3, "text": [ZH, "xyzzy plugh", "。。！"], "lang": ["zh"] * 3}))
    assert list(out.columns) == ["mask_png", "mask_rle", "score", "lang", "warning", "words",
                                 "known_words"]
    assert 0 < out["known_words"][0] <= out["words"][0] == 4 and out["warning"][0] == ""
    assert (out["words"][1], out["known_words"][1]) == (2, 0)
    assert out["warning"][1] == ("the model's zh vocabulary knows none of its 2 words ('xyzzy', "
                                 "'plugh'): the mask does not depend on the text")
    assert (out["words"][2], out["known_words"][2]) == (0, 0)
    assert out["warning"][2] == ("the expression gives no words (punctuation or symbols only): "
                                 "the mask does not depend on the text")
    assert all(decode_png(m).shape == (40, 56) for m in out["mask_png"])


def test_the_cli_warns_on_stderr_and_still_writes_the_mask(tiny, tmp_path, capsys):
    image = tmp_path / "scene.png"
    image.write_bytes(_scene(40, 56, "PNG"))
    for text, why in (("xyzzy", "the model's zh vocabulary knows its only word ('xyzzy')"),
                      ("。。", "the expression gives no words")):
        out = tmp_path / f"{len(text)}.png"
        assert main(["predict", "--model", tiny[0], "--tokenizer", tiny[1], "--image",
                     str(image), "--text", text, "--lang", "zh", "--out", str(out)]) == 0
        cap = capsys.readouterr()
        warned = [x for x in cap.err.splitlines() if "warning" in x]
        assert len(warned) == 1 and warned[0].startswith(f"[predict] warning: {why}"), cap.err
        assert "score: " in cap.out and decode_png(out.read_bytes()).shape == (40, 56)
