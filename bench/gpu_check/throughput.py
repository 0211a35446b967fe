"""Stage ``throughput``: SimCLR training speed on the real CIFAR-10 JPEGs (decoded once, uint8 on the
device, batched augmentation on the device), against the peers' pipeline on the same GPU.

1. The real loop (``Trainer.train_epoch``: batches, augmentation, step, accumulation, log syncs) for
   ``--steps`` steps after ``--warmup`` steps, per variant: eager/compiled x channels_last/NCHW. Images/s,
   s per 50k-image epoch, MFU at 6.67 GFLOPs per image-step (CIFAR ResNet-18, 2 views, fwd+bwd) against
   989 TFLOP/s (H100 SXM and H200 bf16 dense peak; the same GH100 tensor cores) and against the bf16
   matmul rate measured in this run.
2. Eager variants: where a step's time goes, each part timed alone on one batch (CUDA events, medians):
   augmentation; backbone forward+backward; projector + loss + sampler + diagnostics + online probe
   forward+backward on cached backbone features; the rest (optimizer steps, schedule, Python).
3. The peers' pipeline: torchvision per-image transforms on PIL images (RandomResizedCrop 32, flip,
   ColorJitter 0.4/0.4/0.4/0.1 p=0.8, grayscale p=0.2, ToTensor, Normalize) in a DataLoader with
   ``--workers`` workers, feeding the same model, loss and optimizer (``train_step`` with the augmentation
   replaced by the loader's views); the loader alone too. Ratio ours / peers.

Each table is written as soon as its row is measured (a stage timeout keeps what was measured).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

import _shared
import common
from cl_suite.data.loader import Batch
from cl_suite.distributed import resolve_device
from cl_suite.engine.trainer import Trainer, autocast
from cl_suite.engine.validation import validate_train_config

PEAK = common.H100_BF16_DENSE_FLOPS  # 989e12: H100 SXM5 / H200 bf16 dense, no sparsity (NVIDIA's datasheet)
COMPILE_ESTIMATE_S = 110.0  # a compiled ResNet-18 variant: compilation + timing (skipped when less time is left)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device) -> float | None:
    """bf16 8192^3 matrix product rate (FLOP/s), median of 10 after 3 warm-ups, random data; None on the CPU."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    t = common.time_it(lambda: a @ b, device, iters=10, warmup=3)
    return 2 * 8192**3 / t.median_s


def build(args, compiled: bool, channels_last: bool) -> Trainer:
    overrides = [*_shared.data_overrides(), "method=simclr", f"backbone={args.backbone}",
                 f"trainer.batch_size={args.batch}", f"trainer.precision={args.precision}",
                 f"trainer.channels_last={str(channels_last).lower()}", f"trainer.compile={str(compiled).lower()}",
                 "trainer.epochs=1000", *args.override]
    cfg = _shared.compose(overrides, common.temp_dir())
    validate_train_config(cfg)
    trainer = Trainer(cfg, resolve_device(cfg.trainer.device))
    trainer.model.train()
    return trainer


def run_loop(trainer: Trainer, steps: int) -> float:
    """Seconds for ``steps`` more iterations of the real epoch loop (host clock, synchronised both ends)."""
    assert trainer.step + steps <= trainer.steps_per_epoch, "stay inside epoch 0 (no end-of-epoch work timed)"
    sync(trainer.device)
    trainer.stop_step = trainer.step + steps
    start = time.perf_counter()
    trainer.train_epoch(0)
    sync(trainer.device)
    return time.perf_counter() - start


class CachedBackbone(nn.Module):
    """Stands in for the backbone: returns precomputed features (leaves with gradient), one per call."""

    def __init__(self, features: list[torch.Tensor], num_features: int):
        super().__init__()
        self.features, self.calls, self.num_features = features, 0, num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features[self.calls % len(self.features)]
        self.calls += 1
        return h


def head_fwd_bwd(trainer: Trainer, views, batch: Batch):
    """Forward + backward of everything after the backbone (projector, loss, sampler, diagnostics, probe)."""
    method, precision, device = trainer.method, trainer.cfg.trainer.precision, trainer.device
    with torch.no_grad(), autocast(precision, device):
        outs = [method.backbone(torch.cat(views))] if method.concat_views else [method.backbone(v) for v in views]
    cached = CachedBackbone([h.detach().requires_grad_() for h in outs], method.backbone.num_features)

    def run() -> None:
        real = method._modules["backbone"]
        method._modules["backbone"] = cached
        try:
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.probe_optimizer.zero_grad(set_to_none=True)
            with autocast(precision, device):
                out, probe_loss, _ = trainer.model(views, batch.labels, batch.indices)
            (out.loss + probe_loss).backward()
        finally:
            method._modules["backbone"] = real

    return run


def breakdown(trainer: Trainer, args) -> list[object]:
    device = trainer.device
    batch = common.first_batch(trainer)
    gen = torch.Generator(device=device).manual_seed(0)
    views = common.augment_views(trainer, batch.images, gen)
    t = common.time_interleaved(
        {"full": lambda: trainer.train_step(batch, gen),
         "augment": lambda: common.augment_views(trainer, batch.images, gen),
         "backbone": common.backbone_fwd_bwd(trainer, views),
         "head": head_fwd_bwd(trainer, views, batch)},
        device, args.iters, warmup=2, rounds=args.rounds)
    full, aug, bb, head = (t[k].median_s for k in ("full", "augment", "backbone", "head"))
    rest = full - aug - bb - head

    def part(x: float) -> str:
        return f"{1e3 * x:.2f} ({100 * x / full:.0f}%)"

    return [f"{1e3 * full:.2f}", part(aug), part(bb), part(head), part(rest)]


class PeerViews(torch.utils.data.Dataset):
    """What the public CIFAR SSL code bases do: a PIL image per sample, torchvision transforms twice."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean, std):
        import torchvision.transforms as T

        self.images, self.labels = images_hwc, labels
        self.transform = T.Compose([
            T.RandomResizedCrop(32), T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
            T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img), int(self.labels[i]), i


def peer_window(args, batches_per_epoch: int) -> tuple[int, int]:
    """(untimed batches, timed batches) of the peers' loader. The workers start together and each makes a
    batch at once, so a timing window that begins before that first round has been taken would count
    up to ``workers`` ready batches as free (the old default, 4 untimed and 20 timed with 16 workers, could
    count 12 of the 20; not yet measured on a GPU). By default one round is taken untimed and two rounds
    are timed, and each phase (loader alone, then 2 fed warm-up steps and the fed steps) stays inside one
    epoch of the persistent iterator."""
    warmup = args.workers if args.peer_warmup is None else args.peer_warmup
    steps = 2 * max(args.workers, 1) if args.peer_steps is None else args.peer_steps
    needed = warmup + 2 * steps + 2
    if needed > batches_per_epoch:
        raise SystemExit(f"--peer-warmup {warmup} and --peer-steps {steps} need {needed} batches of "
                         f"{args.batch}, more than the {batches_per_epoch} of one epoch: lower them")
    return warmup, steps


def peers(trainer: Trainer, args) -> tuple[list[list[object]], float]:
    """Rows: the loader alone, and the loader feeding the same model/loss/optimizer on the device."""
    device, split = trainer.device, trainer.data.pretrain
    ds = PeerViews(split.images.permute(0, 2, 3, 1).contiguous().numpy(), split.labels.numpy(),
                   list(trainer.cfg.dataset.mean), list(trainer.cfg.dataset.std))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=True, prefetch_factor=4)
    warmup, steps = peer_window(args, len(loader))
    it = iter(loader)
    for _ in range(warmup):  # worker start-up: the workers' first batches, made at once, are not timed
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    alone = steps * args.batch / (time.perf_counter() - start)

    real_augment, gen = trainer.augment, torch.Generator(device=device).manual_seed(0)
    trainer.augment = lambda images, generator, pair_images=None: images  # the loader's views go straight to the step
    try:
        def fed_step() -> None:
            v1, v2, labels, idx = next(it)
            idx = idx.to(device, non_blocking=True)
            trainer.train_step(Batch((v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)),
                                     labels.to(device, non_blocking=True), idx), gen)

        for _ in range(2):
            fed_step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fed_step()
        sync(device)
        fed = steps * args.batch / (time.perf_counter() - start)
    finally:
        trainer.augment = real_augment
        del it, loader
    return [["loader alone (PIL transforms, no model)", args.workers, f"{alone:,.0f}"],
            ["loader feeding the same model + loss + optimizer", args.workers, f"{fed:,.0f}"]], fed


def headline(rates: dict[str, float], is_r18: bool, workers: int) -> str:
    """The stage's summary line from the variants measured so far (written after each one: a stage that
    times out while compiling a later variant keeps the line of what it measured)."""
    best = max((k for k in rates if k != "peers"), key=rates.get, default=None)
    head = []
    if "eager:nhwc" in rates:
        ips = rates["eager:nhwc"]
        head.append(f"eager NHWC {ips:,.0f} img/s ({50_000 / ips:.2f} s/epoch"
                    + (f", MFU {100 * ips * common.SIMCLR_RESNET18_FLOPS_PER_IMAGE / PEAK:.1f}%" if is_r18 else "") + ")")
    if best and best != "eager:nhwc":
        head.append(f"best {best} {rates[best]:,.0f} img/s")
    if "peers" in rates and best:
        head.append(f"peers {rates['peers']:,.0f} img/s ({workers} workers): ours/peers "
                    f"{rates.get('eager:nhwc', rates[best]) / rates['peers']:.1f}x")
    return "; ".join(head)


def main() -> None:
    dry, cuda = _shared.DRY, torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="small_convnet" if dry else "resnet18")
    p.add_argument("--batch", type=int, default=16 if dry else 512)  # dry: warm-up + steps + 7 loader batches fit 200 images
    p.add_argument("--precision", default="fp32" if dry or not cuda else "bf16")
    p.add_argument("--warmup", type=int, default=2 if dry else 10, help="loop steps before timing (compilation)")
    p.add_argument("--steps", type=int, default=4 if dry else 40, help="timed loop steps (inside epoch 0)")
    p.add_argument("--iters", type=int, default=2 if dry else 10, help="breakdown: timed calls per round")
    p.add_argument("--rounds", type=int, default=1 if dry else 3)
    p.add_argument("--workers", type=int, default=2 if dry else min(16, os.cpu_count() or 1))
    p.add_argument("--peer-warmup", type=int, default=1 if dry else None, help="default: --workers batches")
    p.add_argument("--peer-steps", type=int, default=2 if dry else None, help="default: 2 x --workers batches")
    p.add_argument("--variants", nargs="+", default=["eager:nhwc", "eager:nchw", "compiled:nhwc", "compiled:nchw"])
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--override", nargs="*", default=[], help="extra train.yaml overrides")
    args = p.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:  # dry run: torch.compile traces with dynamo only (inductor's C++ build takes minutes on a CPU)
        real_compile = torch.compile
        torch.compile = lambda fn, *a, mode=None, **kw: real_compile(fn, backend="eager")
    if cuda and args.cudnn_benchmark:  # off by default: measure what `python train.py` does
        torch.backends.cudnn.benchmark = True

    section = _shared.Section("throughput", "Throughput: SimCLR on CIFAR-10 JPEGs, GPU data and augmentation vs peers")
    ceiling = matmul_ceiling(device)
    is_r18 = args.backbone == "resnet18" and args.precision in ("bf16", "fp16")
    section.add(f"{common.describe_device(device)}, torch {torch.__version__}; {args.backbone}, batch {args.batch}, "
                f"{args.precision}; loop timed over {args.steps} steps after {args.warmup} (host clock, synchronised). "
                f"MFU = images/s x 6.67 GFLOPs / {PEAK / 1e12:.0f} TFLOP/s (H100 SXM / H200 bf16 dense peak)"
                + (f"; measured bf16 8192^3 matmul: {ceiling / 1e12:.0f} TFLOP/s." if ceiling else "."))

    loop_cols = ["variant", "warm-up s (compile incl.)", "step ms", "images/s", "s per 50k epoch", "MFU", "x matmul rate"]
    part_cols = ["variant", "full step ms", "augment ms (%)", "backbone fwd+bwd ms (%)",
                 "projector+loss+sampler+diag+probe ms (%)", "rest: optimizers, schedule, Python ms (%)"]
    loop_rows, part_rows, peer_rows, rates = [], [], [], {}

    def show() -> None:
        parts = ["### The real loop per variant\n", _shared.table(loop_cols, loop_rows)]
        if part_rows:
            parts += ["\n### Where a step's time goes (each part alone, one batch, medians)\n",
                      _shared.table(part_cols, part_rows)]
        if peer_rows:
            parts += ["\n### The peers' pipeline on the same GPU\n", _shared.table(["pipeline", "workers", "images/s"], peer_rows)]
        section.parts[2:] = ["\n".join(parts) + "\n"]
        section.flush()
        if rates:
            section.headline(headline(rates, is_r18, args.workers))

    for variant in args.variants:
        mode, fmt = variant.split(":")
        compiled = mode == "compiled"
        if cuda and compiled and _shared.seconds_left() < COMPILE_ESTIMATE_S:
            loop_rows.append([variant, f"skipped: {_shared.seconds_left():.0f} s left", "", "", "", "", ""])
            show()
            continue
        trainer = build(args, compiled, fmt == "nhwc")
        warm = run_loop(trainer, args.warmup)
        seconds = run_loop(trainer, args.steps)
        ips = args.steps * args.batch / seconds
        rates[variant] = ips
        flops = ips * common.SIMCLR_RESNET18_FLOPS_PER_IMAGE
        loop_rows.append([variant, f"{warm:.1f}", f"{1e3 * seconds / args.steps:.2f}", f"{ips:,.0f}",
                          f"{50_000 / ips:.2f}", f"{100 * flops / PEAK:.1f}%" if is_r18 else "-",
                          f"{100 * flops / ceiling:.1f}%" if is_r18 and ceiling else "-"])
        print(f"{variant}: {ips:,.0f} images/s", flush=True)
        show()
        if not compiled:
            part_rows.append([variant, *breakdown(trainer, args)])
            show()
        if variant == "eager:nhwc" or (not peer_rows and not compiled):
            rows, fed = peers(trainer, args)
            peer_rows.extend(rows)
            ours = rates[variant]
            peer_rows.append([f"ratio: ours ({variant}, real loop) / peers (fed)", "", f"{ours / fed:.1f}x"])
            rates["peers"] = fed
            show()
        del trainer
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
