"""What every framework gives the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cl_suite.samplers.base import NegativeSampler


@dataclass
class MethodOutput:
    loss: torch.Tensor  # scalar training loss
    features: torch.Tensor  # (n, F) detached backbone features, for the online probe
    feature_labels: torch.Tensor  # (n,) labels aligned with ``features`` (-1 = unlabelled)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached diagnostics


class ContrastiveMethod(nn.Module):
    """A framework: owns the backbone, its heads and any state (queues, banks, momentum encoders).

    ``forward(views, labels, indices)`` returns a ``MethodOutput``. State that must survive a restart
    lives in parameters or buffers, so the module's ``state_dict`` is the whole method state.
    """

    backbone: nn.Module
    needs_labels = False  # True: every pre-training image needs a class label (SupCon, RINCE, supervised)

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The representation that is evaluated (kNN, linear probe): the backbone's pooled features."""
        return self.backbone(images)

    def set_progress(self, step: int, steps_per_epoch: int) -> None:
        """Training progress (optimizer steps taken, steps per epoch), set before every step, for
        schedules inside the method's sampler (ring and HCL annealing, MoCHi start epochs)."""
        for module in self.modules():
            if isinstance(module, NegativeSampler):
                module.set_progress(step, steps_per_epoch)

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step: momentum updates and enqueueing go here, not in forward."""

    def epoch_diagnostics(self) -> dict[str, float]:
        """Method-specific numbers for the epoch record (e.g. k-means cluster usage), read once per epoch."""
        return {}
