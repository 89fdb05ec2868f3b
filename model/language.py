"""Language encoder: word embeddings -> LSTM -> L in R^{T x Cl}; ls = max-pool over words, eq. (2).

Decision (docs/method.md, Decision 1): the LSTM runs at the embedding size (256 zh / 300 en)
and its outputs are projected linearly to Cl. Padding id 0; max-pooling only over the ``lengths``
valid words.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class LanguageEncoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden: int,
        c_l: int,
        num_layers: int = 1,
        embeddings: np.ndarray | None = None,
        trainable: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (0 = padding), got {vocab_size}")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        if embeddings is not None:
            emb = np.asarray(embeddings)
            if emb.ndim != 2 or emb.shape != (vocab_size, embed_dim):
                raise ValueError(
                    f"embedding matrix has shape {tuple(emb.shape)} but the model needs "
                    f"(vocab_size={vocab_size}, embed_dim={embed_dim}); set cfg.embed_dim to the "
                    "vectors' dimension"
                )
            if not np.isfinite(emb).all():
                raise ValueError("embedding matrix holds NaN/inf values")
            w = torch.from_numpy(emb.astype(np.float32, copy=True))
            w[0] = 0.0  # padding row
            self.embedding.weight.data.copy_(w)
        else:
            g = torch.Generator().manual_seed(int(seed))
            w = torch.randn(vocab_size, embed_dim, generator=g) * (1.0 / embed_dim**0.5)
            w[0] = 0.0
            self.embedding.weight.data.copy_(w)
        self.embedding.weight.requires_grad_(bool(trainable))
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=num_layers, batch_first=True)
        self.proj = nn.Linear(hidden, c_l)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """tokens [N, T] long, lengths [N] -> (L [N, T, Cl] zero at padding, ls [N, Cl], mask [N, T])."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [N, T], got {tuple(tokens.shape)}")
        n, t = tokens.shape
        lengths_cpu = lengths.detach().to("cpu", torch.int64)
        if lengths_cpu.numel() != n:
            raise ValueError(f"lengths has {lengths_cpu.numel()} entries for {n} token rows")
        if (lengths_cpu < 1).any() or (lengths_cpu > t).any():
            bad = torch.nonzero((lengths_cpu < 1) | (lengths_cpu > t)).flatten().tolist()
            raise ValueError(f"lengths out of range [1, {t}] at rows {bad[:10]}")
        x = self.embedding(tokens)
        packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        words = self.proj(out)  # L, eq. before (2)
        mask = torch.arange(t, device=tokens.device).unsqueeze(0) < lengths.to(tokens.device).unsqueeze(1)
        words = words * mask.unsqueeze(-1).to(words.dtype)
        neg = torch.finfo(words.dtype).min
        ls = words.masked_fill(~mask.unsqueeze(-1), neg).amax(dim=1)  # eq. (2)
        return words, ls, mask
