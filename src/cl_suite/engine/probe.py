"""Online linear probe: a classifier trained on detached features during pre-training.

A diagnostic, not the headline: it sees augmented views and a moving encoder. The headline number is
the offline linear evaluation on frozen, un-augmented features (``cl_suite.eval.linear``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OnlineProbe(nn.Module):
    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, logits)``; unlabelled samples (label -1) do not count, without a host sync."""
        logits = self.linear(features.detach().float())
        labelled = (labels >= 0).sum().clamp(min=1)
        loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / labelled
        return loss, logits
