"""The supervised reference: cross-entropy on the same backbone, augmentations and schedule."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.methods.base import ContrastiveMethod, MethodOutput


class Supervised(ContrastiveMethod):
    """A linear classifier on the backbone, trained with cross-entropy on both augmented views (the
    same two-view pipeline as the contrastive methods, so only the objective differs; RINCE's CE
    baseline, the reference's ``main_ce.py``). Evaluated like every method: kNN and linear probe on frozen
    features.
    """

    needs_labels = True

    def __init__(self, backbone: nn.Module, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"method.label_smoothing={label_smoothing} is not allowed: expected a value in [0, 1)")
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.num_features, num_classes)
        self.label_smoothing = float(label_smoothing)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor | None = None) -> MethodOutput:
        h = self.backbone(torch.cat(views))
        targets = labels.repeat(2)
        logits = self.classifier(h).float()
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        accuracy = 100.0 * (logits.argmax(dim=1) == targets).float().mean()  # %, as every accuracy
        return MethodOutput(loss=loss, features=h.detach(), feature_labels=targets,
                            stats={"supervised/train_top1": accuracy.detach()})
