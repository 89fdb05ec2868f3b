"""Visual backbone: Res3/Res4/Res5 of a ResNet (Section 3.2.1; docs/method.md, Decisions 5-7).

Decision: a torchvision ResNet with dilation in layer3/layer4 (output stride 8: all levels 40 x 40
at 320 px), FrozenBatchNorm2d when frozen, weights from a file (torchvision state dict or a
DeepLab-ResNet-101 checkpoint converted to PyTorch; key names are remapped). The ``small`` preset
uses a narrow BasicBlock ResNet trained from scratch whose levels are resampled to one grid.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from model.config import ModelConfig

LAYER_OF_LEVEL = {"res3": "layer2", "res4": "layer3", "res5": "layer4"}
# ImageNet statistics: the network normalises [0, 1] images itself.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NarrowResNet(nn.Module):
    """torchvision's ResNet layout (conv1/bn1/maxpool/layer1..4) with BasicBlocks of small width."""

    def __init__(self, widths: list[int], blocks: list[int], norm_layer: type[nn.Module]):
        super().__init__()
        w0 = widths[0]
        self.conv1 = nn.Conv2d(3, w0, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(w0)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = w0
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or inplanes != w:
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, w, 1, stride=s, bias=False), norm_layer(w)
                    )
                layers.append(tv_resnet.BasicBlock(inplanes, w, s, down, norm_layer=norm_layer))
                inplanes = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _make_resnet(cfg: ModelConfig) -> tuple[nn.Module, dict[str, int]]:
    norm = FrozenBatchNorm2d if cfg.backbone_frozen else nn.BatchNorm2d
    if cfg.backbone == "narrow_resnet":
        net = NarrowResNet(cfg.backbone_widths, cfg.backbone_blocks, norm)
        ch = {"res3": cfg.backbone_widths[1], "res4": cfg.backbone_widths[2],
              "res5": cfg.backbone_widths[3]}
        return net, ch
    ctor = getattr(tv_resnet, cfg.backbone)
    bottleneck = cfg.backbone in ("resnet50", "resnet101")
    dil = [False, True, True] if (cfg.backbone_dilation and bottleneck) else None
    if cfg.backbone_dilation and not bottleneck:
        raise ValueError(
            f"backbone {cfg.backbone!r}: torchvision BasicBlock nets do not support dilation; "
            "set backbone_dilation=False (levels are then resampled to one grid)"
        )
    net = ctor(weights=None, replace_stride_with_dilation=dil, norm_layer=norm)
    exp = 4 if bottleneck else 1
    ch = {"res3": 128 * exp, "res4": 256 * exp, "res5": 512 * exp}
    return net, ch


class Backbone(nn.Module):
    """Returns the configured levels (subset of Res3/Res4/Res5) as an ordered dict of features."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        net, ch = _make_resnet(cfg)
        self.levels = list(cfg.levels)
        deepest = max(int(LAYER_OF_LEVEL[lv][-1]) for lv in self.levels)
        return_layers = {LAYER_OF_LEVEL[lv]: lv for lv in self.levels}
        # IntermediateLayerGetter drops everything after the last requested layer (and fc).
        self.body = IntermediateLayerGetter(net, return_layers=return_layers)
        self.channels = {lv: ch[lv] for lv in self.levels}
        self.frozen = bool(cfg.backbone_frozen)
        self._deepest = deepest
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if self.frozen:
            self.freeze()

    def freeze(self) -> None:
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.frozen = True

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        if self.frozen:
            with torch.no_grad():
                feats = self.body(x)
        else:
            feats = self.body(x)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        ref = None
        for lv in self.levels:
            f = feats[lv]
            if self.cfg.resample_levels == "first":
                if ref is None:
                    ref = f.shape[-2:]
                elif f.shape[-2:] != ref:
                    f = F.interpolate(f, size=ref, mode="bilinear", align_corners=False)
            out[lv] = f
        return out


# ------------------------------------------------------------------------------------------------
# Weight files
_CAFFE_BLOCK = re.compile(r"^(res|bn|scale)(\d)([a-z])(\d*)_branch(1|2a|2b|2c)\.(.+)$")
_CAFFE_STEM = re.compile(r"^(conv1|bn_conv1|scale_conv1)\.(.+)$")
_PREFIXES = ("module.", "backbone.", "body.", "Scale.", "model.", "encoder.")
IGNORED_PREFIXES = ("fc.", "layer5.", "classifier.", "aux_classifier.")  # heads, not backbone
_BRANCH_CONV = {"1": "downsample.0", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_BRANCH_BN = {"1": "downsample.1", "2a": "bn1", "2b": "bn2", "2c": "bn3"}


def _caffe_block_index(letter: str, digits: str) -> int:
    # Caffe ResNet-101 names: res4a, res4b1 ... res4b22 (a = 0, bN = N); ResNet-50: res4a..res4f.
    if digits:
        return int(digits)
    return ord(letter) - ord("a")


def remap_backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map DeepLab/Caffe/wrapped key names onto torchvision ResNet names.

    Handles ``module.``/``backbone.``/``Scale.`` prefixes (DataParallel, detection wrappers and the
    pytorch-deeplab-resnet conversion) and Caffe names (``res4b3_branch2a``, ``bn4b3_branch2a``,
    ``scale4b3_branch2a``, ``conv1``/``bn_conv1``/``scale_conv1``); Caffe ``scale*`` layers hold the
    batch-norm affine weight/bias.
    """
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        k = key
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
        m = _CAFFE_BLOCK.match(k)
        if m:
            kind, stage, letter, digits, branch, param = m.groups()
            layer = int(stage) - 1
            idx = _caffe_block_index(letter, digits)
            mod = _BRANCH_CONV[branch] if kind == "res" else _BRANCH_BN[branch]
            k = f"layer{layer}.{idx}.{mod}.{param}"
        else:
            m = _CAFFE_STEM.match(k)
            if m:
                kind, param = m.groups()
                k = f"{'conv1' if kind == 'conv1' else 'bn1'}.{param}"
        if k in out:
            raise ValueError(f"backbone weights: keys {key!r} and another both map to {k!r}")
        out[k] = val
    return out


def load_backbone_weights(backbone: Backbone, path: str) -> None:
    """Load a torchvision ResNet state dict or a DeepLab-ResNet checkpoint into ``backbone``.

    Missing or unexpected keys (after the remap; classifier heads are ignored) raise an error
    that names them. Loaded with ``torch.load(weights_only=True)``.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"backbone weights {path!r} cannot be loaded safely: {exc}") from exc
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(raw, dict) and wrapper in raw and isinstance(raw[wrapper], dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"backbone weights {path!r}: expected a dict of tensors")
    state = remap_backbone_keys(raw)
    state = {k: v for k, v in state.items()
             if not k.startswith(IGNORED_PREFIXES) and not k.endswith("num_batches_tracked")}
    target = backbone.body.state_dict()
    # Layers beyond the deepest requested level are not part of the body: ignore them.
    dropped = tuple(f"layer{i}." for i in range(backbone._deepest + 1, 5))
    state = {k: v for k, v in state.items() if not (dropped and k.startswith(dropped))}
    want = {k for k in target if not k.endswith("num_batches_tracked")}
    missing = sorted(want - set(state))
    unexpected = sorted(set(state) - want)
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {path!r} do not match {backbone.cfg.backbone}: "
            f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''} "
            f"({len(missing)} in all), unexpected keys {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''} ({len(unexpected)} in all)"
        )
    bad_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                 for k in want if state[k].shape != target[k].shape]
    if bad_shape:
        raise ValueError(f"backbone weights {path!r}: shape mismatch {bad_shape[:10]}")
    backbone.body.load_state_dict(state, strict=False)
