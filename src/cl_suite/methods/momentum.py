"""The momentum key encoder of MoCo (He et al., CVPR 2020, sec. 3.2, eq. 2) and RINCE (Hoffmann et al.,
AAAI 2022): a copy of the query encoder (backbone + projector) updated as theta_k <- m theta_k +
(1 - m) theta_q after every optimizer step, never by gradients."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from cl_suite.methods.base import unit_projection
from cl_suite.distributed import batch_shuffle, batch_unshuffle


class MomentumEncoder(nn.Module):
    """Keys of a query encoder's exponential moving average.

    ``momentum`` rises to ``momentum_final`` on a cosine schedule over the run (BYOL's schedule; equal
    values = MoCo's constant m). The copies are deep copies (shared storage would make the key encoder
    the query encoder), and their BatchNorm buffers are their own, updated by their forward passes in
    train mode, as in MoCo. ``shuffle_bn``: under DDP the key batch is shuffled across processes before
    the key encoder (MoCo sec. 3.3), so BN statistics cannot reveal which key belongs to which query.

    A method gets one with :func:`attach_key_encoder`, which also lets its state dicts from before this
    component (``key_backbone.*``, ``key_projector.*``) load.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, momentum: float, momentum_final: float,
                 shuffle_bn: bool):
        super().__init__()
        for key, value in (("momentum", momentum), ("momentum_final", momentum_final)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"method.{key}={value} is not allowed: expected a value in [0, 1]")
        self.backbone = copy.deepcopy(backbone)
        self.projector = copy.deepcopy(projector)
        for p in self.parameters():
            p.requires_grad_(False)
        self.momentum, self.momentum_final = float(momentum), float(momentum_final)
        self.shuffle_bn = shuffle_bn

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 keys of ``x``."""
        if self.shuffle_bn:
            x, order = batch_shuffle(x)
        k = unit_projection(self.projector, self.backbone(x))
        return batch_unshuffle(k, order) if self.shuffle_bn else k

    def momentum_at(self, step: int, total_steps: int) -> float:
        progress = min(1.0, step / max(1, total_steps))
        return self.momentum_final - (self.momentum_final - self.momentum) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update(self, query_parameters: list[torch.Tensor], step: int, total_steps: int) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q, in the order of ``self.parameters()``."""
        m = self.momentum_at(step, total_steps)
        keys = list(self.parameters())
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, query_parameters, alpha=1 - m)


def attach_key_encoder(method: nn.Module, momentum: float, momentum_final: float, shuffle_bn: bool) -> None:
    """``method.key_encoder``: the momentum copy of ``method.backbone`` and ``method.projector``; state
    dicts written before this component, with ``key_backbone.*``/``key_projector.*`` entries, load into
    ``key_encoder.backbone.*``/``key_encoder.projector.*``."""
    method.key_encoder = MomentumEncoder(method.backbone, method.projector, momentum, momentum_final, shuffle_bn)
    method._register_load_state_dict_pre_hook(_rename_old_keys)


def _rename_old_keys(state_dict, prefix, *args) -> None:
    for old, new in (("key_backbone.", "key_encoder.backbone."), ("key_projector.", "key_encoder.projector.")):
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
