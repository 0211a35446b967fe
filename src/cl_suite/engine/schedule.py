"""Learning-rate schedules as per-step multipliers of the base rate (a ``LambdaLR``, so they checkpoint)."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float,
                         warmup_prefix: bool = True) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``.

    ``warmup_prefix`` true: the cosine runs over the steps after the warm-up (it starts at 1). False:
    the cosine runs over the absolute step, as timm's ``CosineLRScheduler`` with its default
    ``warmup_prefix=False`` (davidsvy's MoCHi code): at the warm-up's end the rate is already
    cos-decayed by warmup/total (0.976 at 10%)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if warmup_prefix:
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    else:
        progress = min(1.0, step / max(1, total_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int,
                  warmup_epochs: float = 10, min_lr_ratio: float = 0.0, warmup_prefix: bool = True) -> LambdaLR:
    if warmup_epochs < 0 or not 0 <= min_lr_ratio <= 1 or not isinstance(warmup_prefix, bool):
        raise ValueError(f"scheduler: need warmup_epochs >= 0, min_lr_ratio in [0, 1] and warmup_prefix true or "
                         f"false; got warmup_epochs={warmup_epochs}, min_lr_ratio={min_lr_ratio}, "
                         f"warmup_prefix={warmup_prefix!r}")
    # Warm-up never takes more than the whole (possibly max_steps-capped) run.
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, min_lr_ratio,
                                                                 warmup_prefix))


def constant(optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int) -> LambdaLR:
    """No schedule (DCL/HCL train with a constant Adam rate)."""
    return LambdaLR(optimizer, lambda step: 1.0)
