"""Config -> objects. Shared by ``train.py`` and ``evaluate.py`` so both build exactly the same thing."""
from __future__ import annotations

from inspect import signature

from hydra.errors import InstantiationException
from hydra.utils import get_class, get_method, instantiate
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


def instantiate_unwrapped(cfg: DictConfig, **kwargs):
    """``instantiate``, but a constructor's own ValueError/OSError reaches the user as it was raised.

    Our constructors validate their arguments with messages that name the config key; Hydra would wrap
    them in an ``InstantiationException`` whose text repeats them escaped on one line.
    """
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, OSError)):
            raise err.__cause__ from None
        raise


def build_method(cfg: DictConfig, num_samples: int) -> ContrastiveMethod:
    """Backbone and sampler first, then the method that owns them (a method never builds its sampler).

    ``num_samples`` (the size of the pre-training split) is passed to methods that keep one entry per
    image (a memory bank) and ask for it by having a ``num_samples`` argument.
    """
    backbone = instantiate_unwrapped(cfg.backbone, _convert_="all")
    sampler = instantiate_unwrapped(cfg.sampler, _convert_="all")
    extra = {"num_samples": num_samples} if "num_samples" in signature(get_class(cfg.method._target_)).parameters else {}
    return instantiate_unwrapped(cfg.method, backbone=backbone, sampler=sampler, _convert_="all", **extra)


def build_logger(cfg: DictConfig, run_dir: str, run_config: DictConfig, run_id: str | None = None):
    """The ``logger`` group, given the run's resolved config as plain data.

    ``_recursive_=False`` and ``_convert_="all"``: the run config's own ``_target_`` nodes must reach the
    logger as data, not be instantiated, and as plain dicts (wandb cannot serialise DictConfig).
    """
    return instantiate(cfg, run_dir=run_dir, run_id=run_id, run_config=OmegaConf.to_container(run_config, resolve=True),
                       _recursive_=False, _convert_="all")
