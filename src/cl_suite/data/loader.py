"""Training batches as uint8 image tensors on the training device, in a seeded, resumable order.

In-memory splits are indexed directly (on the GPU when they live there: no workers, no collate, no
host copies per step, as airbench does). Splits read from files go through a DataLoader with workers
that only decode; augmentation is the same batched code on the device in both cases.

The order of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone, so a run resumed at
any step sees exactly the batches the uninterrupted run would have seen. Under DDP every global batch
of ``batch_size`` images is cut into ``world_size`` contiguous per-rank slices, so W processes see
the same global batches as one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from cl_suite.data.types import ImageSplit


@dataclass
class Batch:
    images: torch.Tensor  # uint8 (b, C, H, W) on the training device
    labels: torch.Tensor  # int64 (b,), -1 = unlabelled
    indices: torch.Tensor  # int64 (b,), positions in the split (memory banks key on them)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


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
    and fixed shapes keep compiled graphs and all_gather happy.
    """

    def __init__(self, split: ImageSplit, batch_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 4, data_on_device: bool = True,
                 overfit_batches: int = 0):
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

    def _local_indices(self, epoch: int, start_step: int) -> torch.Tensor:
        epoch = 0 if self.overfit_batches else epoch
        perm = epoch_permutation(len(self.split), self.seed, epoch)[: len(self) * self.batch_size]
        per_step = perm.view(len(self), self.world_size, self.local_batch_size)[:, self.rank]
        return per_step[start_step:]  # (steps, local_batch)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch``, skipping the first ``start_step`` (for a mid-epoch resume)."""
        steps = self._local_indices(epoch, start_step)
        if self.images is not None:
            # The epoch's indices reach the device in one copy, not one pageable (synchronous) copy per step.
            steps_dev = steps.to(self.device)
            pin = self.device.type == "cuda" and self.images.device.type == "cpu"
            for idx, idx_dev in zip(steps, steps_dev):
                if self.images.device == self.device:
                    images = self.images[idx_dev]
                else:  # images kept on the host (data_on_device=false): gather there, copy from pinned memory
                    images = self.images[idx]
                    images = (images.pin_memory() if pin else images).to(self.device, non_blocking=True)
                yield Batch(images, self.labels[idx_dev], idx_dev)
            return
        loader = DataLoader(_Decode(self.split), batch_sampler=steps.tolist(), num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for images, idx in loader:
            idx = idx.to(self.device, non_blocking=True)
            yield Batch(images.to(self.device, non_blocking=True), self.labels[idx], idx)
