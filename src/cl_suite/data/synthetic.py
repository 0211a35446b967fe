"""A tiny generated image data set for tests: learnable, deterministic, no files.

Each class is a fixed random low-frequency colour pattern (a few random colours smoothly blended over
the image). An image is a randomly shifted window of its class pattern plus pixel noise, so a model has
to learn something shift-tolerant, as on real images, yet a small CNN separates the classes in seconds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_suite.data.types import ImageDataset, ImageSplit

_GRID = 4  # control points per side of a class pattern: low enough to be smooth, high enough to differ
_NOISE_STD = 0.08  # per-pixel noise, on the 0..1 scale


def _class_patterns(num_classes: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(num_classes, 3, size, size)`` smooth colour patterns in [0, 1]."""
    control = torch.rand((num_classes, 3, _GRID, _GRID), generator=generator)
    return F.interpolate(control, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)


def _make_split(
    patterns: torch.Tensor, per_class: int, image_size: int, generator: torch.Generator
) -> ImageSplit:
    num_classes, max_shift = len(patterns), patterns.shape[-1] - image_size
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    offsets = torch.randint(0, max_shift + 1, (len(labels), 2), generator=generator)
    windows = torch.stack([
        patterns[label, :, top : top + image_size, left : left + image_size]
        for label, (top, left) in zip(labels.tolist(), offsets.tolist())
    ]) if len(labels) else torch.empty((0, 3, image_size, image_size))
    noisy = windows + _NOISE_STD * torch.randn(windows.shape, generator=generator)
    images = (noisy * 255).round().clamp(0, 255).to(torch.uint8)
    return ImageSplit(labels=labels, images=images)


def load_synthetic(
    num_classes: int = 4,
    train_per_class: int = 32,
    test_per_class: int = 8,
    image_size: int = 16,
    seed: int = 0,
) -> ImageDataset:
    """``num_classes`` classes of ``image_size`` x ``image_size`` RGB images; same ``seed``, same tensors.

    Images are ordered by class. ``pretrain`` is the train split.
    """
    for key, value, low in [("num_classes", num_classes, 2), ("train_per_class", train_per_class, 1),
                            ("test_per_class", test_per_class, 1), ("image_size", image_size, 4)]:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"synthetic: {key} must be an integer >= {low}, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    # Patterns are 1.5x the image size: shifts of up to half an image move the content visibly.
    patterns = _class_patterns(num_classes, image_size + image_size // 2, generator)
    train = _make_split(patterns, train_per_class, image_size, generator)
    test = _make_split(patterns, test_per_class, image_size, generator)
    return ImageDataset(
        name="synthetic",
        pretrain=train,
        train=train,
        test=test,
        classes=[f"class{index}" for index in range(num_classes)],
        image_size=image_size,
    )
