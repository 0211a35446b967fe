"""Throughput of the batched two-view augmentation vs torchvision's per-image PIL SimCLR pipeline.

Prints images/s (each image yields two augmented views in both pipelines) for
  (a) ``cl_suite.data.augment.TwoViewAugment`` on an in-memory uint8 batch, on CUDA if available, else CPU;
  (b) torchvision's PIL pipeline (RandomResizedCrop, flip, ColorJitter p=0.8, grayscale p=0.2, ToTensor,
      Normalize) through a DataLoader with 0 and 2 workers, each sample built as CIFAR10.__getitem__
      does (``Image.fromarray`` of an HWC uint8 array),
and the ratio batched / PIL measured in the same run. The data are synthetic CIFAR-size images.

    PYTHONPATH=src python bench/augment_throughput.py [--images 4096] [--pil-images 2048] [--batch 512]
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from cl_suite.data.augment import AugmentConfig, TwoViewAugment

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class PilTwoViews(Dataset):
    """In-memory uint8 HWC images; each item is two PIL-augmented views, as the usual SSL repos do."""

    def __init__(self, images_hwc: np.ndarray, size: int) -> None:
        self.images = images_hwc
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(size),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img)


def bench_batched(images: torch.Tensor, batch: int, repeats: int) -> float:
    """Images/s of TwoViewAugment over the whole set, batch by batch, after one warm-up pass."""
    aug = TwoViewAugment(AugmentConfig(mean=MEAN, std=STD))
    g = torch.Generator(device=images.device).manual_seed(0)
    sync = torch.cuda.synchronize if images.device.type == "cuda" else (lambda: None)

    def one_pass() -> None:
        for start in range(0, len(images), batch):
            aug(images[start : start + batch], g)

    one_pass()  # warm-up: allocator, kernel selection, cached mean/std
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    sync()
    return repeats * len(images) / (time.perf_counter() - t0)


def bench_pil(images_hwc: np.ndarray, size: int, workers: int, batch: int) -> float:
    """Images/s of the PIL pipeline through a DataLoader; the clock starts after the first batch, so
    worker start-up is not counted."""
    loader = DataLoader(PilTwoViews(images_hwc, size), batch_size=batch, shuffle=True, num_workers=workers)
    it = iter(loader)
    first = next(it)
    n = len(first[0])
    t0 = time.perf_counter()
    for v1, _ in it:
        n += len(v1)
    elapsed = time.perf_counter() - t0
    return (n - len(first[0])) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4096, help="images for the batched pipeline")
    p.add_argument("--pil-images", type=int, default=2048, help="images for each PIL DataLoader run")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="timed passes of the batched pipeline")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args()
    if args.pil_images < 2:
        p.error("--pil-images must be at least 2 (the first DataLoader batch is not timed)")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    n = max(args.images, args.pil_images)
    hwc = rng.integers(0, 256, size=(n, args.size, args.size, 3), dtype=np.uint8)
    nchw = torch.from_numpy(hwc[: args.images]).permute(0, 3, 1, 2).contiguous().to(device)

    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device} ({dev_name}), "
          f"CPU threads {torch.get_num_threads()}")
    print(f"synthetic uint8 {args.size}x{args.size}x3 images, two views per image, images/s counts images\n")

    threads = torch.get_num_threads()
    batched = bench_batched(nchw, args.batch, args.repeats)
    rows = [(f"batched TwoViewAugment, batch {args.batch}, {device.type}", args.images, batched)]
    # Per-image PIL work does not use intra-op threads, so the PIL rows run with one torch thread (the
    # DataLoader sets one per worker anyway); on a CPU, a one-thread batched row makes the per-core
    # comparison fair.
    torch.set_num_threads(1)
    if device.type == "cpu" and threads > 1:
        rows.append((f"batched TwoViewAugment, batch {args.batch}, cpu, 1 thread", args.images,
                     bench_batched(nchw, args.batch, args.repeats)))
    # DataLoader batches of 256 (fewer when --pil-images is small, so that a batch after the untimed first
    # one is left to time).
    pil_batch = min(256, args.pil_images // 2)
    for w in args.workers:
        rate = bench_pil(hwc[: args.pil_images], args.size, w, batch=pil_batch)
        rows.append((f"torchvision PIL pipeline, DataLoader {w} workers", args.pil_images, rate))

    print(f"| {'pipeline':<52} | {'images':>6} | {'images/s':>9} | {'batched/this':>12} |")
    print(f"| {'-' * 52} | {'-' * 6} | {'-' * 9} | {'-' * 12} |")
    for name, count, rate in rows:
        print(f"| {name:<52} | {count:>6} | {rate:>9,.0f} | {batched / rate:>11.1f}x |")


if __name__ == "__main__":
    main()
