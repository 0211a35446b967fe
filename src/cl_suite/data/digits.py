"""scikit-learn's bundled 8x8 handwritten digits as a small, real, offline image data set.

1,797 grey-scale images (pixel values 0..16) ship inside scikit-learn, so this data set needs no
download and no disk space of its own: it is what the suite's CPU tests and one-minute demo runs use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_suite.data.types import ImageDataset, ImageSplit

_MAX_PIXEL = 16.0  # the digits' pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap)

# A coarse label for methods with ranked positives (RINCE: same digit, then same stroke family), as
# CIFAR-100's 20 superclasses. Three families by the strokes that write them, fixed here so results
# compare across runs: digits with closed loops, digits of straight strokes, and open curves.
COARSE_CLASSES = ("closed loops: 0 6 8 9", "straight strokes: 1 4 7", "open curves: 2 3 5")
COARSE_OF_DIGIT = (0, 1, 2, 2, 1, 2, 0, 1, 0, 0)  # digit d belongs to COARSE_CLASSES[COARSE_OF_DIGIT[d]]


def load_digits(image_size: int = 32, test_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """Load the digits as uint8 RGB images of ``image_size`` x ``image_size``.

    The 8x8 images are upsampled with bilinear interpolation (so the CNN stems built for 32x32 CIFAR
    work unchanged), scaled to 0..255 and replicated to 3 channels (so colour augmentations and RGB
    normalisation work unchanged). The train/test split is stratified by class and fixed by
    ``split_seed``; ``pretrain`` is the train split (the same tensors). ``coarse_labels`` groups the
    digits into three stroke families (``COARSE_CLASSES``).
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"digits: image_size must be a positive integer, got {image_size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits: test_fraction must be strictly between 0 and 1, got {test_fraction!r}")

    # Imported here, not at module level: scikit-learn takes a good share of the suite's start-up, and
    # only this data set needs it.
    from sklearn.datasets import load_digits as _sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sklearn_load_digits()
    pixels = torch.from_numpy(bunch.images).float().unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    labels = torch.from_numpy(bunch.target).long()

    if image_size != pixels.shape[-1]:
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    # Bilinear interpolation of values in [0, 16] stays in [0, 16]; clamp anyway against rounding.
    images = (pixels * (255.0 / _MAX_PIXEL)).round().clamp_(0, 255).to(torch.uint8)
    images = images.expand(-1, 3, -1, -1).contiguous()

    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        stratify=labels.numpy(),
        random_state=split_seed,
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    coarse = torch.tensor(COARSE_OF_DIGIT)[labels]
    train = ImageSplit(labels=labels[train_idx], images=images[train_idx], coarse_labels=coarse[train_idx])
    test = ImageSplit(labels=labels[test_idx], images=images[test_idx], coarse_labels=coarse[test_idx])
    return ImageDataset(
        name="digits",
        pretrain=train,
        train=train,
        test=test,
        classes=[str(digit) for digit in range(10)],
        image_size=image_size,
        coarse_classes=list(COARSE_CLASSES),
    )
