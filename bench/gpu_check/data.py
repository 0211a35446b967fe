"""Stage ``data``: the CIFAR-10 JPEG tree under ``$CL_SUITE_DATA/cifar10-jpg``, decoded once into the
image-folder cache that every later stage's ``dataset=cifar10_jpg`` loads in a second.

GPU run: unpack the whole archive (``--archive``, default ``.gpu_data/cifar10-jpg.tar.gz``), decode the
60k JPEGs. Dry run (``GPU_CHECK_DRY=1``): a tiny tree of 20 train / 10 test images per class, taken from
the archive when it is there, else written from random pixels, so the dry run needs no data at all.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import _shared

# 200 train images: 6 steps of batch 32 per epoch for the study, 12 of 16 for the throughput stage
TINY_PER_CLASS = {"train": 20, "test": 10}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def tiny_tree_from_archive(archive: Path, dest: Path) -> int:
    """The first files (in archive order) of each class and split; the archive is read as one stream."""
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in TINY_PER_CLASS:
                continue
            key = (parts[0], parts[1])
            if taken.get(key, 0) >= TINY_PER_CLASS[parts[0]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            out = dest.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
            if len(taken) == 2 * len(CLASSES) and all(taken[k] >= TINY_PER_CLASS[k[0]] for k in taken):
                break
    return sum(taken.values())


def tiny_tree_synthetic(dest: Path) -> int:
    """Random 32x32 JPEGs whose mean colour depends on the class (so kNN has something to find)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    count = 0
    for split, per_class in TINY_PER_CLASS.items():
        for name in CLASSES:
            folder = dest / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, size=3)
            for i in range(per_class):
                pixels = np.clip(base + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                (folder / f"{i:04d}.jpg").write_bytes(buf.getvalue())
                count += 1
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", default=str(_shared.ROOT / ".gpu_data" / "cifar10-jpg.tar.gz"))
    args = p.parse_args()
    data_dir = Path(os.environ.get("CL_SUITE_DATA") or _shared.WORK / "data")
    dest = data_dir / "cifar10-jpg"
    archive = Path(args.archive)
    section = _shared.Section("data", "Data: CIFAR-10 JPEG tree, decoded once")

    start = time.perf_counter()
    if (dest / "train").is_dir() and (dest / "test").is_dir():
        how, files = "already unpacked", sum(1 for _ in dest.rglob("*.jpg"))
    else:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if _shared.DRY and archive.is_file():
            how, files = f"tiny subset of {archive.name}", tiny_tree_from_archive(archive, dest)
        elif _shared.DRY:
            how, files = "tiny synthetic JPEG tree (no archive)", tiny_tree_synthetic(dest)
        else:
            if not archive.is_file():
                raise SystemExit(f"{archive} is missing: put the CIFAR-10 JPEG tree (train/<class>/*.jpg, test/<class>/*.jpg) there as a tar.gz "
                                 "(see the preparation step at the top of bench/gpu_check.sh) and carry .gpu_data")
            subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
            how, files = f"unpacked {archive.name}", sum(1 for _ in dest.rglob("*.jpg"))
    unpack_s = time.perf_counter() - start

    from cl_suite.engine.build import build_dataset

    cfg = _shared.compose(_shared.data_overrides(), str(_shared.WORK / "run_data"))
    start = time.perf_counter()
    data = build_dataset(cfg.dataset)
    decode_s = time.perf_counter() - start
    cache = sorted(str(p.relative_to(dest)) for p in (dest / ".cl_suite_cache").glob("*"))
    rows = [["unpack", how, f"{files:,} files", f"{unpack_s:.1f}"],
            ["decode + cache", f"{cfg.dataset.num_workers} threads", f"train {tuple(data.train.images.shape)}, "
             f"test {tuple(data.test.images.shape)}", f"{decode_s:.1f}"]]
    section.add(_shared.table(["step", "how", "result", "s"], rows))
    section.add(f"Root {dest}; cache files: {', '.join(cache) or 'none'}.")
    section.headline(f"{len(data.train):,} train / {len(data.test):,} test images; unpack {unpack_s:.0f} s, "
                     f"decode {decode_s:.0f} s")


if __name__ == "__main__":
    main()
