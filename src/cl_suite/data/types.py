"""The containers every data set reader returns and every loader consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from cl_suite.errors import UserError


@dataclass
class ImageSplit:
    """One split of a data set: images held in memory as one uint8 tensor, or read lazily from files.

    Exactly one of ``images`` (uint8, ``(N, C, H, W)``, every image already at the data set's storage
    size) and ``read_image`` (index -> uint8 ``(C, H, W)`` tensor at that size, for data too large for
    memory) is set. ``labels`` is int64 ``(N,)`` with -1 for unlabelled images (STL-10's unlabeled split).
    ``coarse_labels`` is set where the data set has a second, coarser label (CIFAR-100's 20 superclasses).
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    read_image: Callable[[int], torch.Tensor] | None = None
    coarse_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.images is None) == (self.read_image is None):
            raise ValueError("ImageSplit needs exactly one of `images` (in memory) or `read_image` (lazy)")
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.ndim != 4:
                raise ValueError(
                    f"ImageSplit.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
                )
            if len(self.images) != len(self.labels):
                raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None


@dataclass
class ImageDataset:
    """A data set as the suite uses it.

    ``pretrain`` is what self-supervised training iterates over (may be unlabelled, e.g. STL-10
    train+unlabeled); ``train`` is the labelled split the kNN memory and the linear probe are fitted
    on; ``test`` is what accuracies are reported on.
    """

    name: str
    pretrain: ImageSplit
    train: ImageSplit
    test: ImageSplit
    classes: list[str]
    image_size: int  # storage size (square); augmentation crops from it
    channels: int = 3
    coarse_classes: list[str] | None = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A data set is not where the config says. The message names the path looked at and both fixes."""


class CorruptDataError(UserError, ValueError):
    """A data file whose content breaks its format's rules (wrong dtype, values out of range, a label
    outside the classes, a pickle that asks to run code). The message names the file, the field and the
    offending value; nothing from the file is used."""
