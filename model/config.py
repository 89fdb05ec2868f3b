"""ModelConfig: every architectural choice of the network, including each Decision of docs/method.md.

Presets live in the top-level ``configs`` package as YAML (``paper``: Section 4.2 of the paper,
DeepLab/ResNet-101 at output stride 8, 320 px, Cv = Cl = Cm = 1000, ConvLSTM cell 500, MUTAN rank
r = 5, frozen backbone; ``small``/``small3``: a narrow ResNet trained from scratch, for CPU runs on
the synthetic shapes data); :func:`load_config` reads their ``model:`` section. ``ablation_rows()``
gives Table 4's rows as override dicts: ``load_config("paper", ablation_rows()["row1_baseline"])``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from model.errors import ConfigError

LEVEL_NAMES = ("res3", "res4", "res5")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "narrow_resnet")
SIGMA_MODES = ("mean", "fixed")
CLAF_NORMS = ("hw", "sqrt_hw", "none")
CLAF_ORDERS = ("auto", "cheap", "naive")
RESAMPLE_MODES = ("none", "first")
MUTAN_ACTIVATIONS = ("none", "tanh")
BACKBONE_FORMATS = ("torchvision", "deeplab", "auto")
RESIZE_MODES = ("stretch", "pad")


def check_field_types(obj: Any, where: str) -> None:
    """Each field of the dataclass ``obj`` holds a value of its annotated type (``int``,
    ``float``, ``str``, ``bool``, ``list[...]``, ``X | None``), else a one-line ConfigError
    naming ``where``, the field and the value: a YAML file or ``--set`` with a wrong type fails
    here, not deep inside the network. Numbers written as strings (``1e-3``, which YAML reads as
    a string) pass as the numbers they spell; an int passes for a float; values are kept as
    given."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _is_a(value, str(f.type)):
            shown = str(f.type).replace("None", "null")
            raise ConfigError(f"{where}: {f.name} must be {shown}, got {value!r} "
                              f"({type(value).__name__})")


def _is_a(value: Any, kind: str) -> bool:
    """Whether ``value`` fits the annotation string ``kind``."""
    for option in (k.strip() for k in kind.split("|")):
        if option == "None":
            if value is None:
                return True
        elif option.startswith("list[") and option.endswith("]"):
            if isinstance(value, list | tuple) and all(_is_a(v, option[5:-1]) for v in value):
                return True
        elif _is_scalar(value, option):
            return True
    return False


def _is_scalar(value: Any, kind: str) -> bool:
    if kind in ("bool", "str"):
        return isinstance(value, bool if kind == "bool" else str)
    if isinstance(value, bool) or kind not in ("int", "float"):
        return False
    if isinstance(value, str):
        try:
            (int if kind == "int" else float)(value.strip())
        except ValueError:
            return False
        return True
    return isinstance(value, int) or (kind == "float" and isinstance(value, float))


@dataclass
class ModelConfig:
    """All fields are plain JSON values so that a checkpoint carries its config as a dict."""

    name: str = "custom"
    seed: int = 0
    input_size: int = 320
    # How an H x W image sits in the input_size square (model/geometry.py). "stretch": resized to
    # S x S, aspect ratio lost (the default; what every run did before the switch). "pad": scaled
    # by S / max(H, W), aspect ratio kept, placed top-left, the rest filled with the pixel
    # convention's mean colour (masks with 0); predictions are cropped back and resized to H x W.
    resize: str = "stretch"

    # --- vision side ---------------------------------------------------------------------------
    backbone: str = "resnet101"
    backbone_weights: str | None = None  # torchvision or DeepLab-ResNet state dict file
    # Layout, geometry and pixel convention of the backbone and its weight file (docs/model.md,
    # "Backbone weights"). "torchvision": torchvision's ResNet (stride in each stage's 3x3 conv),
    # RGB input normalised with ImageNet mean/std; the default, what every run did before the
    # switch. "deeplab": DeepLab-v2 ResNet-101 converted from Caffe: stride in the 1x1 conv,
    # dilation 2 in every block of layer3 and 4 in layer4, max-pool rounding up, BGR 0-255 input
    # minus the Caffe mean pixel. "auto": read from the keys of backbone_weights when the network
    # is built (torchvision without a file); checkpoints store the resolved value.
    backbone_format: str = "torchvision"
    backbone_frozen: bool = True  # paper: frozen, batch norm frozen too
    backbone_dilation: bool = True  # Decision: dilate layer3/layer4 -> output stride 8
    backbone_widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # narrow only
    backbone_blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])  # narrow only
    levels: list[str] = field(default_factory=lambda: list(LEVEL_NAMES))
    resample_levels: str = "first"  # resample every level to the first level's grid

    # --- language side -------------------------------------------------------------------------
    embed_dim: int = 300  # GloVe 300 (en) / word2vec 256 (zh)
    embedding_trainable: bool = False
    lstm_hidden: int | None = None  # Decision: None = embed_dim, then a linear projection to c_l
    lstm_layers: int = 1

    # --- widths ----------------------------------------------------------------------------------
    c_v: int = 1000
    c_l: int = 1000
    c_m: int = 1000

    # --- early fusion (1)-(4) ----------------------------------------------------------------------
    use_mutan: bool = True  # off: concatenation [V, S, Ls] + 1x1 conv (the CNN-LSTM baseline)
    mutan_rank: int = 5
    mutan_activation: str = "none"  # on ls W1j and Vt W2j; the paper writes none

    # --- LE (5)-(9) ------------------------------------------------------------------------------
    use_le: bool = True
    le_reduction: int = 16  # Decision: SENet bottleneck ratio

    # --- LA (10)-(15) ----------------------------------------------------------------------------
    use_la: bool = True
    la_dim: int | None = None  # shared latent space of (10); None = c_m
    la_sigma_mode: str = "mean"  # Decision: "mean" -> sigma = la_sigma * mean(d - min d)
    la_sigma: float = 1.0  # scale ("mean") or the value itself ("fixed")

    # --- CLAF (16)-(17) + ConvLSTM ------------------------------------------------------------------
    use_claf: bool = True  # off: Zk = Yk (no cross-level attention)
    claf_norm: str = "hw"  # Decision: Zkj / HWj
    claf_order: str = "auto"  # "auto" picks the cheaper association by shapes
    # ConvLSTM over the levels: None = on when there are several levels (the rule before the
    # switch existed, so old checkpoints rebuild the same network); True/False force it. Off with
    # several levels: concatenation + 1x1 conv + ReLU (model/level_fusion.py).
    use_convlstm: bool | None = None
    convlstm_hidden: int = 500
    convlstm_kernel: int = 3
    convlstm_input_norm: bool = True  # Decision: GroupNorm on each Zk (model/convlstm.py)
    head_kernel: int = 3

    # --- runtime ---------------------------------------------------------------------------------
    amp_bf16: bool = True  # bfloat16 autocast on CUDA
    channels_last: bool = True  # on CUDA

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        check_field_types(self, "ModelConfig")
        self.levels = list(self.levels)
        self.backbone_widths = list(self.backbone_widths)
        self.backbone_blocks = list(self.backbone_blocks)
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"ModelConfig {self.name!r}: {msg}")

        need(self.backbone in BACKBONES, f"backbone {self.backbone!r} not in {BACKBONES}")
        need(len(self.levels) >= 1, "levels must name at least one of res3/res4/res5")
        bad = [lv for lv in self.levels if lv not in LEVEL_NAMES]
        need(not bad, f"unknown levels {bad}; allowed {LEVEL_NAMES}")
        need(len(set(self.levels)) == len(self.levels), f"duplicate levels {self.levels}")
        need(self.la_sigma_mode in SIGMA_MODES, f"la_sigma_mode {self.la_sigma_mode!r} not in {SIGMA_MODES}")
        need(self.la_sigma > 0, f"la_sigma must be > 0, got {self.la_sigma}")
        need(self.claf_norm in CLAF_NORMS, f"claf_norm {self.claf_norm!r} not in {CLAF_NORMS}")
        need(self.claf_order in CLAF_ORDERS, f"claf_order {self.claf_order!r} not in {CLAF_ORDERS}")
        need(self.backbone_format in BACKBONE_FORMATS,
             f"backbone_format {self.backbone_format!r} not in {BACKBONE_FORMATS}")
        if self.backbone_format == "deeplab":
            need(self.backbone in ("resnet50", "resnet101") and self.backbone_dilation,
                 f"backbone_format 'deeplab' needs backbone resnet101 (or resnet50) with "
                 f"backbone_dilation: true, got {self.backbone!r}, "
                 f"backbone_dilation {self.backbone_dilation}")
        need(self.resize in RESIZE_MODES, f"resize {self.resize!r} not in {RESIZE_MODES}")
        need(self.resample_levels in RESAMPLE_MODES, f"resample_levels not in {RESAMPLE_MODES}")
        need(self.mutan_activation in MUTAN_ACTIVATIONS, f"mutan_activation not in {MUTAN_ACTIVATIONS}")
        for k in ("input_size", "embed_dim", "c_v", "c_l", "c_m", "mutan_rank", "le_reduction",
                  "convlstm_hidden", "lstm_layers"):
            need(int(getattr(self, k)) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(self.input_size % 8 == 0, f"input_size must be a multiple of 8, got {self.input_size}")
        need(self.use_convlstm in (None, True, False),
             f"use_convlstm must be true, false or null, got {self.use_convlstm!r}")
        need(self.convlstm_kernel % 2 == 1 and self.head_kernel % 2 == 1, "kernels must be odd")
        if self.backbone == "narrow_resnet":
            need(len(self.backbone_widths) == 4 and len(self.backbone_blocks) == 4,
                 "narrow_resnet needs 4 backbone_widths and 4 backbone_blocks")

    # ------------------------------------------------------------------------------------------
    @property
    def lstm_hidden_size(self) -> int:
        return int(self.lstm_hidden or self.embed_dim)

    @property
    def convlstm_on(self) -> bool:
        """Whether the network has a ConvLSTM (``use_convlstm``, or several levels when null)."""
        if self.use_convlstm is None:
            return len(self.levels) > 1
        return bool(self.use_convlstm)

    @property
    def la_latent(self) -> int:
        return int(self.la_dim or self.c_m)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown ModelConfig keys {unknown}; known keys: {sorted(known)}"
            )
        return cls(**d)

    def replace(self, **overrides: Any) -> ModelConfig:
        d = self.to_dict()
        d.update(overrides)
        return ModelConfig.from_dict(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ------------------------------------------------------------------------------------------------
# Presets and ablation rows are YAML files in the top-level ``configs`` package (configs/paper.yaml,
# configs/small.yaml, configs/small3.yaml, configs/ablation/<row>.yaml), read by ``configs.read``;
# they are imported only when a config is loaded by name or path, so a checkpoint loads without them.
def ablation_rows() -> dict[str, dict[str, Any]]:
    """Table 4 (English UNC val) as config overrides, applied on top of a preset
    (configs/ablation/<row>.yaml): rows 1-4 use Res5 only, concatenation fusion and no ConvLSTM
    (the CNN-LSTM variant with a 3x3 last conv); rows 5-10 use Res3/4/5 and the ConvLSTM, all but
    row 9 with CLAF (docs/method.md, "Table 4, reconciled"). ``load_config("paper", ablation_rows()["row3_la"])`` == ``load_config("paper:row3_la")``
    but for the name."""
    import configs

    return configs.ablation_rows()


def load_config(config: str | ModelConfig = "small",
                overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The model section of a config: a preset name (``paper``/``small``/``small3``),
    ``preset:row`` (an ablation row on a preset, e.g. ``small:row1_baseline``), ``ablation/<row>``
    or a YAML file (``base: <config>`` and ``model:`` fields, or the fields at the top level).
    Fields not named default to ModelConfig's; ``overrides`` are applied last."""
    if isinstance(config, ModelConfig):
        d = config.to_dict()
    else:
        import configs

        section = configs.read(str(config))["model"]
        _check_keys(section, str(config))
        d = {**ModelConfig().to_dict(), **section}
    if overrides:
        _check_keys(overrides, "overrides")
        d.update(overrides)
    return ModelConfig.from_dict(d)


def _check_keys(d: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown ModelConfig keys {unknown}")
