"""CIFAR-10 and CIFAR-100 read straight from the official python pickles.

torchvision's ``CIFAR10``/``CIFAR100`` classes md5-hash ~170 MB on every construction and decode one
PIL image per ``__getitem__``; here each split is read once into a single uint8 ``(N, 3, 32, 32)``
tensor with a numpy reshape (the pickles store each image as 3072 bytes: the red plane, then green,
then blue, each row-major 32x32). torchvision is used only to download, and for the optional md5 check.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets.utils import check_integrity

from cl_suite.data.types import DatasetNotFoundError, ImageDataset, ImageSplit

_IMAGE_SIZE = 32


def missing_files_error(
    name: str, root: Path, sub_folder: str, files: list[str], missing: list[str], root_hint: str
) -> DatasetNotFoundError:
    """The error for a data set that is not on disk: where we looked, what we expected, how to fix it.

    Shared by the CIFAR and STL-10 readers, because torchvision's own message ("Dataset not found or
    corrupted") names neither the path nor the fix.
    """
    folder = root / sub_folder
    return DatasetNotFoundError(
        f"{name} not found: looked in {folder} (dataset.root={root}).\n"
        f"  expected the sub-folder '{sub_folder}' with files: {', '.join(files)}\n"
        f"  missing: {', '.join(missing)}\n"
        f"Fix it either way:\n"
        f"  - run once with dataset.download=true on a machine with internet access (it downloads to dataset.root), or\n"
        f"  - set dataset.root=<dir that contains {sub_folder}> ({root_hint})."
    )


def _unpickle(path: Path) -> dict:
    # The files were pickled by Python 2: latin1 turns its byte strings into str keys (as torchvision does).
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _read_batches(folder: Path, files: list[str], label_keys: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Concatenate pickled batch files into one image tensor and one int64 tensor per label key."""
    images, labels = [], {key: [] for key in label_keys}
    for file in files:
        batch = _unpickle(folder / file)
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * _IMAGE_SIZE * _IMAGE_SIZE:
            raise ValueError(f"{folder / file}: 'data' should be uint8 (N, 3072), got shape {data.shape}")
        images.append(data.reshape(-1, 3, _IMAGE_SIZE, _IMAGE_SIZE))
        for key in label_keys:
            if key not in batch:
                raise ValueError(f"{folder / file}: no '{key}' entry (keys: {sorted(batch)})")
            if len(batch[key]) != len(data):
                raise ValueError(f"{folder / file}: {len(data)} images but {len(batch[key])} '{key}'")
            labels[key].append(np.asarray(batch[key], dtype=np.int64))
    return (
        torch.from_numpy(np.concatenate(images)),
        [torch.from_numpy(np.concatenate(labels[key])) for key in label_keys],
    )


def _prepare(
    name: str,
    tv_class: type,
    root: str | os.PathLike,
    download: bool,
    verify_integrity: bool,
    root_hint: str,
) -> Path:
    """Download if asked, check that every file is there (and, if asked, its md5); return the folder."""
    root_path = Path(root).expanduser().resolve()
    if download:
        try:
            # Constructing the torchvision class downloads, extracts and md5-checks every file.
            tv_class(str(root_path), train=True, download=True)
        except Exception as err:  # offline machines fail here with a URLError
            raise RuntimeError(f"{name}: download to {root_path} failed: {err}") from err

    folder = root_path / tv_class.base_folder
    checked = tv_class.train_list + tv_class.test_list + [[tv_class.meta["filename"], tv_class.meta["md5"]]]
    files = [file for file, _ in checked]
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        raise missing_files_error(name, root_path, tv_class.base_folder, files, missing, root_hint)

    if verify_integrity:
        corrupt = [file for file, md5 in checked if not check_integrity(str(folder / file), md5)]
        if corrupt:
            raise RuntimeError(
                f"{name}: md5 mismatch in {folder} for {', '.join(corrupt)}. The files are damaged or not the "
                "official release: delete the folder and run with dataset.download=true, or set "
                "dataset.verify_integrity=false to use them anyway."
            )
    return folder


def load_cifar10(root: str | os.PathLike, download: bool = False, verify_integrity: bool = False) -> ImageDataset:
    """CIFAR-10 from ``<root>/cifar-10-batches-py``: 50,000 train and 10,000 test images, 10 classes.

    ``pretrain`` is the train split. ``verify_integrity`` md5-checks the files against torchvision's
    checksums (seconds; off by default for repeated runs on trusted data).
    """
    tv = torchvision.datasets.CIFAR10
    folder = _prepare("CIFAR-10", tv, root, download, verify_integrity, "the folder cifar-10-python.tar.gz unpacks into")
    train_images, (train_labels,) = _read_batches(folder, [f for f, _ in tv.train_list], ["labels"])
    test_images, (test_labels,) = _read_batches(folder, [f for f, _ in tv.test_list], ["labels"])
    classes = list(_unpickle(folder / tv.meta["filename"])["label_names"])
    train = ImageSplit(labels=train_labels, images=train_images)
    return ImageDataset(
        name="cifar10",
        pretrain=train,
        train=train,
        test=ImageSplit(labels=test_labels, images=test_images),
        classes=classes,
        image_size=_IMAGE_SIZE,
    )


def load_cifar100(root: str | os.PathLike, download: bool = False, verify_integrity: bool = False) -> ImageDataset:
    """CIFAR-100 from ``<root>/cifar-100-python``: 50,000 train and 10,000 test images.

    ``labels``/``classes`` are the 100 fine classes; ``coarse_labels``/``coarse_classes`` the 20
    superclasses. ``pretrain`` is the train split.
    """
    tv = torchvision.datasets.CIFAR100
    folder = _prepare("CIFAR-100", tv, root, download, verify_integrity, "the folder cifar-100-python.tar.gz unpacks into")
    keys = ["fine_labels", "coarse_labels"]
    train_images, (train_fine, train_coarse) = _read_batches(folder, [f for f, _ in tv.train_list], keys)
    test_images, (test_fine, test_coarse) = _read_batches(folder, [f for f, _ in tv.test_list], keys)
    meta = _unpickle(folder / tv.meta["filename"])
    train = ImageSplit(labels=train_fine, images=train_images, coarse_labels=train_coarse)
    return ImageDataset(
        name="cifar100",
        pretrain=train,
        train=train,
        test=ImageSplit(labels=test_fine, images=test_images, coarse_labels=test_coarse),
        classes=list(meta["fine_label_names"]),
        image_size=_IMAGE_SIZE,
        coarse_classes=list(meta["coarse_label_names"]),
    )
