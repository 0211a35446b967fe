"""Out-of-distribution detection from frozen features: a score per image, AUROC in-distribution vs OOD.

Convention (RINCE's ``out_of_dist_detection.py``): the score measures in-distribution-ness, the
in-distribution test images are the positives (label 1), the OOD images the negatives (label 0).

Two scores, both fitted on the L2-normalised features of the labelled train split:

* ``knn`` (default): cosine similarity to the k-th nearest training feature (Sun, Ming, Zhu, Li,
  "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022). No labels, no density
  model, no covariance: it suits self-supervised features of any width and costs one kNN search.
* ``gmm``: RINCE's score, the maximum over classes of the log-likelihood under a Gaussian fitted to
  that class (``GaussianMixture(n_components=1, covariance_type="full")`` per class). One EM component
  started at the class mean converges to the sample mean and the biased sample covariance, to which
  sklearn adds ``reg_covar`` on the diagonal; here that fit is computed directly. With fewer samples
  per class than feature dimensions (RINCE: 500 in 2048-d) the covariance is singular and ``reg_covar``
  decides the result, which is why it is not the default.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OOD_SCORES = ("knn", "gmm")


@torch.no_grad()
def knn_ood_score(train_features: torch.Tensor, features: torch.Tensor, k: int = 50,
                  chunk_size: int = 1024) -> torch.Tensor:
    """Cosine similarity of each row of ``features`` to its k-th nearest row of ``train_features``."""
    if k < 1:
        raise ValueError(f"evaluation.ood.k must be >= 1, got {k}")
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, len(train))
    return torch.cat([(chunk @ train.T).topk(k, dim=1).values[:, -1]
                      for chunk in F.normalize(features.float(), dim=1).split(chunk_size)])


@torch.no_grad()
def class_gaussian_ood_score(train_features: torch.Tensor, train_labels: torch.Tensor, features: torch.Tensor,
                             reg_covar: float = 1e-6) -> torch.Tensor:
    """Max over classes of the Gaussian log-likelihood (full covariance + ``reg_covar`` I), in float64.

    Features are L2-normalised first, as in RINCE. Training samples labelled -1 are ignored.
    """
    if reg_covar <= 0:
        raise ValueError(f"evaluation.ood.reg_covar must be > 0, got {reg_covar}")
    train = F.normalize(train_features.double(), dim=1)
    x = F.normalize(features.double(), dim=1)
    dim = x.shape[1]
    best = torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
    for label in train_labels[train_labels >= 0].unique():
        members = train[train_labels == label]
        mean = members.mean(dim=0)
        centred = members - mean
        cov = centred.T @ centred / len(members) + reg_covar * torch.eye(dim, dtype=torch.float64, device=x.device)
        chol = torch.linalg.cholesky(cov)
        z = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False)  # (dim, N): whitened residuals
        log_det = 2.0 * chol.diagonal().log().sum()
        loglik = -0.5 * (dim * math.log(2 * math.pi) + log_det + (z * z).sum(dim=0))
        best = torch.maximum(best, loglik)
    return best


def ood_detection_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """``auroc`` (inliers = 1) and ``fpr95`` (OOD images accepted at 95% inlier recall), in percent."""
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise ValueError("OOD detection needs in-distribution and out-of-distribution test images")
    # Imported here: torchmetrics costs ~1.5 s at import, and only evaluate.py's OOD protocol needs it.
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    scores = torch.cat([in_scores, out_scores]).double()
    target = torch.cat([torch.ones(len(in_scores)), torch.zeros(len(out_scores))]).long().to(scores.device)
    # torchmetrics passes scores outside [0, 1] through a sigmoid, which saturates (ties) for large
    # log-likelihoods; dense ranks in [0, 1] keep the order and the ties and need no squashing.
    values, rank = torch.unique(scores, return_inverse=True)
    ranked = rank.double() / max(len(values) - 1, 1)
    auroc = binary_auroc(ranked, target).item()  # exact: no thresholds
    fpr, tpr, _ = binary_roc(ranked, target)
    fpr95 = fpr[tpr >= 0.95].min().item()
    return {"auroc": 100.0 * auroc, "fpr95": 100.0 * fpr95}
