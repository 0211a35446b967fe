"""The evaluation protocols on frozen features; each returns ``{"<protocol>/<metric>": value}``.

Features of a data set's labelled train split and test split are extracted once (``encode_splits``)
and every protocol reads them: kNN, the linear probe, retrieval and the in-distribution half of OOD
detection share one pass over the data. Only ``ood`` and ``transfer`` encode a second data set.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch
from omegaconf import DictConfig

from cl_suite.data.augment import AugmentConfig, eval_transform
from cl_suite.data.types import ImageDataset, ImageSplit
from cl_suite.errors import ConfigError
from cl_suite.eval.features import extract_features
from cl_suite.eval.knn import knn_class_scores, topk_accuracy
from cl_suite.eval.linear import train_linear_classifier
from cl_suite.eval.lowshot import class_balanced_subset, fraction_tag
from cl_suite.eval.ood import OOD_SCORES, class_gaussian_ood_score, knn_ood_score, ood_detection_metrics
from cl_suite.eval.retrieval import retrieval_metrics

PROTOCOLS = ("linear", "knn", "retrieval", "ood", "transfer", "lowshot")


@dataclass
class SplitFeatures:
    """Frozen, un-augmented features of one data set; flipped train features only when asked for."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    train_coarse_labels: torch.Tensor | None
    test_coarse_labels: torch.Tensor | None
    encode_flipped_train: Callable[[], torch.Tensor] = field(repr=False)
    _flipped: torch.Tensor | None = field(default=None, repr=False)

    def flipped_train(self) -> torch.Tensor:
        if self._flipped is None:
            self._flipped = self.encode_flipped_train()
        return self._flipped


def encode_split(encode: Callable[[torch.Tensor], torch.Tensor], split: ImageSplit, aug_cfg: AugmentConfig,
                 device: torch.device, batch_size: int, flip: bool = False,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)`` of one split through the evaluation transform of ``aug_cfg``."""
    return extract_features(encode, split, lambda x: eval_transform(x, aug_cfg), device,
                            batch_size=batch_size, flip=flip, channels_last=channels_last)


def encode_splits(encode: Callable[[torch.Tensor], torch.Tensor], data: ImageDataset, aug_cfg: AugmentConfig,
                  device: torch.device, batch_size: int, channels_last: bool = False) -> SplitFeatures:
    """Encode ``data.train`` and ``data.test`` with ``encode`` (the caller puts the encoder in eval mode)."""
    def features(split, flip=False):
        return encode_split(encode, split, aug_cfg, device, batch_size, flip=flip, channels_last=channels_last)

    train_x, train_y = features(data.train)
    test_x, test_y = features(data.test)
    coarse = [s.coarse_labels.to(device) if s.coarse_labels is not None else None for s in (data.train, data.test)]
    return SplitFeatures(train_x, train_y, test_x, test_y, *coarse,
                         encode_flipped_train=lambda: features(data.train, flip=True)[0])


def knn_metrics(feats: SplitFeatures, num_classes: int, cfg: DictConfig) -> dict[str, float]:
    """Weighted kNN top-1/top-5 on the test split, the train split as memory (``evaluation.knn``)."""
    scores = knn_class_scores(feats.train, feats.train_labels, feats.test, num_classes, k=cfg.k,
                              temperature=cfg.temperature)
    return {f"knn/{k}": v for k, v in topk_accuracy(scores, feats.test_labels).items()}


def linear_metrics(feats: SplitFeatures, num_classes: int, cfg: DictConfig, seed: int,
                   prefix: str = "linear/") -> dict[str, float]:
    """The offline linear probe on cached features (``evaluation.linear``)."""
    variants = [feats.train] + ([feats.flipped_train()] if cfg.flip_augment else [])
    result = train_linear_classifier(variants, feats.train_labels, feats.test, feats.test_labels, num_classes,
                                     epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                     momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                     standardize=cfg.standardize, seed=seed)
    return {f"{prefix}{k}": v for k, v in result.items()}


def lowshot_protocol_metrics(feats: SplitFeatures, num_classes: int, cfg: DictConfig,
                             seed: int) -> dict[str, float]:
    """For each fraction of ``evaluation.lowshot.fractions``: the linear probe (``evaluation.linear``) and
    kNN (``evaluation.knn``) fitted on a class-balanced subset of the labelled train features
    (``eval.lowshot``), scored on the whole test split: ``lowshot/<tag>/linear_top1`` ...
    ``lowshot/<tag>/knn_top5`` (tag ``1pct`` for 0.01). With ``evaluation.lowshot.draws`` = n, n subsets
    (drawn with ``seed``, ``seed + 1``, ...; the probe's own seed stays ``seed``) and each number is the
    mean over them, with its sample standard deviation as ``<key>_std`` when n > 1. A subset smaller than
    ``evaluation.knn.k`` votes with all its images; the k used is recorded as ``lowshot/<tag>/knn_k``."""
    out: dict[str, float] = {}
    draws = int(cfg.lowshot.get("draws", 1))
    for fraction in cfg.lowshot.fractions:
        tag = f"lowshot/{fraction_tag(float(fraction))}"
        per_draw: list[dict[str, float]] = []
        for draw in range(draws):
            index = class_balanced_subset(feats.train_labels, float(fraction), seed + draw).to(feats.train.device)
            subset = SplitFeatures(feats.train[index], feats.train_labels[index], feats.test, feats.test_labels,
                                   None, None, encode_flipped_train=lambda index=index: feats.flipped_train()[index])
            numbers = linear_metrics(subset, num_classes, cfg.linear, seed, prefix=f"{tag}/linear_")
            knn_cfg = {"k": min(int(cfg.knn.k), len(index)), "temperature": cfg.knn.temperature}
            numbers.update({f"{tag}/knn_{k.split('/', 1)[1]}": v
                            for k, v in knn_metrics(subset, num_classes, DictConfig(knn_cfg)).items()})
            per_draw.append(numbers)
        for key in per_draw[0]:
            values = [numbers[key] for numbers in per_draw]
            out[key] = statistics.fmean(values)
            if draws > 1:
                out[f"{key}_std"] = statistics.stdev(values)
        out[f"{tag}/knn_k"] = float(knn_cfg["k"])  # the same for every draw: the subsets have one size
    return out


def online_probe_metrics(probe: torch.nn.Module, feats: SplitFeatures) -> dict[str, float]:
    """The checkpoint's online probe (trained during pre-training) applied to the frozen test features."""
    with torch.no_grad():
        logits = probe.linear(feats.test)
    return {f"online_probe/test_{k}": v for k, v in topk_accuracy(logits, feats.test_labels).items()}


def retrieval_protocol_metrics(feats: SplitFeatures, cfg: DictConfig) -> dict[str, float]:
    """Test images query the train split (RINCE); with coarse labels (CIFAR-100) also at superclass level."""
    ks = tuple(cfg.ks)
    out = {f"retrieval/{k}": v for k, v in retrieval_metrics(
        feats.test, feats.test_labels, feats.train, feats.train_labels, ks=ks).items()}
    if feats.train_coarse_labels is not None and feats.test_coarse_labels is not None:
        coarse_db = torch.where(feats.train_labels >= 0, feats.train_coarse_labels, -1)
        out.update({f"retrieval/coarse/{k}": v for k, v in retrieval_metrics(
            feats.test, feats.test_coarse_labels, feats.train, coarse_db, ks=ks).items()})
    return out


def ood_scores(feats: SplitFeatures, images_features: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """The configured in-distribution-ness score (``evaluation.ood.score``) of some features."""
    if cfg.score == "knn":
        return knn_ood_score(feats.train, images_features, k=cfg.k)
    if cfg.score == "gmm":
        return class_gaussian_ood_score(feats.train, feats.train_labels, images_features, reg_covar=cfg.reg_covar)
    raise ConfigError(f"evaluation.ood.score={cfg.score!r} is not one of {OOD_SCORES}")


def ood_protocol_metrics(feats: SplitFeatures, ood_test_features: torch.Tensor, ood_name: str,
                         cfg: DictConfig) -> dict[str, float]:
    """AUROC / FPR@95 of the in-distribution test split (positives) against an OOD data set's test split."""
    metrics = ood_detection_metrics(ood_scores(feats, feats.test, cfg), ood_scores(feats, ood_test_features, cfg))
    return {f"ood/{ood_name}/{k}": v for k, v in metrics.items()}


def transfer_protocol_metrics(feats: SplitFeatures, num_classes: int, name: str, cfg: DictConfig,
                              seed: int) -> dict[str, float]:
    """Linear probe (``evaluation.linear`` settings) and kNN on another data set's frozen features."""
    out = linear_metrics(feats, num_classes, cfg.linear, seed, prefix=f"transfer/{name}/linear_")
    out.update({f"transfer/{name}/{k.replace('/', '_')}": v for k, v in knn_metrics(feats, num_classes, cfg.knn).items()})
    return out


def check_protocols(protocols, ood_datasets: list[str], transfer_datasets: list[str]) -> list[str]:
    """The requested protocol list, validated: known names, and the data sets ood/transfer need."""
    names = [protocols] if isinstance(protocols, str) else list(protocols)
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown or not names:
        raise ConfigError(f"protocol={names} is not allowed: choose one or more of {list(PROTOCOLS)}, "
                         f"e.g. protocol=[linear,knn,retrieval]")
    if "ood" in names and not ood_datasets:
        raise ConfigError("protocol=ood needs ood_dataset=<a conf/dataset option>, e.g. ood_dataset=cifar10")
    if "transfer" in names and not transfer_datasets:
        raise ConfigError("protocol=transfer needs transfer_dataset=<a conf/dataset option>, e.g. transfer_dataset=cifar10")
    return list(dict.fromkeys(names))
