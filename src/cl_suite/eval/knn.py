"""Weighted k-nearest-neighbour classification (Wu, Xiong, Yu, Lin, CVPR 2018, sec. 3.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy


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
    """Micro-averaged top-k accuracy in percent (``top1``, ``top5``); k is capped at the class count.

    ``average="micro"`` explicitly: torchmetrics defaults to macro, which is not the usual top-k number.
    """
    num_classes = scores.shape[1]
    return {
        f"top{k}": 100.0 * multiclass_accuracy(scores, labels, num_classes=num_classes, top_k=min(k, num_classes),
                                               average="micro").item()
        for k in ks
    }
