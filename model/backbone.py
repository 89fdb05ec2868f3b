"""Visual backbone: Res3/Res4/Res5 of a ResNet (Section 3.2.1; docs/method.md, Decisions 5-7).

Decision: a torchvision ResNet with dilation in layer3/layer4 (output stride 8: all levels 40 x 40
at 320 px), FrozenBatchNorm2d when frozen, weights from a file (model/backbone_weights.py). With
``backbone_format: deeplab`` the same modules (same parameter names) are adjusted in place to
DeepLab-v2's Caffe geometry (:func:`deeplab_geometry`) and the input follows the Caffe pixel
convention (model/pixels.py). The ``small`` preset uses a narrow BasicBlock ResNet trained from
scratch whose levels are resampled to one grid.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from model.config import ModelConfig
from model.pixels import convention_of, normalise

LAYER_OF_LEVEL = {"res3": "layer2", "res4": "layer3", "res5": "layer4"}
DEEPLAB_DILATION = {"layer3": 2, "layer4": 4}


class NarrowResNet(nn.Module):
    """torchvision's ResNet layout (conv1/bn1/maxpool/layer1..4) with BasicBlocks of small width.
    ``dilation``: layer3 and layer4 keep stride 1 and dilate their 3x3 convs by 2 and 4 (output
    stride 8, as DeepLab's ResNet), so Res4 and Res5 share Res3's grid."""

    def __init__(self, widths: list[int], blocks: list[int], norm_layer: type[nn.Module],
                 dilation: bool = False):
        super().__init__()
        w0 = widths[0]
        self.conv1 = nn.Conv2d(3, w0, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(w0)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = w0
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            d = DEEPLAB_DILATION.get(f"layer{i + 1}", 1) if dilation else 1
            stride = 1 if i == 0 or d > 1 else 2
            layers = []
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or inplanes != w:
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, w, 1, stride=s, bias=False), norm_layer(w)
                    )
                block = tv_resnet.BasicBlock(inplanes, w, s, down, norm_layer=norm_layer)
                for conv in (block.conv1, block.conv2):  # BasicBlock itself refuses dilation > 1
                    conv.dilation, conv.padding = (d, d), (d, d)
                layers.append(block)
                inplanes = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _make_resnet(cfg: ModelConfig) -> tuple[nn.Module, dict[str, int]]:
    norm = FrozenBatchNorm2d if cfg.backbone_frozen else nn.BatchNorm2d
    if cfg.backbone == "narrow_resnet":
        net = NarrowResNet(cfg.backbone_widths, cfg.backbone_blocks, norm,
                           dilation=cfg.backbone_dilation)
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
    if cfg.backbone_format == "deeplab":
        deeplab_geometry(net)
    exp = 4 if bottleneck else 1
    ch = {"res3": 128 * exp, "res4": 256 * exp, "res5": 512 * exp}
    return net, ch


def deeplab_geometry(net: nn.Module) -> None:
    """Turn a dilated torchvision Bottleneck ResNet into DeepLab-v2's Caffe ResNet, in place
    (parameter names and shapes unchanged): the stride of each stage's first block moves from the
    3x3 conv (conv2) to the 1x1 conv (conv1); every block of layer3 has dilation 2 and of layer4
    dilation 4 (padding = dilation; torchvision gives the first block of a dilated stage the
    previous stage's dilation); the max-pool rounds up as Caffe does (321 px -> a 41 x 41 grid)."""
    net.maxpool.ceil_mode = True
    for name in ("layer1", "layer2", "layer3", "layer4"):
        blocks = list(getattr(net, name))
        stride = blocks[0].conv2.stride
        blocks[0].conv2.stride = (1, 1)
        blocks[0].conv1.stride = stride
        d = DEEPLAB_DILATION.get(name)
        for block in blocks:
            if d is not None:
                block.conv2.dilation = (d, d)
                block.conv2.padding = (d, d)


class Backbone(nn.Module):
    """Returns the configured levels (subset of Res3/Res4/Res5) as an ordered dict of features."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.backbone_format == "auto":
            from model.backbone_weights import resolve_backbone_format

            cfg = resolve_backbone_format(cfg)
        self.cfg = cfg
        self.pixels = convention_of(cfg.backbone_format)
        net, ch = _make_resnet(cfg)
        self.levels = list(cfg.levels)
        deepest = max(int(LAYER_OF_LEVEL[lv][-1]) for lv in self.levels)
        return_layers = {LAYER_OF_LEVEL[lv]: lv for lv in self.levels}
        # IntermediateLayerGetter drops everything after the last requested layer (and fc).
        self.body = IntermediateLayerGetter(net, return_layers=return_layers)
        self.channels = {lv: ch[lv] for lv in self.levels}
        self.frozen = bool(cfg.backbone_frozen)
        self._deepest = deepest
        if self.frozen:
            self.freeze()

    def freeze(self) -> None:
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.frozen = True

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = normalise(images, self.pixels)
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
