"""Learning-rate schedules as per-step multipliers of the base rate (a ``LambdaLR``, so they checkpoint)."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int,
                  warmup_epochs: float = 10, min_lr_ratio: float = 0.0) -> LambdaLR:
    if warmup_epochs < 0 or not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"scheduler: need warmup_epochs >= 0 and min_lr_ratio in [0, 1]; got "
                         f"warmup_epochs={warmup_epochs}, min_lr_ratio={min_lr_ratio}")
    # Warm-up never takes more than the whole (possibly max_steps-capped) run.
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, min_lr_ratio))


def constant(optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int) -> LambdaLR:
    """No schedule (DCL/HCL train with a constant Adam rate)."""
    return LambdaLR(optimizer, lambda step: 1.0)
