"""STL-10 read straight from the official binaries in ``<root>/stl10_binary``.

Each ``*_X.bin`` is raw uint8, 3 x 96 x 96 bytes per image, each colour plane stored column-major
(Matlab order): reshaping to (N, 3, 96, 96) gives (N, C, W, H), so the last two axes are swapped, as
torchvision does. ``*_y.bin`` holds one uint8 label 1..10 per image. The unlabeled file is 2.7 GB, so
it is memory-mapped and copied in chunks into the one tensor that holds train+unlabeled, rather than
read whole and transposed (which would need two extra copies of it in memory).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cl_suite.data.cifar import missing_files_error
from cl_suite.data.types import ImageDataset, ImageSplit

_IMAGE_SIZE = 96
_BYTES_PER_IMAGE = 3 * _IMAGE_SIZE * _IMAGE_SIZE
_CHUNK = 4096  # images per copy from the memory map: ~113 MB of scratch memory at most
PRETRAIN_SPLITS = ("train+unlabeled", "train")


def _count_images(path: Path) -> int:
    size = path.stat().st_size
    if size % _BYTES_PER_IMAGE:
        raise ValueError(
            f"{path}: {size} bytes is not a whole number of 3x96x96 images ({_BYTES_PER_IMAGE} bytes each); "
            "the file is truncated or not an STL-10 image file"
        )
    return size // _BYTES_PER_IMAGE


def _read_images_into(path: Path, out: torch.Tensor) -> None:
    """Copy the images of ``path`` into ``out`` (uint8 (N, 3, 96, 96)), fixing the column-major layout."""
    if len(out) == 0:
        return  # numpy cannot memory-map an empty file
    stored = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, _IMAGE_SIZE, _IMAGE_SIZE)
    target = out.numpy()
    for start in range(0, len(stored), _CHUNK):
        target[start : start + _CHUNK] = stored[start : start + _CHUNK].transpose(0, 1, 3, 2)
    del stored  # closes the memory map


def _read_labels(path: Path, expected: int) -> torch.Tensor:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # 1..10 on disk -> 0..9
    if len(labels) != expected:
        raise ValueError(f"{path}: {len(labels)} labels for {expected} images")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be 1..10 on disk, found {labels.min() + 1}..{labels.max() + 1}")
    return torch.from_numpy(labels)


def load_stl10(
    root: str | os.PathLike, download: bool = False, pretrain_split: str = "train+unlabeled"
) -> ImageDataset:
    """STL-10: 5,000 labelled train, 8,000 test and 100,000 unlabelled 96x96 images, 10 classes.

    ``pretrain_split`` is ``"train+unlabeled"`` (the usual self-supervised setting; unlabelled images
    have label -1) or ``"train"`` (the unlabeled file is then not read). ``train`` and ``test`` are the
    labelled splits.
    """
    if pretrain_split not in PRETRAIN_SPLITS:
        raise ValueError(f"stl10: pretrain_split must be one of {list(PRETRAIN_SPLITS)}, got {pretrain_split!r}")
    use_unlabeled = pretrain_split == "train+unlabeled"

    root_path = Path(root).expanduser().resolve()
    if download:
        import torchvision  # here: torchvision costs ~2 s at import and only the download needs it

        try:
            # Constructing the torchvision class downloads, extracts and md5-checks every file.
            torchvision.datasets.STL10(str(root_path), split="train", download=True)
        except Exception as err:  # offline machines fail here with a URLError
            raise RuntimeError(f"STL-10: download to {root_path} failed: {err}") from err

    folder = root_path / "stl10_binary"
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    if use_unlabeled:
        files.append("unlabeled_X.bin")
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        raise missing_files_error(
            "STL-10", root_path, "stl10_binary", files, missing, "the folder stl10_binary.tar.gz unpacks into"
        )

    n_train = _count_images(folder / "train_X.bin")
    n_unlabeled = _count_images(folder / "unlabeled_X.bin") if use_unlabeled else 0
    # One tensor for train (+ unlabeled): the train split is a view of its first rows, not a copy.
    pretrain_images = torch.empty((n_train + n_unlabeled, 3, _IMAGE_SIZE, _IMAGE_SIZE), dtype=torch.uint8)
    _read_images_into(folder / "train_X.bin", pretrain_images[:n_train])
    if use_unlabeled:
        _read_images_into(folder / "unlabeled_X.bin", pretrain_images[n_train:])
    train_labels = _read_labels(folder / "train_y.bin", n_train)
    train = ImageSplit(labels=train_labels, images=pretrain_images[:n_train])

    test_images = torch.empty((_count_images(folder / "test_X.bin"), 3, _IMAGE_SIZE, _IMAGE_SIZE), dtype=torch.uint8)
    _read_images_into(folder / "test_X.bin", test_images)
    test = ImageSplit(labels=_read_labels(folder / "test_y.bin", len(test_images)), images=test_images)

    if use_unlabeled:
        unlabeled = torch.full((n_unlabeled,), -1, dtype=torch.int64)
        pretrain = ImageSplit(labels=torch.cat([train_labels, unlabeled]), images=pretrain_images)
    else:
        pretrain = train

    classes = [line.strip() for line in (folder / "class_names.txt").read_text().splitlines() if line.strip()]
    if len(classes) != 10:
        raise ValueError(f"{folder / 'class_names.txt'}: expected 10 class names, found {len(classes)}")
    return ImageDataset(
        name="stl10",
        pretrain=pretrain,
        train=train,
        test=test,
        classes=classes,
        image_size=_IMAGE_SIZE,
    )
