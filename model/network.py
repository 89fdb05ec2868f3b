"""RefSegNetwork: backbone -> per-level fusion (MUTAN or concat) -> LE / LA -> Yj -> CLAF ->
ConvLSTM -> 3x3 conv -> upsample (Figure 2 of the paper, eqs. (1)-(17)).

Grouping: ``image_index`` maps each of the N expressions to one of the B images. The backbone and
every language-independent part of the fusion (Vt W2j of (1)-(2), or the visual half of the
concat conv) run once per image; the results are gathered per expression afterwards.
With ``use_claf=False`` Zk = Yk. The ConvLSTM is ``cfg.convlstm_on`` (by default: several levels);
without it several levels are fused by concatenation + 1x1 conv (``LevelConcat``) and a single
level goes to the head as Y (the Table 4 single-level baseline).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.aggregation import LinguisticAggregation
from model.backbone import Backbone
from model.backbone_weights import load_backbone_weights, resolve_backbone_format
from model.claf import CrossLevelAttentiveFusion, LevelOutput
from model.config import ModelConfig
from model.convlstm import ConvLSTM
from model.coord import coord_feature
from model.excitation import LinguisticExcitation
from model.head import MaskHead
from model.language import LanguageEncoder
from model.level_fusion import LevelConcat
from model.mutan import ConcatFusion, MutanFusion


class RefSegNetwork(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, embeddings: np.ndarray | None = None):
        super().__init__()
        cfg = resolve_backbone_format(cfg)  # "auto" -> the weight file's layout
        self.cfg = cfg
        self.vocab_size = int(vocab_size)
        torch.manual_seed(cfg.seed)
        self.backbone = Backbone(cfg)
        self.language = LanguageEncoder(
            vocab_size, cfg.embed_dim, cfg.lstm_hidden_size, cfg.c_l, cfg.lstm_layers,
            embeddings=embeddings, trainable=cfg.embedding_trainable, seed=cfg.seed,
        )
        self.levels = list(cfg.levels)
        ch = self.backbone.channels
        if cfg.use_mutan:
            self.fusion = nn.ModuleDict({lv: MutanFusion(ch[lv], cfg.c_v, cfg.c_l, cfg.c_m,
                                                         cfg.mutan_rank, cfg.mutan_activation)
                                         for lv in self.levels})
        else:
            self.fusion = nn.ModuleDict({lv: ConcatFusion(ch[lv], cfg.c_l, cfg.c_m)
                                         for lv in self.levels})
        self.excitation = (nn.ModuleDict({lv: LinguisticExcitation(cfg.c_m, cfg.c_l,
                                                                   cfg.le_reduction)
                                          for lv in self.levels}) if cfg.use_le else None)
        self.aggregation = (nn.ModuleDict({lv: LinguisticAggregation(
            cfg.c_m, cfg.c_l, cfg.la_latent, cfg.la_sigma_mode, cfg.la_sigma)
            for lv in self.levels}) if cfg.use_la else None)
        self.level_out = nn.ModuleDict({lv: LevelOutput(cfg.c_m, cfg.c_l, cfg.use_le, cfg.use_la)
                                        for lv in self.levels})
        self.claf = (CrossLevelAttentiveFusion(cfg.c_m, cfg.c_l, cfg.claf_norm, cfg.claf_order)
                     if cfg.use_claf else None)
        self.convlstm = (ConvLSTM(cfg.c_m, cfg.convlstm_hidden, cfg.convlstm_kernel,
                                  cfg.convlstm_input_norm)
                         if cfg.convlstm_on else None)
        self.level_concat = (LevelConcat(cfg.c_m, len(self.levels))
                             if self.convlstm is None and len(self.levels) > 1 else None)
        self.head = MaskHead(cfg.convlstm_hidden if self.convlstm is not None else cfg.c_m,
                             cfg.head_kernel)

    # --------------------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        image_index: torch.Tensor,
        return_attention: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, S, S], got {tuple(images.shape)}")
        n = tokens.shape[0]
        if image_index.shape != (n,):
            raise ValueError(f"image_index must be [N={n}], got {tuple(image_index.shape)}")
        b = images.shape[0]
        if n and (int(image_index.min()) < 0 or int(image_index.max()) >= b):
            raise ValueError(f"image_index values must lie in [0, {b - 1}], got "
                             f"[{int(image_index.min())}, {int(image_index.max())}]")
        image_index = image_index.to(images.device, torch.long)
        feats = self.backbone(images)
        _, ls, _ = self.language(tokens, lengths)
        ys, attention = [], []
        for lv in self.levels:
            f = feats[lv]
            s = coord_feature(f.shape[-2], f.shape[-1], device=f.device, dtype=f.dtype)
            vis = self.fusion[lv].visual(f, s).index_select(0, image_index)  # per expression
            m = self.fusion[lv].fuse(vis, ls)  # M, eqs. (1)-(4)
            parts = []
            if self.excitation is not None:
                parts.append(self.excitation[lv](m, ls))  # M_LE, eqs. (5)-(9)
            if self.aggregation is not None:
                la = self.aggregation[lv](m, ls)  # M_LA, eqs. (10)-(15)
                parts.append(la["m_la"])
                attention.append(la["p_hat"])
            parts.append(m)
            ys.append(self.level_out[lv](parts, ls, s))  # Yj
        zs = self.claf(ys, ls) if self.claf is not None else ys  # eqs. (16)-(17)
        if self.convlstm is not None:
            z = self.convlstm(zs)
        elif self.level_concat is not None:
            z = self.level_concat(zs)  # several levels, no ConvLSTM (model/level_fusion.py)
        else:
            z = zs[0]
        logits = self.head(z, size=images.shape[-2:]).float()  # R
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {"logits": logits}
        if return_attention:
            out["attention"] = attention
        return out


def build_model(cfg: ModelConfig, vocab_size: int, embeddings: np.ndarray | None = None,
                load_backbone: bool = True) -> RefSegNetwork:
    """Build the network; loads ``cfg.backbone_weights`` into the backbone when given.
    ``backbone_format: auto`` is resolved from that file: ``model.cfg`` holds the value."""
    if embeddings is not None:
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[1] != cfg.embed_dim:
            raise ValueError(
                f"embeddings have shape {tuple(emb.shape)}; cfg.embed_dim is {cfg.embed_dim} "
                "(they must match: set embed_dim to the vectors' dimension)"
            )
        if emb.shape[0] != vocab_size:
            raise ValueError(f"embeddings have {emb.shape[0]} rows but vocab_size is {vocab_size}")
    model = RefSegNetwork(cfg, vocab_size, embeddings)
    if load_backbone and cfg.backbone_weights:
        load_backbone_weights(model.backbone, model.cfg.backbone_weights)
    return model
