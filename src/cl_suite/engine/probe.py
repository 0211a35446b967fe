"""Online linear probe: a classifier trained on detached features during pre-training.

A diagnostic, not the headline: it sees augmented views and a moving encoder. The headline number is
the offline linear evaluation on frozen, un-augmented features (``cl_suite.eval.linear``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

PROBE_OPTIMIZERS = ("adamw", "sgd", "lars")
PROBE_SCHEDULES = ("constant", "backbone")


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


class RunningTopkAccuracy:
    """Top-k accuracy of the probe on the training views, accumulated on the device.

    Updated every step, so it must not synchronise with the host: torchmetrics' update validates its
    inputs and drops ignored labels with boolean indexing, both host syncs on a GPU. Here the counts
    are plain tensor sums; ``compute`` (once per epoch) is the only sync. Unlabelled samples (-1) do
    not count. Checked against torchmetrics in the tests.
    """

    def __init__(self, ks: tuple[int, ...], num_classes: int, device: torch.device):
        self.ks = tuple(min(k, num_classes) for k in ks)
        self.names = tuple(f"top{k}" for k in ks)
        self.hits = torch.zeros(len(ks), device=device)
        self.count = torch.zeros((), device=device)

    def reset(self) -> None:
        self.hits.zero_()
        self.count.zero_()

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        labelled = labels >= 0
        ranked = logits.topk(max(self.ks), dim=1).indices == labels[:, None]  # (n, max k)
        for i, k in enumerate(self.ks):
            self.hits[i] += (ranked[:, :k].any(dim=1) & labelled).sum()
        self.count += labelled.sum()

    def compute(self) -> dict[str, float]:
        """Percentages per ``top{k}``; empty when no labelled sample was seen."""
        count = self.count.item()
        if count == 0:
            return {}
        return {name: 100.0 * hits / count for name, hits in zip(self.names, self.hits.tolist())}


def build_probe_optimizer(probe_cfg: DictConfig, optimizer_cfg: DictConfig, probe: OnlineProbe,
                          global_batch_size: int) -> torch.optim.Optimizer:
    """The online probe's optimizer (``probe.*``). ``adamw`` (the default: a diagnostic that converges
    whatever the backbone's settings); ``sgd`` with ``momentum``; ``lars`` with the run's LARS settings
    (``optimizer.eta``, ``clip_lr``, ``trust_denominator``; the bias excluded from the adaptation), as
    solo-learn trains its online classifier in the backbone's optimizer. ``lr`` is for
    ``batch_size_reference`` images (null: not scaled), as ``optimizer.lr``."""
    from cl_suite.engine.optim import LARS, parameter_groups, scaled_lr

    lr = scaled_lr(probe_cfg, global_batch_size)
    kind, wd = probe_cfg.get("optimizer", "adamw"), float(probe_cfg.weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(probe.parameters(), lr=lr, momentum=float(probe_cfg.momentum), weight_decay=wd)
    return LARS(parameter_groups(probe, wd, exclude_bias_and_norm=True), lr=lr, momentum=float(probe_cfg.momentum),
                weight_decay=wd, eta=float(optimizer_cfg.get("eta", 0.02)),
                clip_lr=bool(optimizer_cfg.get("clip_lr", False)),
                trust_denominator=str(optimizer_cfg.get("trust_denominator", "update_norm")))
