"""CIFAR-10 and CIFAR-100 read straight from the official python pickles.

torchvision's ``CIFAR10``/``CIFAR100`` classes md5-hash ~170 MB on every construction and decode one
PIL image per ``__getitem__``; here each split is read once into a single uint8 ``(N, 3, 32, 32)``
tensor with a numpy reshape (the pickles store each image as 3072 bytes: the red plane, then green,
then blue, each row-major 32x32). torchvision is used only to download, and for the optional md5 check.

The files are untrusted input (``dataset.root`` may point anywhere), so:

- they are unpickled by :class:`RestrictedUnpickler`, which only builds plain containers, numbers,
  strings and numpy arrays/scalars/dtypes; a pickle that names any other global (``os.system``,
  ``builtins.exec`` ...) is refused before anything in it runs (plain ``pickle.load``, as torchvision
  uses, would run it);
- every batch is checked before use: ``data`` must be a 2-D ``(N, 3072)`` array of uint8, or of
  another integer type with every value in 0..255 (floats are refused, not cast); each label field a
  list or 1-D array of N integers in 0..C-1, C = 10 (CIFAR-10 ``labels``), 100 (``fine_labels``) or
  20 (``coarse_labels``); the meta file must name exactly C classes.

Anything else raises :class:`CorruptDataError` naming the file, the field and the offending value.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from cl_suite.data.types import CorruptDataError, DatasetNotFoundError, ImageDataset, ImageSplit

_IMAGE_SIZE = 32
# Classes per label field, fixed by the data sets themselves.
_NUM_CLASSES = {"labels": 10, "fine_labels": 100, "coarse_labels": 20}


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


class _PickledDtype:
    """What a pickled ``numpy.dtype`` becomes: a fresh plain numeric dtype (bool, integer or float), never
    the object itself. numpy's own ``dtype.__setstate__`` would take any state the file holds, such as
    fields of dtype object with the flag that marks them cleared, and ``ndarray.__setstate__`` would then
    read raw bytes of the file as object pointers."""

    def __init__(self, spec: object, align: object = False, copy: object = False) -> None:
        try:
            dtype = np.dtype(spec) if isinstance(spec, str) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise _Refused(f"a numpy dtype {spec!r}")
        self.dtype = dtype

    def __setstate__(self, state: object) -> None:
        # (version, byte order, subarray, names, fields, element size, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) >= 8 and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            raise _Refused(f"a numpy dtype state {state!r:.80}")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


class _PickledArray:
    """What ``numpy.core.multiarray._reconstruct`` + the array's state become: ``array``, a copy of the
    file's bytes as a numpy array of a ``_PickledDtype``, after checking that the bytes are exactly what
    the shape and dtype need (a file cannot claim more images than it holds)."""

    def __init__(self, subtype: object = None, shape: object = None, typecode: object = None) -> None:
        if subtype is not _NDARRAY:
            raise _Refused(f"an array of type {subtype!r:.60}")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, fortran, data)
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _Refused(f"an array state {state!r:.80}")
        shape, dtype, fortran, data = state
        self.array = _array_from_bytes(data, dtype, shape, "F" if fortran else "C")


class _NDARRAY:
    """Stands for ``numpy.ndarray`` in a pickle: only ever the subtype argument of ``_PickledArray``."""


class _Refused(Exception):
    """A pickle asks for a numpy object that CIFAR data never holds."""


def _array_from_bytes(data: object, dtype: object, shape: object, order: object) -> np.ndarray:
    if isinstance(data, str):
        data = data.encode("latin1")  # Python 2 byte strings, decoded with latin1 by the unpickler
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not (isinstance(dtype, _PickledDtype) and isinstance(data, bytes) and order in ("C", "F")
            and isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise _Refused("an array with that shape, dtype or data")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.dtype.itemsize != len(data):
        raise _Refused(f"an array of shape {shape} with {len(data)} bytes of data")
    return np.frombuffer(data, dtype=dtype.dtype).reshape(shape, order=order).copy()


def _scalar(dtype: object, data: object = b"") -> object:
    return _array_from_bytes(data, dtype, (), "C")[()]


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:  # pickle protocol 5
    return _array_from_bytes(buffer, dtype, shape, order)


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The numpy callables a pickled array, scalar or dtype refers to, under numpy 1.x and 2.x module names,
    mapped to the builders above: nothing from the file ever reaches numpy's own state setters."""
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _PickledDtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _PickledArray
        allowed[(f"{package}.multiarray", "scalar")] = _scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = _frombuffer
    return allowed


def _built(value: object) -> object:
    """``value`` with every ``_PickledArray`` replaced by its array (dicts and lists, as CIFAR files nest)."""
    if isinstance(value, _PickledArray):
        if value.array is None:
            raise _Refused("an array without its data")
        return value.array
    if isinstance(value, dict):
        return {k: _built(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_built(v) for v in value]
    if isinstance(value, _PickledDtype) or value is _NDARRAY:
        raise _Refused("a bare numpy dtype or type")
    return value


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, str/bytes, numbers and numpy arrays/scalars.

    Any other global (a function or class the pickle asks to call) raises :class:`CorruptDataError`
    before it is imported. ``_codecs.encode`` is what protocol <= 2 pickles use to store bytes.
    """

    _ALLOWED = {("_codecs", "encode"): codecs.encode, **_numpy_globals()}

    def __init__(self, file: io.BufferedReader, path: Path) -> None:
        # The files were pickled by Python 2: latin1 turns its byte strings into str keys (as torchvision does).
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise CorruptDataError(
                f"{self.path}: refused to unpickle: it asks for {module}.{name}, which is not a CIFAR data type "
                "(only lists, dicts, strings, numbers and numpy arrays are allowed; unpickling it could run "
                "code). Replace the file with the official one (dataset.download=true)"
            ) from None

    def persistent_load(self, pid: object) -> object:
        raise CorruptDataError(f"{self.path}: refused to unpickle: persistent id {pid!r} is not part of a CIFAR file")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            content = _built(RestrictedUnpickler(f, path).load())
    except CorruptDataError:
        raise
    except _Refused as err:
        raise CorruptDataError(f"{path}: refused to unpickle: it holds {err}, which is not CIFAR data (numpy "
                               "arrays of plain numbers, lists, dicts, strings). Replace the file with the official "
                               "one (dataset.download=true)") from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises many kinds of errors
        raise CorruptDataError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err}); the file is "
                               "damaged or not a CIFAR batch. Replace it (dataset.download=true)") from err
    if not isinstance(content, dict):
        raise CorruptDataError(f"{path}: a CIFAR pickle holds a dict, this one holds a {type(content).__name__}")
    return content


def _field(path: Path, content: dict, key: str) -> object:
    if key not in content:
        raise CorruptDataError(f"{path}: no '{key}' entry (keys: {sorted(map(str, content))})")
    return content[key]


def _check_pixels(path: Path, value: object) -> np.ndarray:
    """``value`` as uint8 ``(N, 3072)``, or CorruptDataError: floats are refused, other integers must be 0..255."""
    if not isinstance(value, np.ndarray):
        raise CorruptDataError(f"{path}: 'data' should be a numpy array, got {type(value).__name__}")
    if value.ndim != 2 or value.shape[1] != 3 * _IMAGE_SIZE * _IMAGE_SIZE:
        raise CorruptDataError(f"{path}: 'data' should be uint8 (N, 3072), got shape {value.shape}")
    if value.dtype == np.uint8:
        return value
    if value.dtype.kind not in "iu":
        flat = value.reshape(-1)
        example = flat[0].item() if flat.size else None
        raise CorruptDataError(f"{path}: 'data' should hold uint8 pixels, got dtype {value.dtype} (e.g. value "
                               f"{example!r}); refusing to cast it")
    if value.size:
        low, high = value.min(), value.max()
        if low < 0 or high > 255:
            bad = int(low) if low < 0 else int(high)
            index = np.unravel_index(np.argmax(value == bad), value.shape)
            raise CorruptDataError(f"{path}: 'data' value {bad} at [{index[0]}, {index[1]}] is outside 0..255 "
                                   f"(dtype {value.dtype})")
    return value.astype(np.uint8)


def _check_labels(path: Path, key: str, value: object, count: int) -> np.ndarray:
    """``value`` as int64 ``(count,)`` with every label in 0..C-1, or CorruptDataError."""
    num_classes = _NUM_CLASSES[key]
    try:
        labels = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - ragged lists and the like
        raise CorruptDataError(f"{path}: '{key}' is not a list of integers ({err})") from err
    if labels.ndim != 1:
        raise CorruptDataError(f"{path}: '{key}' should be a flat list of integers, got shape {labels.shape}")
    if len(labels) != count:
        raise CorruptDataError(f"{path}: {count} images but {len(labels)} '{key}'")
    if count == 0:
        return np.zeros(0, dtype=np.int64)  # np.asarray([]) is float64
    if labels.dtype.kind not in "iu":
        items = list(value) if isinstance(value, (list, tuple)) else labels.tolist()
        bad = next((v for v in items if not isinstance(v, (int, np.integer)) or isinstance(v, bool)), items[0])
        raise CorruptDataError(f"{path}: '{key}' should be integers, got {labels.dtype} (e.g. value {bad!r} of type "
                               f"{type(bad).__name__})")
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(outside):
        index = int(outside[0])
        raise CorruptDataError(f"{path}: '{key}' value {int(labels[index])} at index {index} is outside 0..{num_classes - 1} "
                               f"({len(outside)} such labels; this data set has {num_classes} classes)")
    return labels.astype(np.int64)


def _class_names(path: Path, meta: dict, key: str, label_key: str) -> list[str]:
    names = _field(path, meta, key)
    if not isinstance(names, (list, tuple)) or len(names) != _NUM_CLASSES[label_key]:
        shown = len(names) if isinstance(names, (list, tuple)) else type(names).__name__
        raise CorruptDataError(f"{path}: '{key}' should list {_NUM_CLASSES[label_key]} class names, got {shown}")
    return list(names)


def _read_batches(folder: Path, files: list[str], label_keys: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Concatenate pickled batch files into one image tensor and one int64 tensor per label key."""
    images, labels = [], {key: [] for key in label_keys}
    for file in files:
        path = folder / file
        batch = _unpickle(path)
        data = _check_pixels(path, _field(path, batch, "data"))
        images.append(data.reshape(-1, 3, _IMAGE_SIZE, _IMAGE_SIZE))
        for key in label_keys:
            labels[key].append(_check_labels(path, key, _field(path, batch, key), len(data)))
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
        from torchvision.datasets.utils import check_integrity

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
    import torchvision  # here, not at the top: torchvision costs ~2 s at import and most runs never read CIFAR

    tv = torchvision.datasets.CIFAR10
    folder = _prepare("CIFAR-10", tv, root, download, verify_integrity, "the folder cifar-10-python.tar.gz unpacks into")
    train_images, (train_labels,) = _read_batches(folder, [f for f, _ in tv.train_list], ["labels"])
    test_images, (test_labels,) = _read_batches(folder, [f for f, _ in tv.test_list], ["labels"])
    meta_path = folder / tv.meta["filename"]
    classes = _class_names(meta_path, _unpickle(meta_path), "label_names", "labels")
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
    import torchvision

    tv = torchvision.datasets.CIFAR100
    folder = _prepare("CIFAR-100", tv, root, download, verify_integrity, "the folder cifar-100-python.tar.gz unpacks into")
    keys = ["fine_labels", "coarse_labels"]
    train_images, (train_fine, train_coarse) = _read_batches(folder, [f for f, _ in tv.train_list], keys)
    test_images, (test_fine, test_coarse) = _read_batches(folder, [f for f, _ in tv.test_list], keys)
    meta_path = folder / tv.meta["filename"]
    meta = _unpickle(meta_path)
    train = ImageSplit(labels=train_fine, images=train_images, coarse_labels=train_coarse)
    return ImageDataset(
        name="cifar100",
        pretrain=train,
        train=train,
        test=ImageSplit(labels=test_fine, images=test_images, coarse_labels=test_coarse),
        classes=_class_names(meta_path, meta, "fine_label_names", "fine_labels"),
        image_size=_IMAGE_SIZE,
        coarse_classes=_class_names(meta_path, meta, "coarse_label_names", "coarse_labels"),
    )
