"""Evaluate the current encoder: kNN, online probe on the test set, and (optionally) the linear probe."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from cl_suite.data.augment import AugmentConfig
from cl_suite.data.types import ImageDataset
from cl_suite.eval.protocols import encode_splits, knn_metrics, linear_metrics, online_probe_metrics
from cl_suite.methods.base import ContrastiveMethod


def evaluate_encoder(method: ContrastiveMethod, probe: torch.nn.Module | None, data: ImageDataset,
                     aug_cfg: AugmentConfig, device: torch.device, cfg: DictConfig, with_linear: bool,
                     channels_last: bool = False, seed: int = 0) -> dict[str, float]:
    """Frozen features of the labelled train split and the test split, extracted once, feed every protocol.

    Keys say which protocol produced a number: ``knn/*``, ``linear/*`` (offline, frozen, cached
    features: the headline) and ``online_probe/test_*`` (the diagnostic probe trained during
    pre-training, applied to frozen test features). ``evaluate.py`` runs the other protocols
    (retrieval, OOD, transfer; ``cl_suite.run_evaluation``) from the same building blocks.
    """
    was_training = method.training
    method.eval()
    try:
        feats = encode_splits(method.encode, data, aug_cfg, device, cfg.batch_size, channels_last)
        out = knn_metrics(feats, data.num_classes, cfg.knn)
        if probe is not None:
            out.update(online_probe_metrics(probe, feats))
        if with_linear:
            out.update(linear_metrics(feats, data.num_classes, cfg.linear, seed))
        return out
    finally:
        method.train(was_training)
