"""Training batches as uint8 image tensors on the training device, in a seeded, resumable order.

In-memory splits are indexed directly (on the GPU when they live there: no workers, no collate, no
host copies per step, as airbench does). Splits read from files go through a DataLoader with workers
that only decode; augmentation is the same batched code on the device in both cases.

The order of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone, so a run resumed at
any step sees exactly the batches the uninterrupted run would have seen. Under DDP every global batch
of ``batch_size`` images is cut into ``world_size`` contiguous per-rank slices, so W processes see
the same global batches as one process.

``positive_pairs=same_class`` (HCL's ``cifar100_true_label``, oracle positives): the second view of each
image is an augmentation of another training image of the same class, drawn uniformly from the class
(the image itself included) at every visit, also seeded by ``seed`` and the epoch alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from cl_suite.data.types import ImageSplit
from cl_suite.errors import as_written


POSITIVE_PAIRS = ("same_image", "same_class")
PARTNER_STREAM = 2**40  # added to the permutation's seed: the partners' draws are a stream of their own


@dataclass
class Batch:
    images: torch.Tensor  # uint8 (b, C, H, W) on the training device
    labels: torch.Tensor  # int64 (b,), -1 = unlabelled
    indices: torch.Tensor  # int64 (b,), positions in the split (memory banks key on them)
    # uint8 (b, C, H, W): the second view's images when they are not ``images`` (positive_pairs=same_class)
    pair_images: torch.Tensor | None = None


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def same_class_partners(labels: torch.Tensor, order: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """For each image of ``order`` (positions in the split), an image of its class drawn uniformly from all
    of the class's images, itself included (HCL's ``CIFAR100Pair_true_label``: ``sample(label_index[target],
    1)`` at every visit). Seeded by ``seed`` and ``epoch`` alone, so a resumed run draws the same partners.
    ``labels`` (N,) must all be >= 0."""
    classes, counts = labels.unique(return_counts=True)  # sorted classes
    members = labels.argsort(stable=True)  # the split's positions grouped by class, classes ascending
    starts = counts.cumsum(0) - counts
    slot = torch.searchsorted(classes, labels[order])
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + PARTNER_STREAM)
    uniforms = torch.rand(len(order), generator=gen, dtype=torch.float64)
    offsets = torch.minimum((uniforms * counts[slot]).long(), counts[slot] - 1)
    return members[starts[slot] + offsets]


class _Decode(Dataset):
    def __init__(self, split: ImageSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.split.read_image(i), i


class TrainBatches:
    """Iterate over the ``batch_size // world_size`` images of this rank in each global batch.

    The last incomplete global batch is dropped: contrastive losses depend on the number of negatives,
    and fixed shapes keep compiled graphs and all_gather happy. ``positive_pairs``: ``same_image`` (two
    views of each image) or ``same_class`` (module docstring; every image needs a label).
    """

    def __init__(self, split: ImageSplit, batch_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 4, data_on_device: bool = True,
                 overfit_batches: int = 0, positive_pairs: str = "same_image"):
        if positive_pairs not in POSITIVE_PAIRS:
            raise ValueError(f"trainer.positive_pairs={as_written(positive_pairs)} is not allowed: expected one of "
                             f"{', '.join(POSITIVE_PAIRS)}")
        if positive_pairs == "same_class" and bool((split.labels < 0).any()):
            unlabelled = int((split.labels < 0).sum())
            raise ValueError(f"trainer.positive_pairs=same_class needs a label for every pre-training image; "
                             f"{unlabelled} of the {len(split)} have none (an unlabelled split such as STL-10's "
                             "train+unlabeled): use a labelled split or trainer.positive_pairs=same_image")
        self.positive_pairs = positive_pairs
        if batch_size % world_size:
            raise ValueError(f"trainer.batch_size={batch_size} must be divisible by the {world_size} processes")
        if len(split) < batch_size:
            raise ValueError(f"trainer.batch_size={batch_size} is larger than the {len(split)} training images")
        self.split, self.batch_size, self.device, self.seed = split, batch_size, device, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.local_batch_size = batch_size // world_size
        # > 0: every epoch is the first ``overfit_batches`` batches of epoch 0, in the same order (a
        # debugging mode: a model that cannot drive the loss down on a few batches has a bug).
        self.overfit_batches = overfit_batches
        self.images = None
        if split.in_memory:
            self.images = split.images.to(device) if data_on_device else split.images
        self.labels = split.labels.to(device)

    def __len__(self) -> int:
        full = len(self.split) // self.batch_size
        return min(self.overfit_batches, full) if self.overfit_batches else full

    def _local_indices(self, epoch: int, start_step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's (steps, local_batch) positions of the images and, with ``same_class``, of their
        partners, from ``start_step`` on."""
        epoch = 0 if self.overfit_batches else epoch
        perm = epoch_permutation(len(self.split), self.seed, epoch)[: len(self) * self.batch_size]
        partners = None
        if self.positive_pairs == "same_class":  # drawn for the whole global epoch: every rank draws the same
            partners = self._this_rank(same_class_partners(self.split.labels, perm, self.seed, epoch), start_step)
        return self._this_rank(perm, start_step), partners

    def _this_rank(self, positions: torch.Tensor, start_step: int) -> torch.Tensor:
        return positions.view(len(self), self.world_size, self.local_batch_size)[:, self.rank][start_step:]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch``, skipping the first ``start_step`` (for a mid-epoch resume)."""
        steps, partner_steps = self._local_indices(epoch, start_step)
        if self.images is not None:
            # The epoch's indices reach the device in one copy, not one pageable (synchronous) copy per step.
            steps_dev = steps.to(self.device)
            partners_dev = None if partner_steps is None else partner_steps.to(self.device)
            for i, (idx, idx_dev) in enumerate(zip(steps, steps_dev)):
                pair_images = None
                if partner_steps is not None:
                    pair_images = self._gather(partner_steps[i], partners_dev[i])
                yield Batch(self._gather(idx, idx_dev), self.labels[idx_dev], idx_dev, pair_images)
            return
        # Files: one decoding batch per step holds the images and then their partners.
        batches = steps if partner_steps is None else torch.cat([steps, partner_steps], dim=1)
        loader = DataLoader(_Decode(self.split), batch_sampler=batches.tolist(), num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        b = self.local_batch_size
        for images, idx in loader:
            images = images.to(self.device, non_blocking=True)
            idx = idx[:b].to(self.device, non_blocking=True)
            pair_images = images[b:] if partner_steps is not None else None
            yield Batch(images[:b], self.labels[idx], idx, pair_images)

    def _gather(self, idx: torch.Tensor, idx_dev: torch.Tensor) -> torch.Tensor:
        """In-memory images at ``idx`` (host positions; ``idx_dev`` the same on the device), on the device."""
        if self.images.device == self.device:
            return self.images[idx_dev]
        # images kept on the host (data_on_device=false): gather there, copy from pinned memory
        images = self.images[idx]
        pin = self.device.type == "cuda"
        return (images.pin_memory() if pin else images).to(self.device, non_blocking=True)
