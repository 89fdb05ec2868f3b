"""The optimiser and the learning-rate schedule: Adam (paper: 2.5e-4), optional linear warm-up,
then polynomial decay (1 - t/T)^power down to ``lr_end_factor`` of the base rate."""

from __future__ import annotations

from components.training.config import TrainConfig


def lr_factor(step: int, total: int, warmup: int, power: float, end: float) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warm-up, then
    polynomial decay (1 - t/T)^power from 1 to ``end``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(max(step - warmup, 0), span)
    return end + (1.0 - end) * (1.0 - t / span) ** power


def optimizer_and_schedule(params, cfg: TrainConfig):
    """(Adam over ``params``, its LambdaLR schedule over ``cfg.steps`` optimiser steps)."""
    import torch

    opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                           weight_decay=cfg.weight_decay)
    total = int(cfg.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, total, int(cfg.warmup_steps), float(cfg.lr_power), float(cfg.lr_end_factor)))
    return opt, sched
