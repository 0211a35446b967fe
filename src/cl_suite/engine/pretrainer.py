"""The module the loop trains (and DDP wraps): the method plus the online probe."""
from __future__ import annotations

import torch
from torch import nn

from cl_suite.engine.probe import OnlineProbe
from cl_suite.methods.base import ContrastiveMethod, MethodOutput, check_output


class Pretrainer(nn.Module):
    """One forward for both, so one DDP wrapper averages the gradients of both."""

    def __init__(self, method: ContrastiveMethod, probe: OnlineProbe):
        super().__init__()
        self.method = method
        self.probe = probe

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, indices: torch.Tensor
                ) -> tuple[MethodOutput, torch.Tensor, torch.Tensor]:
        out = self.method(views, labels, indices)
        check_output(self.method, out)
        probe_loss, probe_logits = self.probe(out.features, out.feature_labels)
        return out, probe_loss, probe_logits
