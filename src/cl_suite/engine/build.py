"""Config -> objects. Shared by ``train.py`` and ``evaluate.py`` so both build exactly the same thing."""
from __future__ import annotations

from dataclasses import dataclass
from inspect import signature

import torch

from hydra.errors import InstantiationException
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from cl_suite.data.augment import AugmentConfig
from cl_suite.data.types import ImageDataset
from cl_suite.errors import ConfigError, UserError
from cl_suite.methods.base import ContrastiveMethod

# Keys of a dataset config that describe augmentation/normalisation, not arguments of its reader.
DATASET_SUITE_KEYS = ("name", "augment", "mean", "std")
UNIFORM_SAMPLER = "cl_suite.samplers.UniformSampler"


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
    if not isinstance(data, ImageDataset):
        raise ConfigError(f"dataset._target_={cfg._target_!r} returned {type(data).__name__}; expected cl_suite."
                          "data.types.ImageDataset (pretrain, train and test ImageSplits, classes, image_size)")
    data.name = cfg.name
    return data


def build_augment_config(cfg: DictConfig) -> AugmentConfig:
    return AugmentConfig.from_dict(OmegaConf.to_container(cfg.augment, resolve=True),
                                   mean=list(cfg.mean), std=list(cfg.std))


def instantiate_unwrapped(cfg: DictConfig, **kwargs):
    """``instantiate``, but a constructor's own ValueError (as a ``ConfigError``: the same text, also a
    ValueError) or OSError reaches the user as it was raised.

    Our constructors validate their arguments with messages that name the config key; Hydra would wrap
    them in an ``InstantiationException`` whose text repeats them escaped on one line.
    """
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ValueError) and not isinstance(cause, UserError):
            # A constructor refusing a config value is a config error: printed as its message alone.
            raise ConfigError(str(cause)) from cause
        if isinstance(cause, (ValueError, OSError)):
            raise cause from None
        raise


@dataclass(frozen=True)
class DatasetFacts:
    """What a method may need to know about the data it is built for, asked for by argument name."""

    num_samples: int  # size of the pre-training split (a memory bank keeps one row per image)
    num_classes: int
    steps_per_epoch: int = 1  # to turn epoch-valued method settings (KMCLR's reset interval) into steps
    coarse_of_class: torch.Tensor | None = None  # (num_classes,) superclass of each class (CIFAR-100), or None
    unlabelled: int = 0  # pre-training images without a label (-1)

    @classmethod
    def of(cls, data: ImageDataset, batch_size: int) -> "DatasetFacts":
        labels = data.pretrain.labels
        return cls(num_samples=len(data.pretrain), num_classes=data.num_classes,
                   steps_per_epoch=max(1, len(data.pretrain) // batch_size), coarse_of_class=coarse_table(data),
                   unlabelled=int((labels < 0).sum()))


def coarse_table(data: ImageDataset) -> torch.Tensor | None:
    """The superclass of each fine class, read off the training split's two label columns."""
    split = data.train
    if split.coarse_labels is None:
        return None
    table = torch.full((data.num_classes,), -1, dtype=torch.long)
    table[split.labels] = split.coarse_labels
    return table


def build_method(cfg: DictConfig, facts: DatasetFacts) -> ContrastiveMethod:
    """Backbone and sampler first, then the method that owns them (a method never builds its sampler).

    A method gets the ``DatasetFacts`` fields its constructor has an argument for (``num_samples``,
    ``num_classes``, ...). Methods without a ``sampler`` argument compute their own multi-positive loss
    (SupCon, RINCE, supervised): for them only the default ``sampler=uniform`` is accepted, so a sweep
    over samplers cannot silently train the same thing under different names.
    """
    method_cls = get_class(cfg.method._target_)
    params = signature(method_cls).parameters
    name = method_cls.__name__
    if method_cls.needs_labels and facts.unlabelled:
        raise ConfigError(f"method={name} needs a label for every pre-training image, but {facts.unlabelled} of "
                          f"{facts.num_samples} have none (e.g. STL-10's unlabeled split): choose a labelled data set "
                          "or split")
    extra = {key: getattr(facts, key) for key in ("num_samples", "num_classes", "steps_per_epoch", "coarse_of_class")
             if key in params}
    if "sampler" in params:
        extra["sampler"] = instantiate_unwrapped(cfg.sampler, _convert_="all")
    elif cfg.sampler._target_ != UNIFORM_SAMPLER:
        raise ConfigError(f"sampler._target_={cfg.sampler._target_} cannot be used with method={name}: it takes no "
                          "negative sampler, its loss is not one positive against candidate negatives (SupCon and "
                          "RINCE have several positives per anchor, the supervised baseline none); "
                          "allowed: sampler=uniform")
    backbone = instantiate_unwrapped(cfg.backbone, _convert_="all")
    check_backbone(backbone, cfg)
    return instantiate_unwrapped(cfg.method, backbone=backbone, _convert_="all", **extra)


def check_backbone(backbone: torch.nn.Module, cfg: DictConfig) -> None:
    """A backbone is used through ``num_features`` (the width of the heads' and the probe's input) and a
    forward from (n, 3, crop, crop) images to (n, num_features) features. A backbone of one's own is run
    once on two blank images (eval mode, no gradient: no BatchNorm statistic changes), so a missing
    ``num_features`` or unpooled or other-width features are named here, not as a matmul error in a head."""
    target, width = cfg.backbone._target_, getattr(backbone, "num_features", None)
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ConfigError(f"backbone._target_={target!r} has num_features={width!r}: a backbone sets "
                          "self.num_features to the width of the (n, num_features) features its forward returns")
    if target.startswith("cl_suite."):
        return
    crop, training = int(cfg.dataset.augment.crop_size), backbone.training
    try:
        with torch.no_grad():
            features = backbone.eval()(torch.zeros(2, 3, crop, crop))
    finally:
        backbone.train(training)
    shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
    if shape != (2, width):
        raise ConfigError(f"backbone._target_={target!r} returned {shape} for 2 images of "
                          f"dataset.augment.crop_size={crop}; expected (2, {width}): pooled features of its "
                          f"num_features={width}")


def build_logger(cfg: DictConfig, run_dir: str, run_config: DictConfig, run_id: str | None = None,
                 resume_step: int | None = None):
    """The ``logger`` group, given the run's resolved config as plain data (the constructor arguments are
    NullLogger's: ``resume_step`` is the step a resumed run continues from, None for a fresh run).

    ``_recursive_=False`` and ``_convert_="all"``: the run config's own ``_target_`` nodes must reach the
    logger as data, not be instantiated, and as plain dicts (wandb cannot serialise DictConfig).
    """
    return instantiate(cfg, run_dir=run_dir, run_id=run_id, resume_step=resume_step,
                       run_config=OmegaConf.to_container(run_config, resolve=True),
                       _recursive_=False, _convert_="all")
