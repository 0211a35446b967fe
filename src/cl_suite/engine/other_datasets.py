"""Data sets other than the pre-training one (OOD and transfer), named by their ``conf/dataset`` option.

``ood_dataset=cifar10`` reads ``conf/dataset/cifar10.yaml`` and resolves it inside the run's own
training config, so ``${paths.data_dir}`` means what it meant for the run (``CL_SUITE_DATA`` or ``data``).
"""
from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, ListConfig, OmegaConf

from cl_suite.data.augment import AugmentConfig
from cl_suite.data.types import DatasetNotFoundError, ImageDataset
from cl_suite.engine.build import build_augment_config, build_dataset
from cl_suite.errors import ConfigError, as_written
from cl_suite.paths import CONF_DIR



def dataset_names(value, key: str) -> list[str]:
    """``null`` -> [], ``cifar10`` -> [cifar10], ``[cifar10,stl10]`` -> both; names are checked."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, ListConfig)) else None
    available = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    if names is None or any(not isinstance(n, str) or n not in available for n in names):
        raise ConfigError(f"{key}={as_written(value)} is not allowed: expected a conf/dataset option (or a list of "
                          f"them), one of {available}")
    return names


def option_config(name: str) -> DictConfig:
    """The ``conf/dataset`` option ``name`` as written (unresolved)."""
    return OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml")


def reads_a_users_folder(option: DictConfig) -> bool:
    """An option without a default folder (``root: ???``): a folder of the user's own images (``imagefolder``,
    ``image_files``), at any size."""
    return OmegaConf.is_missing(option, "root")


def check_root_given(names: list[str], root: str | None, key: str, names_key: str) -> None:
    """An option that reads a user's folder needs the ``key`` setting; before: the literal ``???`` was read as
    a folder of the working directory, once the features were extracted."""
    if root is not None:
        return
    for name in names:
        if reads_a_users_folder(option_config(name)):
            raise ConfigError(f"{names_key}={name} needs {key}=<dir>: the {name} option has no default folder "
                              f"(its dataset.root is ???), e.g. {names_key}={name} {key}=/data/my_images")


def set_root(dataset: DictConfig, root: str | None, key: str) -> None:
    """Point a data set config at ``root`` (the ``key`` setting); refused for data sets that read no files."""
    if root is None:
        return
    if "root" not in dataset.keys():  # `in` alone is False for a required (???) root
        raise ConfigError(f"{key}={root} is not allowed with dataset {dataset.get('name')!r}: it reads no files "
                          "(bundled or generated data); drop the setting")
    dataset.root = str(root)


def dataset_config(name: str, run_cfg: DictConfig, root: str | None = None, key: str = "root") -> DictConfig:
    """The ``dataset`` node of option ``name``, resolved against the run's config (paths, env); ``root``
    (the ``key`` setting, e.g. ``ood_root``) replaces its ``dataset.root``.

    A folder of the user's own images (an option without a default folder: ``imagefolder``,
    ``image_files``) has no size of its own: it is framed as the run's images, stored at the run's
    ``dataset.image_size`` (its crop size where the run's data have a fixed size, as CIFAR) and centre-
    cropped by the run's ``eval_crop_fraction``. Its option's defaults (32 px, fraction 1) would present
    blurred-up 32 px images to an encoder trained at 224, a difference an OOD detector picks up."""
    cfg = OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=False))
    option = option_config(name)
    if reads_a_users_folder(option) and "image_size" in option:
        run_dataset = run_cfg.dataset
        option.image_size = run_dataset.get("image_size", run_dataset.augment.crop_size)
        option.augment.eval_crop_fraction = run_dataset.augment.eval_crop_fraction
    cfg.dataset = option  # (a copy: OmegaConf copies an assigned node)
    set_root(cfg.dataset, root, key)
    return cfg.dataset


def load_other_dataset(name: str, run_cfg: DictConfig, input_size: int, root: str | None = None,
                       key: str = "root") -> tuple[ImageDataset, AugmentConfig]:
    """The data set and its evaluation transform, presented at the encoder's input size ``input_size``.

    Its own mean/std normalise its pixels (transfer learning's usual choice); OOD detection replaces
    them with the pre-training statistics (``ood_augment_config``).
    """
    cfg = dataset_config(name, run_cfg, root, key)
    return build_dataset_for_evaluation(cfg, key, name), dataclasses.replace(build_augment_config(cfg),
                                                                             crop_size=input_size)


def build_dataset_for_evaluation(cfg: DictConfig, key: str, name: str) -> ImageDataset:
    """``build_dataset``, whose not-found message speaks evaluate.py's language: there the data set's folder
    is the ``key`` setting (``dataset_root``, ``ood_root``, ``transfer_root``), not ``dataset.root``, and
    nothing downloads it."""
    try:
        return build_dataset(cfg)
    except DatasetNotFoundError as err:
        text = str(err).replace("dataset.root=", f"{key}=").replace(
            "run once with dataset.download=true on a machine with internet access (it downloads to dataset.root)",
            f"download it once on a machine with internet access (python train.py dataset={name} "
            f"dataset.download=true dataset.root=<dir> debug=fast), then pass {key}=<dir>")
        raise DatasetNotFoundError(text) from None


def ood_augment_config(in_distribution: AugmentConfig, ood: AugmentConfig) -> AugmentConfig:
    """OOD images go through exactly the in-distribution pipeline (RINCE normalises CIFAR-10 outliers
    with CIFAR-100 statistics): a different normalisation would itself be a hint to the detector."""
    return dataclasses.replace(in_distribution, eval_crop_fraction=ood.eval_crop_fraction)
