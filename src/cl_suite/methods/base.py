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
    # detached diagnostics; may be empty on a step that records none (``set_progress``)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


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

    # Whether the current step computes its per-step diagnostics (``MethodOutput.stats``); see set_progress.
    record_diagnostics = True

    def set_progress(self, step: int, steps_per_epoch: int, record_diagnostics: bool = True) -> None:
        """Training progress (optimizer steps taken, steps per epoch), set before every step, for
        schedules inside the method's sampler (ring and HCL annealing, MoCHi start epochs).

        ``record_diagnostics``: whether this step's diagnostics are recorded (the loop's log steps and
        the last step of each epoch). When False the sampler skips them (``NegativeSampler``) and so may
        the method: its ``stats`` may be empty; the loss must be the same either way."""
        self.record_diagnostics = bool(record_diagnostics)
        for module in self.modules():  # the one walk per step: progress and the flag together
            if isinstance(module, NegativeSampler):
                module.set_progress(step, steps_per_epoch, record_diagnostics)

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step: momentum updates and enqueueing go here, not in forward."""

    def epoch_diagnostics(self) -> dict[str, float]:
        """Method-specific numbers for the epoch record (e.g. k-means cluster usage), read once per epoch."""
        return {}
