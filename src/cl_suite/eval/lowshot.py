"""Low-shot evaluation: the frozen features' linear probe and kNN fitted on a class-balanced fraction of
the labelled training images (SimCLR's 1% / 10% label protocol, Chen et al. ICML 2020, sec. 6, with a
linear probe on frozen features instead of fine-tuning)."""
from __future__ import annotations

import math

import torch


def images_per_class(count: int, fraction: float) -> int:
    """How many of a class's ``count`` labelled images a ``fraction`` subset keeps:
    floor(fraction * count + 1/2) (the nearest integer, halves rounded up, in double precision), and at
    least 1, so that every class that has an image keeps one (1% of a 60-image class keeps 1, not 0)."""
    return max(1, math.floor(fraction * count + 0.5)) if count > 0 else 0


def fraction_tag(fraction: float) -> str:
    """The metric-key name of a fraction: 0.01 -> ``1pct``, 0.1 -> ``10pct``, 0.005 -> ``0.5pct``."""
    return f"{100 * fraction:g}pct"


def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices (ascending) of ``images_per_class`` images of every class, drawn without replacement by a
    generator seeded with ``seed`` (the same subset for every run evaluated with that seed: the runs of a
    comparison fit their probes on the same images). Unlabelled images (label < 0) are never chosen."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    labels = labels.cpu()
    chosen = []
    for cls in torch.unique(labels[labels >= 0]).tolist():  # ascending: the draw order is fixed
        members = torch.nonzero(labels == cls).flatten()
        keep = images_per_class(len(members), fraction)
        chosen.append(members[torch.randperm(len(members), generator=gen)[:keep]])
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(chosen).sort().values
