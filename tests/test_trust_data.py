"""Data files are untrusted input: a damaged or hostile one is refused by name, never half-used.

Every test writes the real on-disk formats (PNG/TIFF trees with real symlinks, CIFAR python pickles)
into ``tmp_path``.
"""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl_suite.data import ImageFolderLayoutError, UnreadableImageError, load_cifar10, load_cifar100, load_imagefolder
from cl_suite.data.types import CorruptDataError


# --------------------------------------------------------------------------------------- image folder
def _tree(root: Path, classes=("a", "b"), per_class=2, size=8, seed=0) -> None:
    """root/{train,test}/<class>/<i>.png, random RGB pixels."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_imagefolder_symlink_loop_is_refused(tmp_path):
    # Before: os.walk(followlinks=True) followed the loop until the OS gave up, and every level's images
    # were added again under class 'a' (here 4 train images became dozens, with no error).
    _tree(tmp_path)
    link = tmp_path / "train" / "a" / "loop"
    link.symlink_to("..", target_is_directory=True)  # train/a/loop -> train
    with pytest.raises(ImageFolderLayoutError, match="symlink") as info:  # a UserError: one line, no traceback
        load_imagefolder(tmp_path, cache=False, num_workers=0)
    assert str(link) in str(info.value)


def test_imagefolder_second_link_to_a_class_folder_is_refused(tmp_path):
    # Not a loop, but b's images would also be labelled 'a'.
    _tree(tmp_path)
    (tmp_path / "train" / "a" / "more").symlink_to(tmp_path / "train" / "b", target_is_directory=True)
    with pytest.raises(ImageFolderLayoutError, match=r"reached twice|second time"):
        load_imagefolder(tmp_path, cache=False, num_workers=0)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_imagefolder_link_outside_root_is_refused(tmp_path, kind):
    root = tmp_path / "data"
    _tree(root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside / "x.png")
    link = root / "train" / "a" / ("x.png" if kind == "file" else "sub")
    link.symlink_to(outside / "x.png" if kind == "file" else outside, target_is_directory=kind == "folder")
    with pytest.raises(ImageFolderLayoutError, match="outside the data root") as info:
        load_imagefolder(root, cache=False, num_workers=0)
    assert str(link) in str(info.value) and str(root) in str(info.value)
    link.unlink()  # a link inside the root stays allowed
    (root / "train" / "a" / "alias.png").symlink_to(root / "train" / "b" / "0.png")
    assert len(load_imagefolder(root, cache=False, num_workers=0).train) == 5


def test_imagefolder_cache_sees_a_replaced_image(tmp_path):
    _tree(tmp_path)
    first = load_imagefolder(tmp_path, image_size=8, num_workers=0)
    assert (tmp_path / ".cl_suite_cache" / "train_8.pt").is_file()
    # Same name, new content (another size on disk, another mtime): the cache must not serve the old pixels.
    target = tmp_path / "train" / "a" / "0.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    second = load_imagefolder(tmp_path, image_size=8, num_workers=0)
    assert torch.equal(second.train.images[0], torch.tensor([10, 200, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8))
    assert torch.equal(second.train.images[1:], first.train.images[1:])


def test_imagefolder_corrupt_cache_is_rebuilt(tmp_path):
    _tree(tmp_path)
    first = load_imagefolder(tmp_path, image_size=8, num_workers=0)
    cache_file = tmp_path / ".cl_suite_cache" / "train_8.pt"
    content = bytearray(cache_file.read_bytes())
    # Flip pixel bytes inside the stored tensor: the file still loads, but its images are wrong.
    start = bytes(content).find(first.train.images[1].numpy().tobytes())
    assert start > 0
    content[start : start + 16] = bytes(255 - b for b in content[start : start + 16])
    cache_file.write_bytes(bytes(content))
    with pytest.warns(UserWarning, match="train_8.pt"):
        second = load_imagefolder(tmp_path, image_size=8, num_workers=0)
    assert torch.equal(second.train.images, first.train.images)
    # A cache file cut short is rebuilt too.
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(UserWarning, match="train_8.pt"):
        third = load_imagefolder(tmp_path, image_size=8, num_workers=0)
    assert torch.equal(third.train.images, first.train.images)


def _single_image_tree(root: Path, image: Image.Image, name: str = "x.png") -> None:
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        image.save(root / split / "a" / name)


@pytest.mark.parametrize("mode, name", [("I;16", "x.png"), ("I", "x.tif")])
def test_imagefolder_16_bit_images_scale_to_8_bit(tmp_path, mode, name):
    # Before: PIL's convert('RGB') clipped 16-bit values at 255, so almost every pixel became white.
    values = np.array([[0, 255, 256, 25700], [32896, 40000, 65280, 65535]], dtype=np.uint16)
    pixels = np.repeat(values, 2, axis=0)  # 4 x 4
    image = Image.fromarray(pixels) if mode == "I;16" else Image.fromarray(pixels.astype(np.int32), mode="I")
    assert image.mode == mode
    _single_image_tree(tmp_path, image, name)
    got = load_imagefolder(tmp_path, image_size=4, cache=False, num_workers=0).train.images[0]
    expected = torch.from_numpy((pixels >> 8).astype(np.uint8))  # 16 -> 8 bit: keep the high byte
    for channel in range(3):
        assert torch.equal(got[channel], expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_imagefolder_alpha_is_composited_on_black(tmp_path, mode):
    # Before: convert('RGB') dropped alpha, so fully transparent pixels showed whatever colour they hid.
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (250, 250, 250, 0)  # invisible, but bright underneath
    rgba[2:] = (200, 100, 50, 255)  # opaque
    if mode == "RGBA":
        rgba[2, 0] = (200, 100, 50, 128)  # half transparent
        image = Image.fromarray(rgba, mode="RGBA")
    elif mode == "LA":
        image = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    else:
        image = Image.fromarray(rgba[..., :3], mode="RGB").quantize(colors=4)
        transparent = image.getpixel((0, 0))
        image.info["transparency"] = transparent
    _single_image_tree(tmp_path, image)
    got = load_imagefolder(tmp_path, image_size=4, cache=False, num_workers=0).train.images[0]
    assert (got[:, :2] == 0).all()  # transparent -> black
    if mode == "LA":
        assert (got[:, 2:] == 200).all()
    else:
        assert got[:, 3, 1].tolist() == [200, 100, 50]
    if mode == "RGBA":
        assert (got[:, 2, 0].int() - torch.tensor([100, 50, 25])).abs().max() <= 1  # 128/255 of each


def _bytes_name(folder: Path, name: bytes) -> bytes:
    return os.path.join(os.fsencode(folder), name)


def test_imagefolder_non_utf8_file_name(tmp_path):
    # Before: hashing the file list for the cache raised a bare UnicodeEncodeError that named no file.
    _tree(tmp_path)
    good = _bytes_name(tmp_path / "train" / "a", b"good\xff.png")
    Image.new("RGB", (8, 8), (5, 6, 7)).save(open(good, "wb"), format="PNG")
    data = load_imagefolder(tmp_path, image_size=8, num_workers=0)
    assert len(data.train) == 5 and (tmp_path / ".cl_suite_cache" / "train_8.pt").is_file()
    assert len(load_imagefolder(tmp_path, image_size=8, num_workers=0).train) == 5  # from the cache
    # A broken file with such a name: the message names it, and is text any log can write.
    with open(_bytes_name(tmp_path / "train" / "b", b"bad\xfe.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(UnreadableImageError) as info:
        load_imagefolder(tmp_path, image_size=8, num_workers=0)
    message = str(info.value)
    message.encode("utf-8")  # no lone surrogates
    assert "bad\\xfe.png" in message


@pytest.mark.timeout(20)
def test_imagefolder_special_file_is_refused_not_opened(tmp_path):
    # A named pipe called x.png would block open() forever.
    _tree(tmp_path)
    os.mkfifo(tmp_path / "train" / "a" / "pipe.png")
    with pytest.raises(UnreadableImageError, match="pipe.png.*not a regular file"):
        load_imagefolder(tmp_path, cache=False, num_workers=0)


def test_imagefolder_malformed_png_names_the_file(tmp_path):
    # A PNG whose data-chunk length is off by 8: PIL raises SyntaxError, which used to escape bare.
    _tree(tmp_path)
    content = bytearray((tmp_path / "train" / "a" / "0.png").read_bytes())
    assert content[37:41] == b"IDAT"
    content[33:37] = (int.from_bytes(content[33:37], "big") - 8).to_bytes(4, "big")
    (tmp_path / "train" / "a" / "0.png").write_bytes(bytes(content))
    with pytest.raises(UnreadableImageError, match=r"0\.png: SyntaxError"):
        load_imagefolder(tmp_path, cache=False, num_workers=0)


# ---------------------------------------------------------------------------------------------- CIFAR
def _pickle(path: Path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2 + numpy 1 pickled the official files: protocol 2, byte strings, and the array
    rebuilt by numpy.core.multiarray._reconstruct (written opcode by opcode; Python 3 cannot produce it)."""
    def short(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b
    raw = data.tobytes()
    dtype = (b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + short(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short(b"b") + b"\x87R"
             + b"(K\x01J" + struct.pack("<i", len(data)) + b"M\x00\x0c\x86" + dtype + b"\x89T"
             + struct.pack("<I", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + short(b"data") + array + short(b"labels") + label_list + b"u."


def _cifar10(root: Path, n: int = 2, protocol: int | str = pickle.DEFAULT_PROTOCOL) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        if protocol == "python2":
            (folder / name).write_bytes(_python2_batch(data, labels))
        else:
            _pickle(folder / name, {"batch_label": name, "data": data, "labels": labels,
                                    "filenames": [f"{name}_{i}.png" for i in range(n)]}, protocol)
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": n}
    _pickle(folder / "batches.meta", meta, 2 if protocol == "python2" else protocol)
    return folder


def _cifar100(root: Path, n: int = 2) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        _pickle(folder / name, {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                                "fine_labels": rng.integers(0, 100, n).tolist(),
                                "coarse_labels": rng.integers(0, 20, n).tolist()})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                              "coarse_label_names": [f"c{i}" for i in range(20)]})
    return folder


def _rewrite(path: Path, **changes) -> None:
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch.update(changes)
    _pickle(path, batch)


@pytest.mark.parametrize("protocol", ["python2", 0, 2, 5])
def test_cifar_real_pickles_still_load(tmp_path, protocol):
    _cifar10(tmp_path, protocol=protocol)
    data = load_cifar10(tmp_path)
    assert data.train.images.shape == (10, 3, 32, 32) and data.classes == [f"c{i}" for i in range(10)]
    first = np.random.default_rng(0).integers(0, 256, size=(2, 3072), dtype=np.uint8)  # data_batch_1
    assert torch.equal(data.train.images[:2], torch.from_numpy(first).view(2, 3, 32, 32))


@pytest.mark.parametrize("batch, field, value, expected", [
    ("data_batch_3", "data", np.full((2, 3072), 0.5), r"'data'.*float64.*0\.5"),  # before: silently cast to 0
    ("data_batch_3", "data", np.full((2, 3072), 300, dtype=np.int64), r"'data'.*300.*0\.\.255"),  # before: wrapped
    ("data_batch_3", "data", np.full((2, 3072), -1, dtype=np.int16), r"'data'.*-1.*0\.\.255"),
    ("test_batch", "labels", [3, 10], r"'labels'.*10.*0\.\.9"),  # before: failed only at the final evaluation
    ("test_batch", "labels", [3, -1], r"'labels'.*-1.*0\.\.9"),
    ("test_batch", "labels", [3, 1.5], r"'labels'.*integers.*float"),
])
def test_cifar10_bad_pixels_and_labels_are_refused_naming_the_file(tmp_path, batch, field, value, expected):
    folder = _cifar10(tmp_path)
    _rewrite(folder / batch, **{field: value})
    with pytest.raises(CorruptDataError, match=expected) as info:
        load_cifar10(tmp_path)
    assert str(folder / batch) in str(info.value)


def test_cifar_integer_pixels_in_range_are_accepted(tmp_path):
    folder = _cifar10(tmp_path)
    _rewrite(folder / "data_batch_1", data=np.full((2, 3072), 255, dtype=np.int64))
    assert (load_cifar10(tmp_path).train.images[:2] == 255).all()


def test_cifar100_coarse_label_out_of_range(tmp_path):
    folder = _cifar100(tmp_path)
    _rewrite(folder / "train", coarse_labels=[0, 20])  # 20 superclasses: 0..19
    with pytest.raises(CorruptDataError, match=r"train.*'coarse_labels'.*20.*0\.\.19"):
        load_cifar100(tmp_path)


class _WritesMarker:
    """What a hostile pickle can do: unpickling calls exec on attacker-chosen code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = _cifar10(tmp_path)
    marker = tmp_path / "marker"
    _pickle(folder / "data_batch_2", {"data": _WritesMarker(marker), "labels": [0, 1]})
    with pytest.raises(CorruptDataError, match=r"data_batch_2.*builtins\.exec") as info:
        load_cifar10(tmp_path)
    assert not marker.exists()
    assert "not a CIFAR" in str(info.value)


class _Reduced:
    """Pickles as the call ``reduced`` describes: how a crafted file is written with the pickle module."""

    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def _forged_array(dtype_args, dtype_state, shape, data):
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whatever its module
    return _Reduced(reconstruct, (np.ndarray, (0,), b"b"),
                    (1, shape, _Reduced(np.dtype, dtype_args, dtype_state), False, data))


@pytest.mark.parametrize("array, named", [
    # numpy's dtype.__setstate__ would take object fields flagged as none: the array's bytes became pointers
    # (a segfault, or worse, when the pixels were checked)
    (_forged_array(("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0), (1, 3072),
                   b"A" * 24576), "a numpy dtype 'V8'"),
    (_forged_array(("u1", False, True), (3, "|", None, ("a",), {"a": ("x", 0)}, 8, 1, 0), (1, 3072),
                   b"A" * 3072), "a numpy dtype state"),
    # a shape that claims more than the file holds (stride tricks): a billion images from 3 kB
    (_forged_array(("u1", False, True), (3, "|", None, None, None, -1, -1, 0), (10**9, 3072), b"A" * 3072),
     "an array of shape"),
])
def test_cifar_pickle_with_forged_numpy_state_is_refused_before_numpy_sees_it(tmp_path, array, named):
    folder = _cifar10(tmp_path)
    _pickle(folder / "data_batch_2", {"data": array, "labels": [0]}, protocol=2)
    with pytest.raises(CorruptDataError, match=f"data_batch_2: refused to unpickle: it holds {named}"):
        load_cifar10(tmp_path)
