"""Optimizers: torch AdamW (no compilation on any machine) or CAME, the official PixArt-Sigma choice."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from pixart.config import TrainDefaults


def build_optimizer(params: Iterable[torch.nn.Parameter], train: TrainDefaults, lr: float) -> torch.optim.Optimizer:
    if train.optimizer == "came":
        from came_pytorch import CAME

        # betas and eps as in the official PixArt-Sigma configs
        return CAME(params, lr=lr, weight_decay=train.weight_decay, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
    return torch.optim.AdamW(params, lr=lr, weight_decay=train.weight_decay)


def constant_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(warmup_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 0 at ``total_steps``."""
    warmup, total = max(warmup_steps, 1), max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
