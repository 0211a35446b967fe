"""Data set readers, on files in the real on-disk formats that these tests write themselves."""
from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl_suite.data import (
    DatasetNotFoundError,
    UnreadableImageError,
    load_cifar10,
    load_cifar100,
    load_digits,
    load_imagefolder,
    load_stl10,
    load_synthetic,
)

SHARED_CIFAR_JPG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


# --------------------------------------------------------------------------------------------- digits
def test_digits_shapes_labels_and_stratified_split():
    data = load_digits(image_size=32, test_fraction=0.2, split_seed=0)
    assert data.name == "digits" and data.classes == [str(d) for d in range(10)] and data.image_size == 32
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == 360  # ceil(0.2 * 1797)
    for split in (data.train, data.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert split.labels.dtype == torch.int64
        assert torch.equal(split.images[:, 0], split.images[:, 2])  # grey replicated to RGB
    assert data.pretrain is data.train
    assert data.train.images.max() == 255 and data.train.images.min() == 0
    # Stratified: each class's share of the test split matches its share of the whole data set.
    everything = torch.cat([data.train.labels, data.test.labels])
    share_all = torch.bincount(everything, minlength=10).float() / len(everything)
    share_test = torch.bincount(data.test.labels, minlength=10).float() / len(data.test)
    assert (share_all - share_test).abs().max() < 0.01


def test_digits_have_a_coarse_label_of_three_stroke_families():
    data = load_digits(image_size=8)
    assert data.coarse_classes == ["closed loops: 0 6 8 9", "straight strokes: 1 4 7", "open curves: 2 3 5"]
    for split in (data.train, data.test):
        for digit, coarse in zip(split.labels.tolist(), split.coarse_labels.tolist()):
            assert str(digit) in data.coarse_classes[coarse].split(":")[1].split()


def test_digits_deterministic_and_seed_changes_split():
    a, b = load_digits(split_seed=3), load_digits(split_seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    c = load_digits(split_seed=4)
    assert not torch.equal(a.test.images, c.test.images)
    native = load_digits(image_size=8)  # no upsampling: 0..16 scaled exactly to 0..255
    assert native.train.images.shape[1:] == (3, 8, 8)
    assert set(torch.unique(native.train.images).tolist()) <= {round(v * 255 / 16) for v in range(17)}


@pytest.mark.parametrize("kwargs", [{"image_size": 0}, {"test_fraction": 1.0}, {"test_fraction": 0}])
def test_digits_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        load_digits(**kwargs)


# ---------------------------------------------------------------------------------------------- CIFAR
def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _random_pixels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _write_cifar10(root: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The real layout: 5 train batches + test batch, each {'data': (N, 3072) uint8, 'labels': list}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x, train_y = _random_pixels(rng, 5 * per_batch), rng.integers(0, 10, 5 * per_batch)
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        _pickle(folder / f"data_batch_{b + 1}", {"data": train_x[rows].reshape(per_batch, -1), "labels": train_y[rows].tolist()})
    test_x, test_y = _random_pixels(rng, 4), rng.integers(0, 10, 4)
    _pickle(folder / "test_batch", {"data": test_x.reshape(4, -1), "labels": test_y.tolist()})
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch})
    return train_x, train_y, test_x, test_y


def test_cifar10_reads_pickles_pixel_exact(tmp_path):
    train_x, train_y, test_x, test_y = _write_cifar10(tmp_path)
    data = load_cifar10(tmp_path)
    assert data.name == "cifar10" and data.image_size == 32 and data.classes == [f"c{i}" for i in range(10)]
    assert torch.equal(data.train.images, torch.from_numpy(train_x))  # plane-major RGB round-trips exactly
    assert torch.equal(data.train.labels, torch.from_numpy(train_y).long())
    assert torch.equal(data.test.images, torch.from_numpy(test_x))
    assert torch.equal(data.test.labels, torch.from_numpy(test_y).long())
    assert data.pretrain is data.train and data.train.coarse_labels is None


def test_cifar10_red_plane_is_channel_0(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(tmp_path)
    red = np.zeros((1, 3072), dtype=np.uint8)
    red[0, :1024] = 255  # the first 1024 bytes of a row are the red plane
    _pickle(folder / "test_batch", {"data": red, "labels": [7]})
    image = load_cifar10(tmp_path).test.images[0]
    assert (image[0] == 255).all() and (image[1:] == 0).all()


def test_cifar10_verify_integrity_rejects_unofficial_files(tmp_path):
    _write_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="md5 mismatch.*data_batch_1"):
        load_cifar10(tmp_path, verify_integrity=True)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    splits = {}
    for name, n in [("train", 6), ("test", 3)]:
        x, fine, coarse = _random_pixels(rng, n), rng.integers(0, 100, n), rng.integers(0, 20, n)
        _pickle(folder / name, {"data": x.reshape(n, -1), "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()})
        splits[name] = (x, fine, coarse)
    fine_names, coarse_names = [f"fine{i}" for i in range(100)], [f"coarse{i}" for i in range(20)]
    _pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})

    data = load_cifar100(tmp_path)
    assert data.name == "cifar100" and data.classes == fine_names and data.coarse_classes == coarse_names
    assert data.num_classes == 100
    for name, split in [("train", data.train), ("test", data.test)]:
        x, fine, coarse = splits[name]
        assert torch.equal(split.images, torch.from_numpy(x))
        assert torch.equal(split.labels, torch.from_numpy(fine).long())
        assert torch.equal(split.coarse_labels, torch.from_numpy(coarse).long())
    assert data.pretrain.coarse_labels is not None


@pytest.mark.parametrize("loader, sub_folder", [(load_cifar10, "cifar-10-batches-py"), (load_cifar100, "cifar-100-python")])
def test_cifar_missing_names_path_and_fixes(tmp_path, loader, sub_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        loader("relative/data")
    message = str(info.value)
    assert str(tmp_path / "relative" / "data" / sub_folder) in message  # absolute path, not the relative one
    assert "dataset.download=true" in message and "dataset.root=" in message and sub_folder in message


def test_cifar_partial_tree_lists_missing_files(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing: data_batch_4"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------------------------- STL-10
def _write_stl10(root: Path, n_train=4, n_test=3, n_unlabeled=5) -> dict[str, np.ndarray]:
    """The real layout: raw uint8 images with each plane column-major, uint8 labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    images = {}
    for split, n in [("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)]:
        x = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W) as we want it back
        x.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # on disk: (N, C, W, H)
        images[split] = x
    for split, n in [("train", n_train), ("test", n_test)]:
        y = rng.integers(0, 10, n).astype(np.uint8)
        (y + 1).tofile(folder / f"{split}_y.bin")
        images[f"{split}_labels"] = y
    (folder / "class_names.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n")
    return images


def test_stl10_column_major_layout_and_unlabeled(tmp_path):
    written = _write_stl10(tmp_path)
    data = load_stl10(tmp_path)
    assert data.name == "stl10" and data.image_size == 96 and data.classes == [f"name{i}" for i in range(10)]
    assert torch.equal(data.train.images, torch.from_numpy(written["train"]))
    assert torch.equal(data.test.images, torch.from_numpy(written["test"]))
    assert torch.equal(data.train.labels, torch.from_numpy(written["train_labels"]).long())
    assert torch.equal(data.test.labels, torch.from_numpy(written["test_labels"]).long())
    assert len(data.pretrain) == 4 + 5
    assert torch.equal(data.pretrain.images[4:], torch.from_numpy(written["unlabeled"]))
    assert torch.equal(data.pretrain.labels[:4], data.train.labels)
    assert (data.pretrain.labels[4:] == -1).all()


def test_stl10_transposed_pixel_position(tmp_path):
    _write_stl10(tmp_path, n_test=1)
    x = np.zeros((1, 3, 96, 96), dtype=np.uint8)
    x[0, 1, 0, 5] = 200  # green, row 0, column 5: in the file's column-major order that is byte 96*96 + 5*96
    on_disk = np.zeros(3 * 96 * 96, dtype=np.uint8)
    on_disk[96 * 96 + 5 * 96] = 200
    on_disk.tofile(tmp_path / "stl10_binary" / "test_X.bin")
    assert torch.equal(load_stl10(tmp_path).test.images, torch.from_numpy(x))


def test_stl10_pretrain_train_only_does_not_need_unlabeled(tmp_path):
    _write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    data = load_stl10(tmp_path, pretrain_split="train")
    assert data.pretrain is data.train and (data.pretrain.labels >= 0).all()
    with pytest.raises(DatasetNotFoundError, match="unlabeled_X.bin"):
        load_stl10(tmp_path)


def test_stl10_bad_split_and_missing(tmp_path):
    with pytest.raises(ValueError, match=r"pretrain_split must be one of \['train\+unlabeled', 'train'\], got 'unlabeled'"):
        load_stl10(tmp_path, pretrain_split="unlabeled")
    with pytest.raises(DatasetNotFoundError) as info:
        load_stl10(tmp_path)
    assert str(tmp_path.resolve() / "stl10_binary") in str(info.value) and "download" in str(info.value)


def test_stl10_truncated_file(tmp_path):
    _write_stl10(tmp_path)
    with open(tmp_path / "stl10_binary" / "test_X.bin", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(ValueError, match="test_X.bin.*not a whole number"):
        load_stl10(tmp_path)


# --------------------------------------------------------------------------------------- image folder
def _write_tree(root: Path, split: str, classes: list[str], per_class: int, size=(32, 32), ext=".png", seed=0):
    """Random images under root/split/class/; returns {relative path: (H, W, 3) uint8 array}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in classes:
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name / f"{i:03d}{ext}")
            written[f"{split}/{name}/{i:03d}{ext}"] = pixels
    return written


def test_imagefolder_png_pixels_labels_and_sorted_classes(tmp_path):
    written = _write_tree(tmp_path, "train", ["zebra", "ant", "Moose"], 2)
    _write_tree(tmp_path, "test", ["zebra", "ant", "Moose"], 1, seed=1)
    data = load_imagefolder(tmp_path, image_size=32, cache=False, num_workers=2, name="toy")
    assert data.name == "toy" and data.classes == ["Moose", "ant", "zebra"]  # sorted, as ImageFolder does
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2] and data.test.labels.tolist() == [0, 1, 2]
    assert data.train.images.shape == (6, 3, 32, 32) and data.train.images.dtype == torch.uint8
    # Same-size PNG: resize and crop are identities, so the pixels come back exactly.
    expected = torch.from_numpy(written["train/ant/001.png"]).permute(2, 0, 1)
    assert torch.equal(data.train.images[3], expected)
    assert data.pretrain is data.train


def test_imagefolder_images_of_a_class_are_in_sorted_path_order(tmp_path):
    """Within a class the images are indexed in sorted path order (sub-folders included), as torchvision's
    ImageFolder, whatever order the file system lists them in: the index of an image must not depend on the
    machine (memory banks key on it, and a cached split is reused across runs)."""
    names = [f"{i:03d}.png" for i in range(16)] + [f"sub/{i:03d}.png" for i in range(4)] + ["a.png", "z.png"]
    order = np.random.default_rng(0).permutation(len(names))  # created in a shuffled order
    for split in ("train", "test"):
        for k in order:
            path = tmp_path / split / "only" / names[k]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), k, dtype=np.uint8)).save(path)
    data = load_imagefolder(tmp_path, image_size=8, cache=False, num_workers=0, name="toy")
    by_path = sorted(range(len(names)), key=lambda k: str(tmp_path / "train" / "only" / names[k]))
    assert data.train.images[:, 0, 0, 0].tolist() == by_path


def test_imagefolder_resize_shorter_side_then_center_crop(tmp_path):
    # 48 wide x 24 high, left third red, middle third green, right third blue: the centre crop at
    # 16x16 (after resizing to 32x16) keeps only the middle, green part (apart from blended edges).
    pixels = np.zeros((24, 48, 3), dtype=np.uint8)
    pixels[:, :16, 0] = pixels[:, 16:32, 1] = pixels[:, 32:, 2] = 255
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / split / "a" / "x.JPG", quality=95)  # upper-case extension
    image = load_imagefolder(tmp_path, image_size=16, cache=False).train.images[0]
    assert image.shape == (3, 16, 16)
    centre = image[:, :, 3:13].float()
    assert (centre[1] > 200).all() and (centre[0] < 60).all() and (centre[2] < 60).all()


def test_imagefolder_cache_is_written_and_reused(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 3, size=(40, 30), ext=".jpg")
    _write_tree(tmp_path, "test", ["a", "b"], 1, ext=".png", seed=1)
    first = load_imagefolder(tmp_path, image_size=24, num_workers=2)
    cache_file = tmp_path / ".cl_suite_cache" / "train_24.pt"
    assert cache_file.is_file() and (tmp_path / ".cl_suite_cache" / "test_24.pt").is_file()
    assert not list((tmp_path / ".cl_suite_cache").glob("*.tmp"))
    # Replace every image file with garbage of the same size and mtime (the cache key): a second call
    # that decoded anything would fail.
    replaced = sorted((tmp_path / "train").rglob("*.jpg"))
    assert len(replaced) == 6  # every training image
    for path in replaced:
        info = path.stat()
        path.write_bytes(b"x" * info.st_size)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    second = load_imagefolder(tmp_path, image_size=24)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.train.labels, second.train.labels)
    # A changed file list invalidates the cache: the garbage is now decoded, and reported by name.
    (tmp_path / "train" / "a" / "new.png").write_bytes(b"not an image either")
    with pytest.raises(UnreadableImageError, match="new.png|00[0-2].jpg"):
        load_imagefolder(tmp_path, image_size=24)


def test_imagefolder_lazy_matches_in_memory(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 2, size=(50, 40), ext=".jpg")
    _write_tree(tmp_path, "test", ["a", "b"], 2, size=(20, 28), ext=".webp", seed=1)
    eager = load_imagefolder(tmp_path, image_size=16, cache=False)
    lazy = load_imagefolder(tmp_path, image_size=16, in_memory=False)
    assert not lazy.train.in_memory and lazy.train.images is None
    assert not (tmp_path / ".cl_suite_cache").exists()  # nothing to cache when not in memory
    for eager_split, lazy_split in [(eager.train, lazy.train), (eager.test, lazy.test)]:
        assert torch.equal(eager_split.labels, lazy_split.labels)
        for i in range(len(eager_split)):
            assert torch.equal(eager_split.images[i], lazy_split.read_image(i))


def test_imagefolder_corrupt_image_names_file(tmp_path):
    _write_tree(tmp_path, "train", ["a"], 2)
    _write_tree(tmp_path, "test", ["a"], 1)
    bad = tmp_path / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UnreadableImageError, match="broken.png"):
        load_imagefolder(tmp_path, cache=False)
    lazy = load_imagefolder(tmp_path, in_memory=False)
    with pytest.raises(UnreadableImageError, match=str(bad)):
        lazy.train.read_image(2)  # sorted: 000.png, 001.png, broken.png


def test_imagefolder_unreadable_images_are_named_in_path_order_escaped_and_counted(tmp_path, monkeypatch):
    """Two unreadable files: one error names both in path order (the decoding threads finish in any order;
    here the first is held back), each name escaped (a newline in a file name cannot start a line of its
    own), and no " and 0 more" below the named maximum."""
    import time

    from cl_suite.data import imagefolder

    _write_tree(tmp_path, "train", ["a", "b"], 2)
    _write_tree(tmp_path, "test", ["a", "b"], 1, seed=1)
    first, second = tmp_path / "train" / "a" / "x\n1.png", tmp_path / "train" / "b" / "zz.png"
    first.write_bytes(b"<html>404</html>")
    second.write_bytes(b"")
    decode = imagefolder.decode_image

    def slow_first(path, image_size):
        if os.fspath(path) == os.fspath(first):
            time.sleep(0.5)
        return decode(path, image_size)

    monkeypatch.setattr(imagefolder, "decode_image", slow_first)
    with pytest.raises(UnreadableImageError) as err:
        load_imagefolder(tmp_path, image_size=16, cache=False, num_workers=8)  # a thread per image
    message = str(err.value)
    assert "\n" not in message and "more" not in message
    assert message.startswith(f"cannot read 2 image files: {tmp_path}/train/a/x\\x0a1.png, {second} (the first: "
                              "UnidentifiedImageError: "), message


def test_imagefolder_mismatched_classes(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 1)
    _write_tree(tmp_path, "test", ["a", "c"], 1)
    with pytest.raises(ValueError, match=r"only in train: \['b'\], only in test: \['c'\]"):
        load_imagefolder(tmp_path, cache=False)


def test_imagefolder_ignores_non_images_and_needs_images_per_class(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 1)
    _write_tree(tmp_path, "test", ["a", "b"], 1)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    assert len(load_imagefolder(tmp_path, cache=False).train) == 2
    (tmp_path / "test" / "b" / "000.png").unlink()
    with pytest.raises(ValueError, match=r"test[/\\]b holds no image files"):
        load_imagefolder(tmp_path, cache=False)


def test_imagefolder_pretrain_dir(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], 1)
    _write_tree(tmp_path, "test", ["a", "b"], 1, seed=1)
    _write_tree(tmp_path, "extra", ["a", "b"], 3, seed=2)
    data = load_imagefolder(tmp_path, pretrain_dir="extra", cache=False)
    assert len(data.pretrain) == 6 and len(data.train) == 2


def test_imagefolder_missing_root_and_split(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_imagefolder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and "dataset.root=" in str(info.value)
    _write_tree(tmp_path, "train", ["a"], 1)
    with pytest.raises(DatasetNotFoundError, match="dataset.test_dir=test"):
        load_imagefolder(tmp_path, cache=False)


def test_imagefolder_unwritable_cache_warns_once(tmp_path):
    _write_tree(tmp_path, "train", ["a"], 1)
    _write_tree(tmp_path, "test", ["a"], 1)
    # A file where the cache folder should be makes the cache unwritable, even for root (unlike chmod).
    (tmp_path / ".cl_suite_cache").write_text("in the way")
    with pytest.warns(UserWarning, match="cache disabled") as record:
        data = load_imagefolder(tmp_path)
    assert len(data.train) == 1 and len(data.test) == 1
    messages = [str(w.message) for w in record if "cache disabled" in str(w.message)]
    assert len(messages) == 1 and str(tmp_path / ".cl_suite_cache") in messages[0]  # once, not once per split


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_deterministic_and_learnable():
    a, b = load_synthetic(seed=5), load_synthetic(seed=5)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.images, load_synthetic(seed=6).train.images)
    assert a.train.images.shape == (4 * 32, 3, 16, 16) and a.test.images.shape == (4 * 8, 3, 16, 16)
    assert a.train.images.dtype == torch.uint8 and a.classes == ["class0", "class1", "class2", "class3"]
    # Nearest class mean already separates the classes: a real model has something to learn.
    train, test = a.train.images.float(), a.test.images.float()
    means = torch.stack([train[a.train.labels == c].mean(0) for c in range(4)])
    predicted = torch.cdist(test.flatten(1), means.flatten(1)).argmin(1)
    assert (predicted == a.test.labels).float().mean() >= 0.9
    with pytest.raises(ValueError, match="num_classes"):
        load_synthetic(num_classes=1)


# --------------------------------------------------------------------------------- real data (shared)
@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR_JPG.is_file(), reason=f"{SHARED_CIFAR_JPG} not present")
def test_imagefolder_on_real_cifar10_jpegs(tmp_path):
    """A few real CIFAR-10 JPEGs per class and split, through the image-folder reader."""
    wanted: dict[str, int] = {}
    with tarfile.open(SHARED_CIFAR_JPG) as archive:
        members = []
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and wanted.get(f"{parts[0]}/{parts[1]}", 0) < 3:
                wanted[f"{parts[0]}/{parts[1]}"] = wanted.get(f"{parts[0]}/{parts[1]}", 0) + 1
                members.append(member)
                archive.extract(member, tmp_path, filter="data")
    data = load_imagefolder(tmp_path, image_size=32, name="cifar10_jpg")
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(data.train) == 30 and len(data.test) == 30
    assert data.train.images.float().std() > 20  # real, varied pixels


def test_decoding_a_large_folder_shows_progress(tmp_path, capsys, monkeypatch):
    import cl_suite.data.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "PROGRESS_MIN_IMAGES", 4)  # stands in for thousands of files
    _write_tree(tmp_path, "train", ["a", "b"], 3)
    _write_tree(tmp_path, "test", ["a", "b"], 1, seed=1)
    load_imagefolder(tmp_path, image_size=16, cache=False, num_workers=2)
    err = capsys.readouterr().err
    assert "decoding train/ (6 images)" in err and "/6 [" in err
    assert "decoding test/" not in err  # 2 images: below the threshold, no bar
