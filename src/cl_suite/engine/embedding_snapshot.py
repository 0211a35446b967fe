"""The embedding snapshot at the end of a run: test-set features, projected for a wandb dashboard."""
from __future__ import annotations

import io

import numpy as np
import torch

from cl_suite.data.augment import AugmentConfig
from cl_suite.data.types import ImageSplit
from cl_suite.eval.protocols import encode_split


def principal_components(features: torch.Tensor, n: int) -> torch.Tensor:
    """``(N, min(n, N, D))`` coordinates on the top principal components, signs fixed for reproducibility
    (each component's largest-magnitude coordinate is positive)."""
    x = features.double().cpu()
    x = x - x.mean(dim=0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    coords = u[:, :n] * s[:n]
    signs = torch.sign(coords.gather(0, coords.abs().argmax(dim=0, keepdim=True)))
    return (coords * torch.where(signs == 0, 1.0, signs)).float()


def scatter_image(coords: torch.Tensor, labels: list[int]) -> np.ndarray:
    """A small PNG-ready uint8 (H, W, 3) scatter plot of 2-D points coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    try:
        ax.scatter(coords[:, 0].numpy(), coords[:, 1].numpy(), c=labels, cmap="tab20", s=4)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="raw")
        width, height = fig.canvas.get_width_height()
    finally:
        plt.close(fig)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).reshape(height, width, 4)[..., :3].copy()


def evenly_spaced_subset(split: ImageSplit, points: int) -> ImageSplit:
    """At most ``points`` images, evenly spaced over the split (every class of a class-sorted split)."""
    index = torch.linspace(0, len(split) - 1, min(points, len(split))).round().long().unique()
    coarse = split.coarse_labels[index] if split.coarse_labels is not None else None
    if split.in_memory:
        return ImageSplit(labels=split.labels[index], images=split.images[index], coarse_labels=coarse)
    return ImageSplit(labels=split.labels[index], read_image=lambda i: split.read_image(int(index[i])),
                      coarse_labels=coarse)


def log_embedding_snapshot(logger, method: torch.nn.Module, split: ImageSplit, aug_cfg: AugmentConfig,
                           device: torch.device, points: int, class_names: list[str] | None = None,
                           channels_last: bool = False) -> None:
    """Encode up to ``points`` images of ``split`` (frozen, un-augmented) and hand them to the logger.

    Nothing is encoded when the logger keeps no media (``logger=none``) or ``points`` is 0.
    """
    if not getattr(logger, "wants_media", False) or not points or len(split) == 0:
        return
    subset = evenly_spaced_subset(split, points)
    was_training = method.training
    method.eval()
    try:
        features, labels = encode_split(method.encode, subset, aug_cfg, device, batch_size=512,
                                        channels_last=channels_last)
    finally:
        method.train(was_training)
    logger.log_embeddings("embeddings/test", features, labels, class_names)
