"""Backbone weight files: their two layouts, the key map between them, and loading.

A file is a PyTorch state dict (optionally under ``state_dict``/``model``/``model_state``) in one
of two layouts (docs/model.md, "Backbone weights"):

- ``torchvision``: torchvision ResNet names (``layer3.4.conv2.weight``), e.g. the ImageNet
  ``resnet101`` weights saved with ``torch.save(model.state_dict())``; optional ``module.``,
  ``backbone.``, ``body.`` ... prefixes.
- ``deeplab``: DeepLab-v2 ResNet-101 converted from Caffe, either with Caffe names
  (``res4b3_branch2a``, ``bn4b3_branch2a``/``scale4b3_branch2a`` for the batch norm's statistics
  and affine part, ``conv1``/``bn_conv1``/``scale_conv1``) or with torchvision names under a
  ``Scale.`` prefix; its ASPP classifier (``layer5.``) is ignored.

:func:`detect_layout` tells them apart by their keys; ``backbone_format: auto`` takes that answer
(:func:`resolve_backbone_format`); a declared format that disagrees with the file is a ConfigError.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from model.errors import ConfigError, MissingInputError

if TYPE_CHECKING:
    from model.backbone import Backbone
    from model.config import ModelConfig

_CAFFE_BLOCK = re.compile(r"^(res|bn|scale)(\d)([a-z])(\d*)_branch(1|2a|2b|2c)\.(.+)$")
_CAFFE_STEM = re.compile(r"^(conv1|bn_conv1|scale_conv1)\.(.+)$")
_PREFIXES = ("module.", "backbone.", "body.", "Scale.", "model.", "encoder.")
IGNORED_PREFIXES = ("fc.", "layer5.", "classifier.", "aux_classifier.")  # heads, not backbone
_BRANCH_CONV = {"1": "downsample.0", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_BRANCH_BN = {"1": "downsample.1", "2a": "bn1", "2b": "bn2", "2c": "bn3"}
_CONV_BRANCH = {v: k for k, v in _BRANCH_CONV.items()}
_BN_BRANCH = {v: k for k, v in _BRANCH_BN.items()}
_AFFINE = ("weight", "bias")  # Caffe keeps these in the Scale layer, the statistics in BatchNorm


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def detect_layout(keys) -> str:
    """``deeplab`` when any key has a Caffe name (``res4b3_branch2a``, ``bn_conv1``,
    ``scale_conv1`` ...), the ``Scale.`` prefix of the DeepLab conversion or its ``layer5.``
    classifier; ``torchvision`` otherwise."""
    for key in keys:
        if key.startswith("Scale."):
            return "deeplab"
        k = _strip(key)
        if k.startswith("layer5.") or _CAFFE_BLOCK.match(k):
            return "deeplab"
        m = _CAFFE_STEM.match(k)
        if m and m.group(1) != "conv1":
            return "deeplab"
    return "torchvision"


def _caffe_block_index(letter: str, digits: str) -> int:
    # Caffe ResNet-101 names: res4a, res4b1 ... res4b22 (a = 0, bN = N); ResNet-50: res4a..res4f.
    if digits:
        return int(digits)
    return ord(letter) - ord("a")


def remap_backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map DeepLab/Caffe/wrapped key names onto torchvision ResNet names.

    Handles ``module.``/``backbone.``/``Scale.`` prefixes (DataParallel, detection wrappers and the
    DeepLab conversion) and Caffe names (``res4b3_branch2a``, ``bn4b3_branch2a``,
    ``scale4b3_branch2a``, ``conv1``/``bn_conv1``/``scale_conv1``); Caffe ``scale*`` layers hold the
    batch-norm affine weight/bias.
    """
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        k = _strip(key)
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
            raise ConfigError(f"backbone weights: keys {key!r} and another both map to {k!r}")
        out[k] = val
    return out


def _numbered_stages(keys) -> set[int]:
    """The layers whose Caffe block names are numbered (``res4b1`` ... ``res4b22``) rather than
    lettered (``res4a`` ... ``res4f``): in the deeper nets (a stage of more than 6 blocks, as
    ResNet-101 and -152) every stage of more than 3 blocks; in ResNet-50 and smaller, none."""
    blocks: dict[int, int] = {}
    for k in keys:
        m = re.match(r"^layer(\d)\.(\d+)\.", k)
        if m:
            layer, idx = int(m.group(1)), int(m.group(2))
            blocks[layer] = max(blocks.get(layer, 0), idx + 1)
    if max(blocks.values(), default=0) <= 6:
        return set()
    return {layer for layer, n in blocks.items() if n > 3}


def _caffe_name(key: str, numbered: set[int]) -> str:
    parts = key.split(".")
    if parts[0] == "conv1":
        return key
    if parts[0] == "bn1":
        return f"{'scale' if parts[1] in _AFFINE else 'bn'}_conv1.{parts[1]}"
    layer, idx = int(parts[0][len("layer"):]), int(parts[1])
    if idx == 0:
        block = "a"
    elif layer in numbered:
        block = f"b{idx}"
    else:
        block = chr(ord("a") + idx)
    mod = ".".join(parts[2:-1])
    param = parts[-1]
    if mod in _CONV_BRANCH:
        return f"res{layer + 1}{block}_branch{_CONV_BRANCH[mod]}.{param}"
    kind = "scale" if param in _AFFINE else "bn"
    return f"{kind}{layer + 1}{block}_branch{_BN_BRANCH[mod]}.{param}"


def to_caffe_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`remap_backbone_keys` on a torchvision ResNet state dict: Caffe names
    (``res{stage}{block}_branch{1|2a|2b|2c}``, blocks lettered ``a, b, c ...`` or numbered
    ``a, b1, b2 ...`` as the Caffe ResNets name them; batch-norm statistics under ``bn``, weight
    and bias under ``scale``). ``num_batches_tracked`` and the ``fc`` head are left out."""
    numbered = _numbered_stages(state)
    return {_caffe_name(k, numbered): v for k, v in state.items()
            if not k.endswith("num_batches_tracked") and not k.startswith(IGNORED_PREFIXES)}


def read_weight_file(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a weight file, read with ``torch.load(weights_only=True)``."""
    if not os.path.isfile(path):
        raise MissingInputError(f"backbone weights {path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ConfigError(f"backbone weights {path!r} cannot be loaded safely: {exc}") from exc
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(raw, dict) and wrapper in raw and isinstance(raw[wrapper], dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConfigError(f"backbone weights {path!r}: expected a dict of tensors")
    return raw


@lru_cache(maxsize=8)
def _file_layout(path: str, mtime_ns: int, size: int) -> str:
    return detect_layout(read_weight_file(path))


def file_layout(path: str) -> str:
    """The layout (torchvision or deeplab) of the weight file at ``path``."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"backbone weights {path!r} cannot be read: {exc}") from exc
    return _file_layout(os.path.abspath(path), st.st_mtime_ns, st.st_size)


def resolve_backbone_format(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``backbone_format: auto`` replaced by the layout of ``backbone_weights``
    (torchvision when there is no file); any other value is returned unchanged."""
    if cfg.backbone_format != "auto":
        return cfg
    fmt = file_layout(cfg.backbone_weights) if cfg.backbone_weights else "torchvision"
    return cfg.replace(backbone_format=fmt)


def check_layout(path: str, declared: str, layout: str) -> None:
    """A declared (non-auto) ``backbone_format`` must match the file's layout."""
    if declared != "auto" and declared != layout:
        raise ConfigError(
            f"backbone weights {path!r} are in the {layout} layout but backbone_format is "
            f"{declared!r}; set backbone_format: {layout} (or auto) or give a {declared} file")


def load_backbone_weights(backbone: Backbone, path: str) -> None:
    """Load a torchvision ResNet state dict or a DeepLab-ResNet checkpoint into ``backbone``.

    The file's layout must match ``backbone.cfg.backbone_format``. Missing or unexpected keys
    (after the remap; classifier heads are ignored) raise an error that names them.
    """
    raw = read_weight_file(path)
    check_layout(path, backbone.cfg.backbone_format, detect_layout(raw))
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
        raise ConfigError(
            f"backbone weights {path!r} do not match {backbone.cfg.backbone}: "
            f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''} "
            f"({len(missing)} in all), unexpected keys {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''} ({len(unexpected)} in all)"
        )
    bad_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                 for k in want if state[k].shape != target[k].shape]
    if bad_shape:
        raise ConfigError(f"backbone weights {path!r}: shape mismatch {bad_shape[:10]}")
    backbone.body.load_state_dict(state, strict=False)
