"""Shared helpers of the training benchmarks (step_overhead.py, precision.py, ddp_scaling.py).

- ``build_trainer(overrides, images)``: a real ``cl_suite`` ``Trainer`` composed from conf/train.yaml with
  the Hydra compose API, on synthetic 32x32 images (CIFAR-sized), no logger, no evaluation at init,
  output in a temporary directory removed at exit.
- ``time_it(fn, device)``: warm-up calls excluded, then per-call seconds (CUDA events on a GPU, so no
  host sync is inserted between calls; ``perf_counter`` on the CPU); median and mean.
- ``describe_device``, ``header``, ``markdown_table``: the lines every benchmark prints.

The scripts import this as ``common`` (``python bench/<script>.py`` puts bench/ on ``sys.path``).
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from tables import markdown_table  # noqa: F401  (re-exported: the scripts call common.markdown_table)
import cl_suite.resolvers  # noqa: F401  (registers ${cl_suite.run_folder:} as train.py does)
from cl_suite.distributed import resolve_device
from cl_suite.engine.trainer import Trainer, autocast
from cl_suite.engine.validation import validate_train_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "cl_suite" / "conf"  # (the checkout's conf/ links here)
ON_CUDA = torch.cuda.is_available()

# Settings every benchmark run starts from: synthetic CIFAR-sized data, nothing logged or evaluated,
# no checkpoint looked up or written, and a schedule long enough that it never ends while we time it.
# evaluation.knn.k=1: the data set may be one small batch (16 images for the CPU's resnet18:16), fewer
# than the default k=20 that validation checks against; the benchmarks never evaluate.
BASE_OVERRIDES = [
    "evaluation.knn.k=1",
    "logger=none",
    "dataset=synthetic",
    "dataset.image_size=32",
    "dataset.augment.crop_size=32",
    "dataset.test_per_class=8",
    "trainer.eval_at_init=false",
    "trainer.eval_every_epochs=0",
    "trainer.checkpoint_every_epochs=0",
    "trainer.progress_bar=false",
    "trainer.epochs=1000",
    "resume=null",
]


def compose_config(overrides: list[str], images: int, output_dir: str) -> DictConfig:
    """conf/train.yaml + ``BASE_OVERRIDES`` + ``overrides`` (later ones win), with at least ``images``
    synthetic training images (4 classes) and ``paths.output_dir`` set to ``output_dir``."""
    per_class = math.ceil(images / 4)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=[*BASE_OVERRIDES, "dataset.num_classes=4",
                                                       f"dataset.train_per_class={per_class}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    return cfg


def temp_dir() -> str:
    """A fresh temporary directory, removed when the process exits."""
    path = tempfile.mkdtemp(prefix="cl_suite_bench_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def build_trainer(overrides: list[str], images: int) -> Trainer:
    """A ``Trainer`` on the device ``trainer.device`` names (auto: CUDA when present), in train mode.
    Under torchrun, call ``init_distributed`` first (as ``cl_suite.engine.trainer.train`` does)."""
    cfg = compose_config(overrides, images, temp_dir())
    validate_train_config(cfg)
    # The trainer's start-up lines (the batch and learning rate) go to stderr: a script's stdout is its tables.
    with contextlib.redirect_stdout(sys.stderr):
        trainer = Trainer(cfg, resolve_device(cfg.trainer.device))
    trainer.model.train()
    return trainer


def first_batch(trainer: Trainer):
    """The first batch of epoch 0 (uint8 images on the training device)."""
    return next(iter(trainer.batches.epoch(0)))


def backbone_fwd_bwd(trainer: Trainer, views: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], None]:
    """Forward + backward of the backbone alone on both views (2B images), the way the method calls it
    (one call per view, or one call on both when ``method.concat_views``), under the trainer's autocast,
    with a trivial loss ``h.float().sum()``; gradients are dropped before each call as the step does."""
    backbone, method = trainer.method.backbone, trainer.method
    precision, device = trainer.cfg.trainer.precision, trainer.device

    def run() -> None:
        backbone.zero_grad(set_to_none=True)
        with autocast(precision, device):
            if method.concat_views:
                h = backbone(torch.cat(views))
            else:
                h = torch.cat([backbone(views[0]), backbone(views[1])])
        h.float().sum().backward()

    return run


def augment_views(trainer: Trainer, images: torch.Tensor, generator: torch.Generator):
    """The augmentation part of ``Trainer.train_step``: two views, channels_last when the trainer uses it."""
    views = trainer.augment(images, generator)
    if trainer.channels_last:
        views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
    return views


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    times: list[float]  # seconds of each timed call

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.times)


def time_it(fn: Callable[[], object], device: torch.device, iters: int = 10, warmup: int = 3) -> Timing:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls.

    On CUDA, an event is recorded after every call and the host synchronises once at the end, so the
    per-call times are GPU time between consecutive calls (queueing ahead is kept, as in training).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        events[0].record()
        for event in events[1:]:
            fn()
            event.record()
        events[-1].synchronize()
        times = [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]
    else:
        times, last = [], time.perf_counter()
        for _ in range(iters):
            fn()
            now = time.perf_counter()
            times.append(now - last)
            last = now
    return Timing(times)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, iters: int, warmup: int,
                     rounds: int) -> dict[str, Timing]:
    """``time_it`` for each function in turn, ``rounds`` times, pooling the calls of each function: on a
    shared machine a slow spell then hits every function, not just the one being timed."""
    pooled: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            pooled[name] += time_it(fn, device, iters, warmup if r == 0 else 1).times
    return {name: Timing(times) for name, times in pooled.items()}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (the platform string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _machine_busy_s() -> float:
    """CPU-seconds all processes on this machine have used since boot (/proc/stat), or NaN."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU-seconds of this process and its finished children (torchrun workers included)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


_START = (time.perf_counter(), _machine_busy_s(), _own_cpu_s())


def contention() -> str:
    """How much CPU other processes used since this benchmark started: the check that a CPU number was
    not taken while something else (a test suite) ran on the same cores."""
    wall = time.perf_counter() - _START[0]
    others = (_machine_busy_s() - _START[1]) - (_own_cpu_s() - _START[2])
    return f"other processes used {max(others, 0.0):.1f} CPU-s during the {wall:.0f} s run"


def describe_device(device: torch.device) -> str:
    """E.g. 'NVIDIA H100 80GB HBM3 (79 GiB, CUDA 13.0)' or 'CPU: AMD EPYC, 2 cores, 2 torch threads, AVX2'."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return (f"CPU: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"{torch.backends.cpu.get_cpu_capability()}")


def header(title: str, device: torch.device, note: str = "") -> str:
    """The Markdown lines above a table: what, when, where."""
    today = datetime.date.today().isoformat()
    lines = [f"### {title}", "", f"{today}, {describe_device(device)}, torch {torch.__version__}."]
    if note:
        lines[-1] += " " + note
    lines[-1] += f" Contention check: {contention()}."
    return "\n".join(lines) + "\n"


# SimCLR on a CIFAR ResNet-18 at 32x32 (3x3/1 stem, no max-pool): 0.555 GMACs = 1.11 GFLOPs forward
# per view, x3 for forward+backward, x2 views.
SIMCLR_RESNET18_FLOPS_PER_IMAGE = 6.67e9
H100_BF16_DENSE_FLOPS = 989e12


def mfu(images_per_s: float, flops_per_image: float = SIMCLR_RESNET18_FLOPS_PER_IMAGE,
        peak_flops: float = H100_BF16_DENSE_FLOPS) -> float:
    return images_per_s * flops_per_image / peak_flops
