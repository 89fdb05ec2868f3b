"""ModelConfig: every architectural choice of the network, including each METHOD.md Decision.

Presets: ``paper`` (Section 4.2 of the paper: DeepLab/ResNet-101 at output stride 8, 320 px,
Cv = Cl = Cm = 1000, ConvLSTM cell 500, MUTAN rank r = 5, frozen backbone) and ``small`` (a narrow
ResNet trained from scratch, for CPU runs on the synthetic shapes data). ``ablation_rows()`` gives
Table 4's rows as override dicts: ``load_config("paper", ablation_rows()["row1_baseline"])``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

LEVEL_NAMES = ("res3", "res4", "res5")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "narrow_resnet")
SIGMA_MODES = ("mean", "fixed")
CLAF_NORMS = ("hw", "sqrt_hw", "none")
CLAF_ORDERS = ("auto", "cheap", "naive")
RESAMPLE_MODES = ("none", "first")
MUTAN_ACTIVATIONS = ("none", "tanh")


@dataclass
class ModelConfig:
    """All fields are plain JSON values so that a checkpoint carries its config as a dict."""

    name: str = "custom"
    seed: int = 0
    input_size: int = 320

    # --- vision side ---------------------------------------------------------------------------
    backbone: str = "resnet101"
    backbone_weights: str | None = None  # torchvision or DeepLab-ResNet state dict file
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
    convlstm_hidden: int = 500
    convlstm_kernel: int = 3
    convlstm_input_norm: bool = True  # Decision: GroupNorm on each Zk (model/convlstm.py)
    head_kernel: int = 3

    # --- runtime ---------------------------------------------------------------------------------
    amp_bf16: bool = True  # bfloat16 autocast on CUDA
    channels_last: bool = True  # on CUDA

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.levels = list(self.levels)
        self.backbone_widths = list(self.backbone_widths)
        self.backbone_blocks = list(self.backbone_blocks)
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"ModelConfig {self.name!r}: {msg}")

        need(self.backbone in BACKBONES, f"backbone {self.backbone!r} not in {BACKBONES}")
        need(len(self.levels) >= 1, "levels must name at least one of res3/res4/res5")
        bad = [lv for lv in self.levels if lv not in LEVEL_NAMES]
        need(not bad, f"unknown levels {bad}; allowed {LEVEL_NAMES}")
        need(len(set(self.levels)) == len(self.levels), f"duplicate levels {self.levels}")
        need(self.la_sigma_mode in SIGMA_MODES, f"la_sigma_mode {self.la_sigma_mode!r} not in {SIGMA_MODES}")
        need(self.la_sigma > 0, f"la_sigma must be > 0, got {self.la_sigma}")
        need(self.claf_norm in CLAF_NORMS, f"claf_norm {self.claf_norm!r} not in {CLAF_NORMS}")
        need(self.claf_order in CLAF_ORDERS, f"claf_order {self.claf_order!r} not in {CLAF_ORDERS}")
        need(self.resample_levels in RESAMPLE_MODES, f"resample_levels not in {RESAMPLE_MODES}")
        need(self.mutan_activation in MUTAN_ACTIVATIONS, f"mutan_activation not in {MUTAN_ACTIVATIONS}")
        for k in ("input_size", "embed_dim", "c_v", "c_l", "c_m", "mutan_rank", "le_reduction",
                  "convlstm_hidden", "lstm_layers"):
            need(int(getattr(self, k)) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(self.input_size % 8 == 0, f"input_size must be a multiple of 8, got {self.input_size}")
        need(self.convlstm_kernel % 2 == 1 and self.head_kernel % 2 == 1, "kernels must be odd")
        if self.backbone == "narrow_resnet":
            need(len(self.backbone_widths) == 4 and len(self.backbone_blocks) == 4,
                 "narrow_resnet needs 4 backbone_widths and 4 backbone_blocks")

    # ------------------------------------------------------------------------------------------
    @property
    def lstm_hidden_size(self) -> int:
        return int(self.lstm_hidden or self.embed_dim)

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
            raise ValueError(
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
PRESETS: dict[str, dict[str, Any]] = {
    # Section 4.2: DeepLab-ResNet-101 (frozen), 320 px, Cv = Cl = Cm = 1000, ConvLSTM 500, r = 5.
    "paper": dict(
        name="paper",
        input_size=320,
        backbone="resnet101",
        backbone_frozen=True,
        backbone_dilation=True,
        levels=list(LEVEL_NAMES),
        embed_dim=300,
        c_v=1000, c_l=1000, c_m=1000,
        mutan_rank=5,
        convlstm_hidden=500,
        le_reduction=16,
    ),
    # CPU presets for the synthetic 128 px shapes data: narrow BasicBlock ResNet trained from
    # scratch, input 96 px. ``small`` (the embedded default, `make run`) is single-level: MUTAN +
    # LE + LA on Res3 (12 x 12 at 96 px), no CLAF/ConvLSTM; it reaches val overall IoU > 0.5 in
    # about 4 CPU minutes per language. ``small3`` is the full three-level network (Res3/4/5
    # resampled to the Res3 grid, CLAF, ConvLSTM) at the same widths: it learns more per step but a
    # step costs about 4x as much, so on the same CPU budget it ends lower (README, Training).
    "small": dict(
        name="small",
        input_size=96,
        backbone="narrow_resnet",
        backbone_frozen=False,
        backbone_dilation=False,
        backbone_widths=[16, 32, 64, 128],
        backbone_blocks=[1, 1, 1, 1],
        levels=["res3"],
        use_claf=False,
        embed_dim=64,
        embedding_trainable=True,
        c_v=64, c_l=64, c_m=64,
        mutan_rank=5,
        le_reduction=4,
        convlstm_hidden=32,
    ),
}
PRESETS["small3"] = {**PRESETS["small"], "name": "small3", "levels": list(LEVEL_NAMES),
                     "use_claf": True}


def ablation_rows() -> dict[str, dict[str, Any]]:
    """Table 4 (English UNC val) as config overrides, applied on top of a preset.

    The paper's table lost its check marks in extraction; METHOD.md gives: single level baseline,
    +LE, +LA, +LE+LA; multi-level (CLAF) rows, +MUTAN, ..., full model. Single-level rows use Res5
    only, concatenation fusion and no ConvLSTM (the CNN-LSTM variant with a 3x3 last conv).
    """
    single = dict(levels=["res5"], use_claf=False, use_mutan=False)
    multi = dict(levels=list(LEVEL_NAMES), use_claf=True)
    return {
        "row1_baseline": {**single, "use_le": False, "use_la": False},
        "row2_le": {**single, "use_le": True, "use_la": False},
        "row3_la": {**single, "use_le": False, "use_la": True},
        "row4_le_la": {**single, "use_le": True, "use_la": True},
        "row5_claf": {**multi, "use_mutan": False, "use_le": False, "use_la": False},
        "row6_claf_mutan": {**multi, "use_mutan": True, "use_le": False, "use_la": False},
        "row7_claf_mutan_le": {**multi, "use_mutan": True, "use_le": True, "use_la": False},
        "row8_claf_mutan_la": {**multi, "use_mutan": True, "use_le": False, "use_la": True},
        "row9_claf_le_la": {**multi, "use_mutan": False, "use_le": True, "use_la": True},
        "row10_full": {**multi, "use_mutan": True, "use_le": True, "use_la": True},
    }


def load_config(
    preset_name_or_yaml_path: str | ModelConfig = "small", overrides: dict[str, Any] | None = None
) -> ModelConfig:
    """A preset name (``paper``/``small``), ``preset:row`` (an ablation row on a preset, e.g.
    ``small:row1_baseline``) or a YAML file. A YAML file may say ``base: <preset>`` and then list
    overrides; other keys must be ModelConfig fields. ``overrides`` are applied last."""
    if isinstance(preset_name_or_yaml_path, ModelConfig):
        d = preset_name_or_yaml_path.to_dict()
    else:
        src = str(preset_name_or_yaml_path)
        preset, _, row = src.partition(":")
        if preset in PRESETS:
            d = ModelConfig(**PRESETS[preset]).to_dict()
            if row:
                rows = ablation_rows()
                if row not in rows:
                    raise ValueError(f"unknown ablation row {row!r}; known: {sorted(rows)}")
                d.update(rows[row])
                d["name"] = f"{preset}:{row}"
        elif os.path.isfile(src):
            import yaml

            with open(src, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{src}: a model config YAML must be a mapping")
            base = data.pop("base", None)
            d = load_config(base).to_dict() if base else ModelConfig().to_dict()
            _check_keys(data, src)
            d.update(data)
        else:
            raise ValueError(
                f"config {src!r} is neither a preset {sorted(PRESETS)} nor an existing YAML file"
            )
    if overrides:
        _check_keys(overrides, "overrides")
        d.update(overrides)
    return ModelConfig.from_dict(d)


def _check_keys(d: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown ModelConfig keys {unknown}")
