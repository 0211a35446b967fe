"""Training-step time of every framework relative to SimCLR, measured in one run (issues 5 and 6).

For each ``method`` preset, a full ``Trainer.train_step`` (augmentation, forward, loss, backward,
optimizer steps, and the method's after-step work: momentum update, enqueue, bank or k-means update)
on the same batch of synthetic images; all methods are timed in turn, in several rounds, so a slow
spell of a shared machine hits them all. Prints each method's median step time / simclr's.

    python bench/framework_cost.py                           # every method preset, small_convnet, batch 128
    python bench/framework_cost.py --methods simclr moco nnclr --backbone resnet18 --batch 512
"""
from __future__ import annotations

import argparse

import torch

import common
from cl_suite.engine.precision import PRECISION_DTYPES

DEFAULT_METHODS = ["simclr", "moco", "mochi", "moco_ring", "ir", "ir_ring", "cmc", "nnclr", "kmclr", "supcon",
                   "rince", "supervised"]
# Settings that make a preset run on the synthetic bench data (4 classes, no superclasses).
EXTRA = {"rince": ["method.class_groups=[[0,1],[2,3]]"], "nnclr": ["method.support_set_size=16384"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="conf/method options (simclr is the baseline)")
    p.add_argument("--backbone", default="resnet18" if common.ON_CUDA else "small_convnet")
    p.add_argument("--batch", type=int, default=512 if common.ON_CUDA else 128)
    p.add_argument("--precision", default="bf16" if common.ON_CUDA else "fp32", choices=list(PRECISION_DTYPES))
    p.add_argument("--iters", type=int, default=10 if common.ON_CUDA else 3, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=3 if common.ON_CUDA else 2)
    args = p.parse_args()
    methods = ["simclr", *[m for m in args.methods if m != "simclr"]]

    steps = {}
    for method in methods:
        overrides = [f"method={method}", f"backbone={args.backbone}", f"trainer.batch_size={args.batch}",
                     f"trainer.precision={args.precision}", *EXTRA.get(method, [])]
        trainer = common.build_trainer(overrides, images=4 * args.batch)  # a bank of one row per image
        batch = common.first_batch(trainer)
        generator = torch.Generator(device=trainer.device).manual_seed(0)
        steps[method] = (lambda t=trainer, b=batch, g=generator: t.train_step(b, g))
    device = trainer.device
    timings = common.time_interleaved(steps, device, args.iters, warmup=2, rounds=args.rounds)
    base = timings["simclr"].median_s
    rows = [[m, f"{1e3 * timings[m].median_s:.1f}", f"{timings[m].median_s / base:.2f}"] for m in methods]
    note = (f"{args.backbone}, global batch {args.batch}, {args.precision}, synthetic 32x32 images; medians of "
            f"{args.rounds}x{args.iters} full training steps after warm-up.")
    print(common.header("Training step per framework vs SimCLR (`bench/framework_cost.py`)", device, note))
    print(common.markdown_table(["method", "step ms", "step / simclr"], rows))


if __name__ == "__main__":
    main()
