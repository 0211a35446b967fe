"""Frozen-encoder feature extraction: one pass over a split, un-augmented, BN in eval mode."""
from __future__ import annotations

from typing import Callable

import torch

from cl_suite.data.types import ImageSplit


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    split: ImageSplit,
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
    flip: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(features (N, F) float32, labels (N,))`` on ``device``.

    ``transform`` maps a uint8 batch already on ``device`` to the normalised float input (the eval
    transform); ``flip=True`` encodes the horizontally flipped images instead. The caller puts the
    encoder in eval mode: the features must not depend on the batch composition.
    """
    feats = []
    for start in range(0, len(split), batch_size):
        idx = range(start, min(start + batch_size, len(split)))
        if split.images is not None:
            images = split.images[start:idx.stop]
        else:
            images = torch.stack([split.read_image(i) for i in idx])
        x = transform(images.to(device, non_blocking=True))
        if flip:
            x = x.flip(-1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(encode(x).float())
    return torch.cat(feats), split.labels.to(device)
