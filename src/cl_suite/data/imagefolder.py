"""Any class-folder tree of image files (torchvision's ImageFolder convention), at one square size.

Layout: ``<root>/<split_dir>/<class>/<file>``; the classes are the sorted sub-folder names and the
label of an image is the index of its folder. Every image is stored at ``image_size`` x ``image_size``:
shorter side resized to ``image_size`` (bilinear, antialiased), then centre-cropped. Augmentation
crops from that storage size later.

With ``in_memory=True`` each split is decoded once (in threads: PIL releases the GIL while decoding)
into one uint8 tensor, and with ``cache=True`` that tensor is saved under ``<root>/.cl_suite_cache``
so the next run loads it in seconds instead of decoding again. With ``in_memory=False`` images are
decoded on demand, for data that does not fit in memory.

The files are untrusted input; these rules keep a damaged tree from being used half-right:

- Links. Symlinked files and folders are followed, but everything must resolve inside the data root
  (``dataset.root``, itself resolved first, so a root that is a link is fine). A link that leads
  outside it, and a folder reached a second time within a split (a symlink loop such as
  ``train/a/loop -> ..``, or a second link to a class folder, which would repeat images under another
  label) are refused with an error naming the link and its target: skipping them would silently
  change the data set. Entries named like images that are not regular files (pipes, devices, broken
  links) are refused as unreadable instead of being opened.
- Cache. The cache is keyed on every file's (relative path, size, mtime_ns) and the decoding
  settings, so a replaced, re-saved or touched image invalidates it (a content hash would cost a full
  read of every file on every start). It also stores a CRC-32 of its pixels: a cache file that does
  not load, has the wrong shape or whose pixels fail the check is rebuilt (with a warning), never used.
- Pixels. Every image becomes 8-bit RGB. 16-bit and 32-bit integer greyscale (PIL modes ``I;16*``,
  ``I``) keep the high byte of the 16-bit value (``v >> 8``, values clipped to 0..65535 first), as
  torchvision's ``convert_image_dtype`` does; PIL's own conversion clips at 255 and turns them white.
  Images with transparency (RGBA, LA, PA, palette or RGB/L with a transparent colour) are composited
  on black (colour times alpha), so what is hidden under transparent pixels never reaches the model.
  Greyscale, palette and CMYK images are converted as PIL does (grey repeated in all 3 channels).
- Names. File names that are not valid UTF-8 are read like any other; messages show their
  undecodable bytes as ``\\xNN`` escapes. A file PIL cannot open or decode stops the run with an
  :class:`UnreadableImageError` naming it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cl_suite.data.types import DatasetNotFoundError, ImageDataset, ImageSplit
from cl_suite.errors import UserError
from cl_suite.files import printable

# A child of the run's own logger (engine.run_log's ``cl_suite.run``): while a run is open its lines reach
# the run's console and train.log, whichever entry point started it (train.py, api.train).
log = logging.getLogger("cl_suite.run.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CACHE_DIR_NAME = ".cl_suite_cache"
# Bump when the decoding changes, so that caches written by older code are rebuilt, not reused.
_CACHE_FORMAT = 2
# Cache folders we already warned about, so that an unwritable root warns once, not once per split.
_warned_cache_dirs: set[Path] = set()


class UnreadableImageError(UserError, OSError):
    """An image file that PIL cannot open or decode. The message names the file."""


class ImageFolderLayoutError(UserError, ValueError):
    """A tree that breaks the layout rules above (a class folder without images, splits with other classes,
    a link out of the root, a folder reached twice). The message names the folder or link and the fix."""


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as text any terminal or log file can write: a name that is not valid UTF-8 (kept by
    Python as lone surrogates) shows its raw bytes as ``\\xNN`` escapes instead of failing to encode, and
    control characters (a newline in a file name) as ``\\xNN`` too, so that a name cannot start a line of
    its own in a message or log."""
    text = os.fsdecode(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return printable(text)


# 16/32-bit integer greyscale modes; PIL's convert() clips them at 255 instead of scaling.
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB by the rules in the module docstring (16-bit -> high byte, alpha -> composited on black)."""
    if img.mode in _WIDE_GREY_MODES:
        wide = np.asarray(img).astype(np.int64)
        img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    if img.has_transparency_data:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        # Rounded colour * alpha / 255; integer maths keeps it exact and deterministic.
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8))
    return img.convert("RGB")


def decode_image(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """Read one image file as uint8 RGB ``(3, image_size, image_size)``: resize shorter side, centre crop."""
    try:
        with Image.open(path) as img:
            # JPEG only (a no-op for other formats): decode at a power-of-two reduced scale that still
            # keeps both sides >= image_size; several times faster for large photos.
            img.draft("RGB", (image_size, image_size))
            img.load()  # force the (lazy) decode, so errors surface here
            img = to_rgb(img)
    except Exception as err:  # noqa: BLE001 - malformed files raise more than OSError (SyntaxError, struct.error ...)
        # Named file, cause and fix in one line: a single bad file in a 1.3M-image tree (a partial copy,
        # an HTML error page saved as .jpg) must not cost a search. The cache is only written after
        # every image decoded, so nothing half-built is left behind.
        raise UnreadableImageError(f"cannot read image file {shown_path(path)}: {type(err).__name__}: {err}. Remove "
                                   "or replace this file (a truncated copy or download?) and run again") from err
    # Imported here (cached after the first image): torchvision costs ~2 s at import, and only folder
    # data sets decode with it.
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img = TF.resize(img, image_size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    img = TF.center_crop(img, [image_size, image_size])
    return TF.pil_to_tensor(img)


class LazyImageReader:
    """``index -> uint8 (3, S, S)`` decoded on demand; a class (not a closure) so DataLoader workers can pickle it."""

    def __init__(self, paths: list[str], image_size: int) -> None:
        self.paths = paths
        self.image_size = image_size

    def __call__(self, index: int) -> torch.Tensor:
        return decode_image(self.paths[index], self.image_size)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(split_path: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store-style clutter) are not classes.
    return sorted(e.name for e in os.scandir(split_path) if e.is_dir() and not e.name.startswith("."))


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _the_link(*paths: str) -> str:
    """The deepest symlink among the first of ``paths`` (and its parents) that has one, as ``link -> target``:
    what to remove."""
    for path in paths:
        current = path
        while current != os.path.dirname(current):
            if os.path.islink(current):
                return f"{shown_path(current)} -> {shown_path(os.readlink(current))}"
            current = os.path.dirname(current)
    return shown_path(paths[0])


def _outside_error(path: str, real: str, root: str) -> ImageFolderLayoutError:
    return ImageFolderLayoutError(
        f"{shown_path(path)} resolves to {shown_path(real)}, outside the data root {shown_path(root)} (symlink "
        f"{_the_link(path)}). Links that leave the root are refused (the data set would not be what "
        "dataset.root holds); copy the data into the root, or point dataset.root at a folder that contains both"
    )


def _walk_images(class_path: Path, root: str, seen: dict[str, str]) -> list[str]:
    """The image files under ``class_path``, recursively, following symlinks by the rules in the module docstring.

    ``seen`` maps each real folder already walked in this split to the path it was first reached by.
    """
    found, stack = [], [os.fspath(class_path)]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if not _inside(real, root):
            raise _outside_error(folder, real, root)
        if real in seen:
            raise ImageFolderLayoutError(
                f"{shown_path(folder)} leads to the folder {shown_path(real)} a second time (first reached as "
                f"{shown_path(seen[real])}): a symlink loop, or a second symlink to the same folder, would "
                f"repeat its images, possibly under another class. Remove the symlink {_the_link(folder, seen[real])}"
            )
        seen[real] = folder
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():  # follows symlinks
                    stack.append(entry.path)
                elif _is_image(entry.name):
                    if entry.is_symlink():
                        target = os.path.realpath(entry.path)
                        if not _inside(target, root):
                            raise _outside_error(entry.path, target, root)
                    if not entry.is_file():
                        raise UnreadableImageError(
                            f"cannot read image file {shown_path(entry.path)}: not a regular file (a broken "
                            "symlink, a pipe or a device). Remove it and run again"
                        )
                    found.append(entry.path)
    return found


def _list_class_tree(split_path: Path, classes: list[str], root: Path) -> tuple[list[str], list[int]]:
    """All image files under each class folder (recursively, sorted, as torchvision does) and their labels."""
    paths, labels = [], []
    seen: dict[str, str] = {}
    for label, name in enumerate(classes):
        found = _walk_images(split_path / name, os.fspath(root), seen)
        if not found:
            raise ImageFolderLayoutError(
                f"class folder {split_path / name} holds no image files (allowed extensions, any case: "
                f"{', '.join(IMAGE_EXTENSIONS)}); remove the folder or add its images"
            )
        paths += sorted(found)
        labels += [label] * len(found)
    return paths, labels


def _missing_error(path: Path, root: Path, key: str | None = None, value: str | None = None) -> DatasetNotFoundError:
    """``key``/``value``: the config key of the missing split folder (None: the root itself is missing)."""
    setting = f"dataset.root={root}" + (f", dataset.{key}={value}" if key else "")
    fix = f"set dataset.root=<dir that contains '{value}'> or dataset.{key}=<its sub-folder name>" if key else (
        "set dataset.root=<dir that contains the split folders>"
    )
    return DatasetNotFoundError(
        f"image folder not found: {path} does not exist ({setting}).\n"
        f"  expected <root>/<split_dir>/<class>/<image files> (extensions {', '.join(IMAGE_EXTENSIONS)}).\n"
        f"Fix it: {fix}. Image folders cannot be fetched with dataset.download: copy or unpack them there first."
    )


def _files_key(split_path: Path, paths: list[str]) -> str:
    """Hash of every file's (relative path, size, mtime_ns): any added, removed, renamed or rewritten file
    changes it. Paths go in as raw bytes (``os.fsencode``), so names that are not UTF-8 hash too."""
    digest = hashlib.sha256()
    prefix = len(os.fsencode(split_path)) + 1
    for path in paths:
        info = os.stat(path)  # of the target, for a symlink
        digest.update(os.fsencode(path)[prefix:])
        digest.update(b"\0%d\0%d\n" % (info.st_size, info.st_mtime_ns))
    return digest.hexdigest()


def _pixels_crc(images: torch.Tensor) -> int:
    return zlib.crc32(memoryview(images.contiguous().numpy()).cast("B"))


# Decoding more images than this shows a progress bar (60k CIFAR JPEGs take a minute or more on a CPU).
PROGRESS_MIN_IMAGES = 2000


# An error names at most this many of the unreadable files (and counts the rest).
MAX_UNREADABLE_NAMED = 10


def _decode_all(paths: list[str], image_size: int, num_workers: int, what: str = "images") -> torch.Tensor:
    """Every image decoded; an unreadable file does not stop the others, so that the error names all of them
    (one per run cost a full decode of the tree per bad file)."""
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    unreadable: list[tuple[int, UnreadableImageError]] = []

    def decode_into(index: int) -> None:
        try:
            images[index] = decode_image(paths[index], image_size)
        except UnreadableImageError as err:
            unreadable.append((index, err))  # list.append is atomic under the GIL

    from tqdm import tqdm  # imported here: only folder data sets decode

    with tqdm(total=len(paths), desc=f"decoding {what}", unit="img", leave=False,
              disable=len(paths) < PROGRESS_MIN_IMAGES, mininterval=1.0) as bar:
        if num_workers == 0:
            for index in range(len(paths)):
                decode_into(index)
                bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                for _ in pool.map(decode_into, range(len(paths))):  # re-raises the first worker error
                    bar.update(1)
    if len(unreadable) == 1:
        raise unreadable[0][1]
    if unreadable:
        unreadable.sort(key=lambda pair: pair[0])
        named = [shown_path(paths[index]) for index, _ in unreadable[:MAX_UNREADABLE_NAMED]]
        more = len(unreadable) - len(named)
        cause = unreadable[0][1].__cause__
        raise UnreadableImageError(
            f"cannot read {len(unreadable)} image files: {', '.join(named)}{f' and {more} more' if more else ''} "
            f"(the first: {type(cause).__name__}: {cause}). Remove or replace them (truncated copies or downloads?) "
            "and run again")
    return images


def _warn_cache_once(cache_dir: Path, reason: str) -> None:
    if cache_dir not in _warned_cache_dirs:
        _warned_cache_dirs.add(cache_dir)
        warnings.warn(
            f"image folder cache disabled: {reason}. Every run will decode all images again; make the "
            f"folder writable or set dataset.cache=false to silence this.",
            stacklevel=4,
        )


def _load_cache(cache_file: Path, image_size: int, count: int, files_key: str) -> torch.Tensor | None:
    """The cached images if the cache file exists, is intact and was built from the same files, else None."""
    if not cache_file.is_file():
        return None
    try:
        # mmap: loading is instant and the pages are shared between processes reading the same cache.
        cached = torch.load(cache_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a damaged cache is rebuilt, not fatal
        # The error's type only: torch's own text would advise weights_only=False, i.e. running the file's code.
        warnings.warn(f"ignoring unreadable image cache {shown_path(cache_file)} ({type(err).__name__}); decoding "
                      "again", stacklevel=4)
        return None
    expected = {"format": _CACHE_FORMAT, "image_size": image_size, "count": count, "files_key": files_key}
    if not isinstance(cached, dict) or any(cached.get(key) != value for key, value in expected.items()):
        log.info("image cache %s is stale (files or settings changed); rebuilding", shown_path(cache_file))
        return None
    images = cached.get("images")
    if (not isinstance(images, torch.Tensor) or images.dtype != torch.uint8
            or tuple(images.shape) != (count, 3, image_size, image_size) or _pixels_crc(images) != cached.get("crc32")):
        warnings.warn(f"ignoring damaged image cache {shown_path(cache_file)} (its pixels fail their checksum or shape); "
                      "decoding again", stacklevel=4)
        return None
    return images


def _save_cache(cache_file: Path, images: torch.Tensor, image_size: int, files_key: str) -> None:
    content = {
        "format": _CACHE_FORMAT,
        "image_size": image_size,
        "count": len(images),
        "files_key": files_key,
        "crc32": _pixels_crc(images),
        "images": images,
    }
    tmp_name = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Write a temporary file next to the target, then rename: a crash never leaves a half-written cache.
        with tempfile.NamedTemporaryFile(dir=cache_file.parent, prefix=cache_file.name, suffix=".tmp", delete=False) as f:
            tmp_name = f.name
            torch.save(content, f)
        # NamedTemporaryFile creates the file owner-only (0600); make the cache readable like any data file.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, cache_file)
    except OSError as err:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        _warn_cache_once(cache_file.parent, f"cannot write {cache_file} ({err})")


def _read_split(
    root: Path, key: str, split_dir: str, classes: list[str] | None, image_size: int,
    in_memory: bool, cache: bool, num_workers: int,
) -> tuple[ImageSplit, list[str]]:
    """Read one split. ``classes=None``: take its own class folders (train); else they must match (test).

    Returns the split and its class list.
    """
    split_path = root / split_dir
    if not split_path.is_dir():
        raise _missing_error(split_path, root, key, split_dir)
    own_classes = _class_folders(split_path)
    if not own_classes:
        raise ImageFolderLayoutError(f"{split_path} has no class sub-folders; expected <{key}>/<class>/<image files>")
    if classes is not None and own_classes != classes:
        raise ImageFolderLayoutError(
            f"{split_path} has different classes from the train split: only in train: "
            f"{sorted(set(classes) - set(own_classes))}, only in {split_dir}: {sorted(set(own_classes) - set(classes))}"
        )
    paths, labels = _list_class_tree(split_path, own_classes, root)
    return _split_of_files(root, split_path, split_dir, paths, labels, image_size, in_memory, cache,
                           num_workers), own_classes


def _split_of_files(root: Path, split_path: Path, split_dir: str, paths: list[str], labels: list[int],
                    image_size: int, in_memory: bool, cache: bool, num_workers: int) -> ImageSplit:
    """The listed image files as a split: decoded into memory (through the cache) or read lazily."""
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    if not in_memory:
        return ImageSplit(labels=label_tensor, read_image=LazyImageReader(paths, image_size))

    images = None
    if cache:
        files_key = _files_key(split_path, paths)
        safe_name = split_dir.replace("/", "_").replace(os.sep, "_")
        cache_file = root / CACHE_DIR_NAME / f"{safe_name}_{image_size}.pt"
        images = _load_cache(cache_file, image_size, len(paths), files_key)
    if images is None:
        log.info("decoding %d images from %s at %dx%d", len(paths), split_path, image_size, image_size)
        images = _decode_all(paths, image_size, num_workers, what=f"{shown_path(split_dir)}/ ({len(paths)} images)")
        if cache:
            _save_cache(cache_file, images, image_size, files_key)
    return ImageSplit(labels=label_tensor, images=images)


def _check_reader_arguments(name: str, image_size, num_workers) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"{name}: image_size must be a positive integer, got {image_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"{name}: num_workers must be an integer >= 0, got {num_workers!r}")


def load_imagefolder(
    root: str | os.PathLike,
    train_dir: str = "train",
    test_dir: str = "test",
    pretrain_dir: str | None = None,
    image_size: int = 32,
    in_memory: bool = True,
    cache: bool = True,
    num_workers: int = 4,
    name: str = "imagefolder",
) -> ImageDataset:
    """A data set from ``<root>/<train_dir>`` and ``<root>/<test_dir>`` class-folder trees.

    ``pretrain_dir`` (default: ``train_dir``) is what self-supervised training reads; it must have the
    same class folders as the train split (its labels are only used for label-aware samplers/metrics).
    ``num_workers`` threads decode images (0: decode in the calling thread).
    """
    _check_reader_arguments(name, image_size, num_workers)
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise _missing_error(root_path, root_path)

    options = dict(image_size=image_size, in_memory=in_memory, cache=cache, num_workers=num_workers)
    train, classes = _read_split(root_path, "train_dir", train_dir, None, **options)
    test, _ = _read_split(root_path, "test_dir", test_dir, classes, **options)
    if pretrain_dir is None or pretrain_dir == train_dir:
        pretrain = train
    else:
        pretrain, _ = _read_split(root_path, "pretrain_dir", pretrain_dir, classes, **options)
    return ImageDataset(
        name=name, pretrain=pretrain, train=train, test=test, classes=classes, image_size=image_size
    )


def load_image_files(
    root: str | os.PathLike,
    image_size: int = 32,
    in_memory: bool = True,
    cache: bool = True,
    num_workers: int = 4,
    name: str = "image_files",
) -> ImageDataset:
    """Every image file under ``root`` (any depth; class folders or none), as one unlabelled split.

    For out-of-distribution detection, which needs images but no labels and no train/test split:
    e.g. Tiny-ImageNet's ``val/images`` folder of 10,000 JPEGs. ``train``, ``test`` and ``pretrain`` are
    the same split, every label is -1. The same rules as :func:`load_imagefolder` apply (links,
    special files, decoding, the cache under ``<root>/.cl_suite_cache``).
    """
    _check_reader_arguments(name, image_size, num_workers)
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise DatasetNotFoundError(f"image files not found: {root_path} is not a folder (root={root}). Point the "
                                   "setting at a folder of image files (any depth), e.g. ood_root=<tiny-imagenet>/val")
    paths = sorted(_walk_images(root_path, os.fspath(root_path), {}))
    if not paths:
        raise DatasetNotFoundError(f"{root_path} holds no image files (allowed extensions, any case: "
                                   f"{', '.join(IMAGE_EXTENSIONS)})")
    split = _split_of_files(root_path, root_path, "all", paths, [-1] * len(paths), image_size, in_memory, cache,
                            num_workers)
    return ImageDataset(name=name, pretrain=split, train=split, test=split, classes=["(unlabelled)"],
                        image_size=image_size)
