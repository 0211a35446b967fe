"""Weighted k-nearest-neighbour classification (Wu, Xiong, Yu, Lin, CVPR 2018, sec. 3.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_class_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                     num_classes: int, k: int = 200, temperature: float = 0.1,
                     chunk_size: int = 1024) -> torch.Tensor:
    """Return class scores (N_test, C): each of the ``k`` most cosine-similar training samples votes for
    its label with weight ``exp(s / temperature)``. Unlabelled training samples (label -1) are ignored.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn: need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    keep = train_labels >= 0
    train = F.normalize(train_features[keep].float(), dim=1)
    labels = train_labels[keep]
    if k > len(labels):  # refused, not clamped: the k recorded with the numbers must be the k used
        raise ValueError(f"evaluation.knn.k={k} is larger than the {len(labels)} labelled training images; lower it")
    scores = []
    for chunk in F.normalize(test_features.float(), dim=1).split(chunk_size):
        sim, idx = (chunk @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), num_classes, device=chunk.device)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Micro-averaged top-k accuracy in percent (``top1``, ``top5``): the share of images whose label is
    among their k highest scores; k is capped at the class count.

    Written out rather than taken from torchmetrics (its ``multiclass_accuracy`` with ``average="micro"``
    gives the same numbers, checked in the tests): importing torchmetrics costs ~1.5 s of every run's
    start-up for this one function. One host transfer for all k.
    """
    num_classes = scores.shape[1]
    capped = [min(k, num_classes) for k in ks]
    hits = scores.topk(max(capped), dim=1).indices == labels[:, None]  # (N, k_max): at most one True per row
    cumulative = hits.cumsum(dim=1).clamp_(max=1)  # row i, column j: label among the top j + 1
    shares = cumulative[:, [k - 1 for k in capped]].float().mean(dim=0).mul_(100.0).tolist()
    return {f"top{k}": share for k, share in zip(ks, shares)}
