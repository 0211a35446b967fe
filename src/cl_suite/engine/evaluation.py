"""Evaluate the current encoder: kNN, online probe on the test set, and (optionally) the linear probe."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from cl_suite.data.augment import AugmentConfig, eval_transform
from cl_suite.data.types import ImageDataset
from cl_suite.eval.features import extract_features
from cl_suite.eval.knn import knn_class_scores, topk_accuracy
from cl_suite.eval.linear import train_linear_classifier
from cl_suite.methods.base import ContrastiveMethod


def evaluate_encoder(method: ContrastiveMethod, probe: torch.nn.Module | None, data: ImageDataset,
                     aug_cfg: AugmentConfig, device: torch.device, cfg: DictConfig, with_linear: bool,
                     channels_last: bool = False, seed: int = 0) -> dict[str, float]:
    """Frozen features of the labelled train split and the test split, extracted once, feed every protocol.

    Keys say which protocol produced a number: ``knn/*``, ``linear/*`` (offline, frozen, cached
    features: the headline) and ``online_probe/test_*`` (the diagnostic probe trained during
    pre-training, applied to frozen test features).
    """
    was_training = method.training
    method.eval()
    try:
        def features(split, flip=False):
            return extract_features(method.encode, split, lambda x: eval_transform(x, aug_cfg), device,
                                    batch_size=cfg.batch_size, flip=flip, channels_last=channels_last)

        train_x, train_y = features(data.train)
        test_x, test_y = features(data.test)
        out = {f"knn/{k}": v for k, v in topk_accuracy(
            knn_class_scores(train_x, train_y, test_x, data.num_classes, k=cfg.knn.k,
                             temperature=cfg.knn.temperature), test_y).items()}
        if probe is not None:
            with torch.no_grad():
                out.update({f"online_probe/test_{k}": v for k, v in topk_accuracy(probe.linear(test_x), test_y).items()})
        if with_linear:
            lin = cfg.linear
            train_variants = [train_x] + ([features(data.train, flip=True)[0]] if lin.flip_augment else [])
            out.update({f"linear/{k}": v for k, v in train_linear_classifier(
                train_variants, train_y, test_x, test_y, data.num_classes, epochs=lin.epochs,
                batch_size=lin.batch_size, lr=lin.lr, momentum=lin.momentum, weight_decay=lin.weight_decay,
                standardize=lin.standardize, seed=seed).items()})
        return out
    finally:
        method.train(was_training)
