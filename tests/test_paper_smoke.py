"""The paper's network end to end, small: the ``paper`` preset (DeepLab-ResNet-101 at output stride
8, three levels, MUTAN + LE + LA + CLAF + ConvLSTM at the paper's widths) at a 48 px input, with
fabricated DeepLab-format (Caffe-named) weights read from S3, trains a few steps in ``pair`` mode on
the synthetic set; its loss goes down; the checkpoint reloads with its preprocessing (the DeepLab
pixel convention, aspect-preserving pad) and the untouched frozen backbone; ``refseg evaluate`` and
``refseg predict`` run on it. Budget: about a minute on 2 CPU cores (a step of
the paper's widths costs seconds: 89 M trainable parameters)."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
import torch
from PIL import Image

from components.train import train
from model import load_checkpoint, load_config
from model.backbone import Backbone
from model.backbone_weights import remap_backbone_keys, to_caffe_keys

INPUT = 48
STEPS = 6


def _deeplab_file(path) -> dict[str, torch.Tensor]:
    """A random ResNet-101 in the DeepLab geometry, saved with Caffe names. The last batch norm
    of each block is scaled down (as a trained ResNet's are small) so that 33 random residual
    blocks do not blow the features up. Returns the state dict in torchvision names."""
    torch.manual_seed(0)
    body = Backbone(load_config("paper", {"input_size": INPUT})).body
    state = {k: v.clone() for k, v in body.state_dict().items()}
    for k, v in state.items():
        if k.endswith("bn3.weight"):
            v.mul_(0.1)
    torch.save(to_caffe_keys(state), path)
    return state


@pytest.fixture()
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_paper_network_trains_reloads_evaluates_and_predicts(data_dir, s3_bucket, s3_endpoint,
                                                             tmp_path, sqlite_uri, monkeypatch,
                                                             capsys):
    import mlflow

    from components.evaluate import evaluate
    from pipelines.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    local = tmp_path / "deeplab_resnet101_voc.pth"
    state = _deeplab_file(local)
    uri = f"{s3_bucket}/weights/{local.name}"
    bucket, key = uri[len("s3://"):].split("/", 1)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").upload_file(
        str(local), bucket, key)

    # ---- train: pair mode, two pairs a step, validation at the end -----------------------------
    out = tmp_path / "run"
    s = train(str(data_dir), "en", "paper", str(out), steps=STEPS, seed=0, tracking_uri=sqlite_uri,
              overrides={"input_size": INPUT, "backbone_weights": uri, "batch_size": 2,
                         "val_every": STEPS, "val_max_images": 2, "log_every": 1,
                         "num_workers": 0})
    assert (s["batching"], s["steps"]) == ("pair", STEPS)
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri)
    loss = [m.value for m in sorted(client.get_metric_history(s["run_id"], "loss"),
                                    key=lambda m: m.step)]
    assert len(loss) == STEPS and np.isfinite(loss).all()
    # the first step starts from ln 2 (every pixel at 0.5); a few steps learn the background
    assert loss[0] == pytest.approx(np.log(2), abs=0.05) and np.mean(loss[-3:]) < 0.8 * loss[0], loss

    # ---- the checkpoint carries its preprocessing and the frozen backbone as it was loaded -----
    best = out / "checkpoints" / "best.pt"
    model, cfg, extra = load_checkpoint(str(best))
    assert (cfg.backbone, cfg.backbone_format, cfg.resize) == ("resnet101", "deeplab", "pad")
    assert cfg.backbone_weights == uri and cfg.levels == ["res3", "res4", "res5"]
    assert (cfg.c_v, cfg.c_m, cfg.convlstm_hidden, cfg.convlstm_on, cfg.use_claf) == (
        1000, 1000, 500, True, True)
    loaded = model.backbone.body.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert remap_backbone_keys(torch.load(local, weights_only=True)).keys() >= state.keys()

    # ---- evaluate every split, and predict on a non-square image -------------------------------
    doc = evaluate(str(best), str(data_dir), out_dir=str(tmp_path / "eval"), crf=False,
                   max_samples=4, report=False, log_mlflow=False)
    assert doc["splits"][0] == "val" and "gate_overall_iou" in doc["metrics"]
    assert all(0.0 <= doc["metrics"][f"{sp}_overall_iou"] <= 1.0 for sp in doc["splits"])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["lang"] == "en" and set(results["splits"]) == set(doc["splits"])

    image = tmp_path / "wide.png"
    Image.new("RGB", (90, 50), (40, 160, 40)).save(image)
    mask = tmp_path / "mask.png"
    capsys.readouterr()
    assert main(["predict", "--model", str(best), "--tokenizer", str(out / "tokenizer"),
                 "--image", str(image), "--text", "the green square", "--lang", "en",
                 "--out", str(mask)]) == 0
    assert "score: " in capsys.readouterr().out
    assert np.asarray(Image.open(mask)).shape == (50, 90)
