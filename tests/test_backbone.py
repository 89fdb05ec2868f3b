"""The two backbone weight formats (model/backbone_weights.py, model/backbone.py, model/pixels.py):
files fabricated from a random ResNet-50 in each layout load with no missing or unexpected key,
the layouts of one network give the same features, the DeepLab geometry and pixel convention,
format mismatches, ``auto``. Budget: about 10 s on 2 CPU cores (ResNet-50 at small inputs)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet as tv_resnet

from model import ConfigError, build_model, load_checkpoint, load_config, save_checkpoint
from model.backbone import Backbone
from model.backbone_weights import (
    detect_layout,
    load_backbone_weights,
    remap_backbone_keys,
    resolve_backbone_format,
    to_caffe_keys,
)
from model.checkpoint import read_checkpoint
from model.pixels import CAFFE_BGR, CAFFE_MEAN_BGR, normalise, pad_colour

torch.set_num_threads(2)


def r50(**over):
    base = dict(backbone="resnet50", input_size=64, c_v=16, c_l=16, c_m=16, embed_dim=8,
                convlstm_hidden=8, le_reduction=4)
    base.update(over)
    return load_config("paper", base)


@pytest.fixture(scope="module")
def network_state():
    """A random torchvision ResNet-50 state dict (fc included, batch-norm statistics random)."""
    torch.manual_seed(0)
    net = tv_resnet.resnet50(weights=None)
    state = net.state_dict()
    for k, v in state.items():
        if not v.is_floating_point():
            continue
        if k.endswith("running_var"):
            v.copy_(torch.rand_like(v) + 0.5)
        elif k.endswith("running_mean") or k.endswith("bn3.weight") or "downsample.1" in k:
            v.copy_(torch.randn_like(v) * 0.1)
    return state


@pytest.fixture(scope="module")
def files(network_state, tmp_path_factory):
    """The same network as three files: torchvision names, Caffe names, ``Scale.``-prefixed."""
    d = tmp_path_factory.mktemp("weights")
    caffe = to_caffe_keys(network_state)
    assert "res4f_branch2a.weight" in caffe and "bn_conv1.running_mean" in caffe
    assert "scale_conv1.weight" in caffe and "scale2a_branch1.bias" in caffe
    assert not any(k.startswith("fc.") for k in caffe)
    scale = {"Scale." + k: v for k, v in network_state.items() if not k.startswith("fc.")}
    scale["Scale.layer5.conv2d_list.0.weight"] = torch.zeros(21, 2048, 3, 3)  # ASPP: ignored
    paths = {"torchvision": d / "resnet50.pth", "caffe": d / "caffe.pth", "scale": d / "scale.pth"}
    torch.save(network_state, paths["torchvision"])
    torch.save({"state_dict": caffe}, paths["caffe"])
    torch.save(scale, paths["scale"])
    return {k: str(v) for k, v in paths.items()}


def test_inverse_map_round_trips(network_state):
    body = {k: v for k, v in network_state.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    back = remap_backbone_keys(to_caffe_keys(network_state))
    assert set(back) == set(body)
    assert all(back[k] is body[k] for k in body)
    assert detect_layout(network_state) == "torchvision"
    assert detect_layout(to_caffe_keys(network_state)) == "deeplab"
    assert detect_layout({"Scale.conv1.weight": 0}) == "deeplab"
    # ResNet-101's Caffe names: res2a-c, res3a, res3b1-b3, res4a, res4b1-b22, res5a-c
    r101 = {f"layer{layer}.{i}.conv1.weight": torch.zeros(1)
            for layer, n in zip((1, 2, 3, 4), (3, 4, 23, 3), strict=True) for i in range(n)}
    names = set(to_caffe_keys(r101))
    for name in ("res2c", "res3a", "res3b3", "res4b1", "res4b22", "res5b"):
        assert f"{name}_branch2a.weight" in names, name
    assert set(remap_backbone_keys(to_caffe_keys(r101))) == set(r101)
    assert detect_layout({"module.layer5.conv2d_list.0.weight": 0}) == "deeplab"


def test_each_layout_loads_fully_and_the_layouts_agree(network_state, files):
    tv = Backbone(r50(backbone_format="torchvision")).eval()
    load_backbone_weights(tv, files["torchvision"])  # raises on any missing/unexpected key
    nets = {}
    for name in ("caffe", "scale"):
        nets[name] = Backbone(r50(backbone_format="deeplab")).eval()
        load_backbone_weights(nets[name], files[name])
    for k, v in nets["caffe"].body.state_dict().items():
        assert torch.equal(v, network_state[k]), k
        assert torch.equal(v, tv.body.state_dict()[k]), k
    x = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = nets["caffe"](x), nets["scale"](x)
    assert list(a) == ["res3", "res4", "res5"]
    assert all(torch.equal(a[lv], b[lv]) for lv in a)
    assert float(a["res5"].abs().max()) > 0


def test_deeplab_geometry_and_grid():
    dl = Backbone(r50(backbone_format="deeplab")).body
    tv = Backbone(r50(backbone_format="torchvision")).body
    assert dl.layer2[0].conv1.stride == (2, 2) and dl.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    assert dl.layer2[0].downsample[0].stride == (2, 2)
    for layer, d in (("layer3", 2), ("layer4", 4)):
        for block in getattr(dl, layer):
            assert block.conv2.dilation == (d, d) and block.conv2.padding == (d, d), layer
            assert block.conv1.stride == (1, 1) and block.conv2.stride == (1, 1)
    assert tv.layer3[0].conv2.dilation == (1, 1)  # torchvision: the previous stage's dilation
    assert dl.maxpool.ceil_mode and not tv.maxpool.ceil_mode
    assert set(dl.state_dict()) == set(tv.state_dict())  # same names: one key map for both
    res3 = Backbone(r50(backbone_format="deeplab", levels=["res3"])).eval()
    with torch.no_grad():
        assert res3(torch.rand(1, 3, 321, 321))["res3"].shape[-2:] == (41, 41)
        small = Backbone(r50(backbone_format="deeplab")).eval()(torch.rand(1, 3, 65, 65))
    assert [tuple(f.shape[-2:]) for f in small.values()] == [(9, 9)] * 3
    assert not any(p.requires_grad for p in dl.parameters())  # frozen as configured
    assert type(dl.bn1).__name__ == "FrozenBatchNorm2d"


def test_deeplab_pixels_are_bgr_255_minus_the_caffe_mean():
    rgb = (0.2, 0.4, 0.6)
    x = torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    want = torch.tensor([0.6 * 255 - 104.008, 0.4 * 255 - 116.669, 0.2 * 255 - 122.675])
    got = normalise(x, CAFFE_BGR)
    assert torch.allclose(got[0, :, 0, 0], want, atol=1e-4)
    pad = torch.tensor(pad_colour(CAFFE_BGR)).view(1, 3, 1, 1)
    assert torch.allclose(normalise(pad, CAFFE_BGR), torch.zeros(1, 3, 1, 1), atol=1e-4)
    assert pad_colour(CAFFE_BGR)[0] == pytest.approx(CAFFE_MEAN_BGR[2] / 255)
    # the backbone feeds exactly that to its first conv
    bb = Backbone(r50(backbone_format="deeplab", levels=["res3"])).eval()
    seen = []
    bb.body.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        bb(x)
    assert torch.equal(seen[0], got)


def test_format_mismatch_is_one_line_config_error(files):
    for declared, path, layout in (("torchvision", files["caffe"], "deeplab"),
                                   ("deeplab", files["torchvision"], "torchvision")):
        with pytest.raises(ConfigError) as err:
            load_backbone_weights(Backbone(r50(backbone_format=declared)), path)
        msg = str(err.value)
        assert "\n" not in msg and path in msg and "backbone_format" in msg
        assert f"{layout} layout" in msg and repr(declared) in msg
    with pytest.raises(ConfigError, match="backbone_format 'deeplab' needs backbone resnet101"):
        load_config("small", {"backbone_format": "deeplab"})
    with pytest.raises(ConfigError, match="backbone_format 'caffe' not in"):
        load_config("small", {"backbone_format": "caffe"})


def test_auto_resolves_and_the_checkpoint_stores_it(files, tmp_path):
    assert resolve_backbone_format(r50(backbone_format="auto")).backbone_format == "torchvision"
    tv = r50(backbone_format="auto", backbone_weights=files["torchvision"])
    assert resolve_backbone_format(tv).backbone_format == "torchvision"
    auto = r50(backbone_format="auto", backbone_weights=files["caffe"], levels=["res3"])
    model = build_model(auto, 10)
    assert model.cfg.backbone_format == "deeplab" and model.backbone.pixels == CAFFE_BGR
    assert model.backbone.body.layer2[0].conv1.stride == (2, 2)
    save_checkpoint(str(tmp_path / "m.pt"), model, auto)
    assert read_checkpoint(str(tmp_path / "m.pt"))["config"]["backbone_format"] == "deeplab"
    loaded, cfg, _ = load_checkpoint(str(tmp_path / "m.pt"))
    assert cfg.backbone_format == "deeplab" and loaded.backbone.pixels == CAFFE_BGR
    for k, v in loaded.backbone.body.state_dict().items():
        assert torch.equal(v, model.backbone.body.state_dict()[k]), k


def test_old_checkpoints_without_the_fields_load_as_before(tmp_path):
    cfg = load_config("small3", dict(input_size=32, embed_dim=8, c_v=16, c_l=16, c_m=16,
                                     convlstm_hidden=8, le_reduction=4))
    model = build_model(cfg, 10).eval()
    save_checkpoint(str(tmp_path / "new.pt"), model, cfg)
    raw = read_checkpoint(str(tmp_path / "new.pt"))
    for field in ("backbone_format", "resize"):
        del raw["config"][field]
    torch.save(raw, tmp_path / "old.pt")
    old, old_cfg, _ = load_checkpoint(str(tmp_path / "old.pt"))
    assert (old_cfg.backbone_format, old_cfg.resize) == ("torchvision", "stretch")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    tokens, lengths, index = torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1]), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(old(x, tokens, lengths, index)["logits"],
                           model(x, tokens, lengths, index)["logits"])


def test_narrow_resnet_dilation_keeps_every_level_on_the_res3_grid():
    """backbone_dilation on the narrow net: layer3/layer4 at stride 1, dilation 2/4 (output stride
    8); without it the levels halve (12, 6, 3 at 96 px) and the network resamples them."""
    x = torch.rand(1, 3, 96, 96)
    for dilated, sizes in ((False, [12, 6, 3]), (True, [12, 12, 12])):
        cfg = load_config("small3", {"backbone_dilation": dilated})
        body = Backbone(cfg).body
        assert [f.shape[-1] for f in body(x).values()] == sizes
        d = (2, 2) if dilated else (1, 1)
        assert body.layer3[0].conv1.dilation == d and body.layer3[0].conv2.padding == d
        assert body.layer4[0].conv2.dilation == ((4, 4) if dilated else (1, 1))
