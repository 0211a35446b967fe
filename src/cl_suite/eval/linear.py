"""Linear evaluation on frozen, cached features: the headline number of every run.

Features are extracted once (``extract_features``) and the classifier trains on the cache, which is
tens of times faster than re-encoding every epoch and, for an augmentation-free protocol, the same
thing. ``flip_augment`` caches the flipped images too and picks one of the two per sample and epoch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cl_suite.eval.knn import topk_accuracy


def train_linear_classifier(
    train_features: torch.Tensor | list[torch.Tensor],
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    standardize: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Fit a linear classifier with SGD + cosine schedule, return test ``top1``/``top5`` (percent, last epoch).

    ``train_features`` may be a list of equally shaped tensors (e.g. plain and flipped images): each
    epoch draws one of them per sample. ``standardize`` rescales features with the training mean and
    std (an affine map, so the classifier family is unchanged; it only conditions SGD).
    Unlabelled training samples (label -1) are dropped.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"linear probe: need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    variants = train_features if isinstance(train_features, list) else [train_features]
    keep = train_labels >= 0
    variants = torch.stack([v[keep].float() for v in variants])  # (V, N, F)
    labels = train_labels[keep]
    device = variants.device
    if standardize:
        mean = variants.mean(dim=(0, 1))
        std = variants.std(dim=(0, 1)).clamp(min=1e-6)
    else:
        mean, std = torch.zeros((), device=device), torch.ones((), device=device)
    variants = (variants - mean) / std
    test = (test_features.float() - mean) / std

    gen = torch.Generator(device="cpu").manual_seed(seed)
    # Initialise from ``seed`` without touching the global RNG: evaluating mid-run must not change training.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = torch.nn.Linear(variants.shape[-1], num_classes).to(device)
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = labels.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(device)
        choice = torch.randint(len(variants), (n,), generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(classifier(variants[choice[idx], idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return topk_accuracy(classifier(test), test_labels)
