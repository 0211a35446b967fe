"""Config -> objects. Shared by ``train.py`` and ``evaluate.py`` so both build exactly the same thing."""
from __future__ import annotations

from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from cl_suite.data.augment import AugmentConfig
from cl_suite.data.types import ImageDataset
from cl_suite.methods.base import ContrastiveMethod

# Keys of a dataset config that describe augmentation/normalisation, not arguments of its reader.
DATASET_SUITE_KEYS = ("name", "augment", "mean", "std")


def build_dataset(cfg: DictConfig) -> ImageDataset:
    """Call the reader named by ``_target_`` with the reader arguments of the dataset config.

    Called directly rather than through ``instantiate``, so that a missing data set surfaces as the
    reader's own multi-line ``DatasetNotFoundError`` instead of a wrapped, escaped one.
    """
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    reader = get_method(kwargs.pop("_target_"))
    for key in DATASET_SUITE_KEYS:
        kwargs.pop(key, None)
    data = reader(**kwargs)
    data.name = cfg.name
    return data


def build_augment_config(cfg: DictConfig) -> AugmentConfig:
    return AugmentConfig.from_dict(OmegaConf.to_container(cfg.augment, resolve=True),
                                   mean=list(cfg.mean), std=list(cfg.std))


def build_method(cfg: DictConfig) -> ContrastiveMethod:
    """Backbone and sampler first, then the method that owns them (a method never builds its sampler)."""
    backbone = instantiate(cfg.backbone, _convert_="all")
    sampler = instantiate(cfg.sampler, _convert_="all")
    return instantiate(cfg.method, backbone=backbone, sampler=sampler, _convert_="all")
