"""How an image sits in the network's input (model/geometry.py, ``resize: stretch | pad``) and how
predictions come back: shapes on non-square images, the padding colour, crop-back, ``predict`` at
the image size, ``stretch`` unchanged, and the training dataset under ``pad``. Budget: a few
seconds."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from components.data import manifest as mf
from components.data.refdata import RefDataset
from components.evaluation.evaluator import upsample_probs
from model import build_model, load_config, predict_batch
from model.geometry import InputFit
from model.inference import _image_tensor
from model.pixels import CAFFE_BGR, CONVENTIONS, IMAGENET_RGB, normalise, pad_colour

torch.set_num_threads(2)
S = 64


def ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - 0.55 * h) / (0.3 * h)) ** 2 + ((xx - 0.4 * w) / (0.25 * w)) ** 2 < 1
            ).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("h,w,region", [(60, 100, (38, 64)), (100, 60, (64, 38))])
@pytest.mark.parametrize("pixels", CONVENTIONS)
def test_pad_keeps_the_aspect_ratio_and_pads_with_the_mean(h, w, region, pixels):
    fit = InputFit(S, "pad", pixels)
    assert fit.region(h, w) == region
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    out = fit.image(x)
    assert out.shape == (1, 3, S, S)
    rh, rw = region
    ref = F.interpolate(x, size=region, mode="bilinear", align_corners=False,
                        antialias=True).clamp_(0, 1)
    assert torch.equal(out[..., :rh, :rw], ref)
    z = normalise(out, pixels)
    pad = torch.ones(S, S, dtype=torch.bool)
    pad[:rh, :rw] = False
    assert pad.sum() > 0 and float(z[..., pad].abs().max()) < 1e-4
    assert float(z[..., ~pad].abs().max()) > 0.1
    m = fit.mask(torch.from_numpy(ellipse(h, w)))
    assert m.shape == (S, S) and m.dtype == torch.uint8 and int(m[pad].sum()) == 0


@pytest.mark.parametrize("h,w", [(60, 100), (100, 60)])
def test_restore_of_the_fitted_mask_recovers_it(h, w):
    fit = InputFit(S, "pad", IMAGENET_RGB)
    gt = ellipse(h, w)
    fitted = fit.mask(torch.from_numpy(gt)).float()
    logits = (fitted * 2 - 1)[None, None] * 10
    back = fit.restore(logits, (h, w))
    assert back.shape == (1, 1, h, w)
    assert iou(back[0, 0].numpy() > 0, gt.astype(bool)) > 0.95
    # without the crop (stretching the padded square back) the mask lands elsewhere
    wrong = InputFit(S).restore(logits, (h, w))[0, 0].numpy() > 0
    assert iou(wrong, gt.astype(bool)) < 0.8
    # evaluation's upsampling takes the dataset's fit; without one it stretches, as before
    probs = upsample_probs(logits, (h, w), fit)
    assert probs.shape == (1, h, w) and iou(probs[0] > 0.5, gt.astype(bool)) > 0.95
    assert np.array_equal(upsample_probs(logits, (h, w)),
                          torch.sigmoid(InputFit(S).restore(logits, (h, w)))[:, 0].numpy())


def test_stretch_is_exactly_the_old_resize():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 60, 100, generator=g)
    fit = InputFit(S)
    old = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False,
                        antialias=True).clamp_(0, 1)
    assert torch.equal(fit.image(x), old)
    m = torch.from_numpy(ellipse(60, 100))
    old_m = F.interpolate(m[None, None].float(), size=(S, S), mode="nearest-exact")[0, 0]
    assert torch.equal(fit.mask(m), old_m.to(torch.uint8))
    logits = torch.randn(3, 1, S, S, generator=g)
    old_up = F.interpolate(logits, size=(60, 100), mode="bilinear", align_corners=False)
    assert torch.equal(fit.restore(logits, (60, 100)), old_up)
    img = (torch.rand(60, 100, 3, generator=g) * 255).to(torch.uint8).numpy()
    xt = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    old_x = F.interpolate(xt, size=(S, S), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0, 1)
    assert torch.equal(_image_tensor(img, S, torch.device("cpu")), old_x)
    assert torch.equal(_image_tensor(img, fit, torch.device("cpu")), old_x)
    same = torch.rand(1, 3, S, S, generator=g)  # already S x S: untouched in both modes
    assert torch.equal(fit.image(same), same) and torch.equal(InputFit(S, "pad").image(same), same)


def test_predict_batch_under_pad_returns_the_image_size():
    cfg = load_config("small3", dict(input_size=32, embed_dim=8, c_v=16, c_l=16, c_m=16,
                                     convlstm_hidden=8, le_reduction=4, resize="pad"))
    model = build_model(cfg, 12).eval()
    for h, w in ((60, 100), (100, 60)):
        img = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
        prob = predict_batch(model, img, [[3, 4], [5]])
        assert prob.shape == (2, h, w) and prob.dtype == np.float32
    with pytest.raises(ValueError, match="resize 'crop' not in"):
        load_config("small", {"resize": "crop"})
    assert InputFit.of(load_config("paper")) == InputFit(320, "pad", CAFFE_BGR)
    assert InputFit.of(load_config("small")) == InputFit(load_config("small").input_size)


def _non_square_set(data_dir, tmp_path):
    """The synthetic set's val images cropped to 128x80 or 80x128 (alternately), each painted
    white where its first expression's mask is and black elsewhere, masks cropped alike."""
    out = tmp_path / "nonsquare"
    shutil.copytree(data_dir, out)
    df = mf.read_manifest(str(out / "manifest.parquet"))
    painted, masks = {}, list(df["mask"])
    for n, (i, row) in enumerate(df[df["split"] == "val"].iterrows()):
        m = mf.decode_mask(row["mask"])
        crop = m[:, :80] if int(row["image_id"]) % 2 else m[:80, :]
        masks[df.index.get_loc(i)] = mf.encode_mask(crop)
        uri = row["image_uri"]
        if uri not in painted:
            painted[uri] = row["sample_id"]
            new = out / f"img{n}.png"
            Image.fromarray(np.repeat(crop[..., None] * 255, 3, axis=2)).save(new)
            df.loc[df["image_uri"] == uri, "image_uri"] = str(new)
    df["mask"] = masks
    mf.write_manifest(df, str(out / "manifest.parquet"))
    return out, set(painted.values())


def test_refdataset_under_pad_keeps_masks_on_their_images(data_dir, tmp_path):
    folder, painted = _non_square_set(data_dir, tmp_path)
    fit = InputFit(S, "pad", IMAGENET_RGB)
    ds = RefDataset(str(folder), "en", "val", input_size=S, fit=fit)
    stretched = RefDataset(str(folder), "en", "val", input_size=S)
    checked = 0
    for i in range(min(len(ds), 6)):
        it = ds[i]
        h, w = ds.image(i).shape[:2]
        assert (h, w) in ((128, 80), (80, 128))
        rh, rw = fit.region(h, w)
        assert it["image"].shape == (3, S, S) and it["masks"].shape[-2:] == (S, S)
        assert float(it["masks"][..., rh:, :].sum() + it["masks"][..., rw:].sum()) == 0
        pad_rgb = torch.tensor(pad_colour(IMAGENET_RGB))
        corner = it["image"][:, -1, -1]
        assert torch.allclose(corner, pad_rgb)
        for j, sid in enumerate(it["sample_ids"]):
            if sid in painted:
                white = it["image"][0, :rh, :rw].numpy() > 0.5
                mask = it["masks"][j, 0, :rh, :rw].numpy() > 0.5
                assert iou(white, mask) > 0.8, sid  # small shapes, 2x down: edges differ
                centre = [np.argwhere(a).mean(axis=0) for a in (white, mask)]
                assert np.abs(centre[0] - centre[1]).max() < 1.0, sid
                checked += 1
        assert not torch.equal(it["image"], stretched[i]["image"])
    assert checked >= 3
    with pytest.raises(ValueError, match="differs from the fit's"):
        RefDataset(str(folder), "en", "val", input_size=32, fit=fit)
