"""Full training-step time per ``trainer.precision`` (issue item c): fp32 vs bf16 autocast (vs fp16 autocast
+ GradScaler on CUDA), each relative to fp32 measured in the same run.

One ``Trainer`` per precision, same backbone, batch and seed; their ``train_step`` calls are timed in
turn (interleaved rounds), on one batch of synthetic 32x32 uint8 images on the device.

On a CPU without AVX512-BF16/AMX, bf16 autocast is emulated and much slower than fp32: keep sizes tiny
there. On CUDA, "fp32" convolutions use TF32 tensor cores unless cuDNN's TF32 is switched off (the
header prints the setting).

    python bench/precision.py                                  # CPU: small_convnet, batch 64, fp32 bf16
    python bench/precision.py --backbone resnet18 --batch 512  # CUDA default; fp32 bf16 fp16
"""
from __future__ import annotations

import argparse

import torch

import common
from cl_suite.engine.precision import PRECISION_DTYPES


def tf32_note() -> str:
    conv = getattr(torch.backends.cudnn, "conv", None)
    conv_mode = conv.fp32_precision if conv is not None else ("tf32" if torch.backends.cudnn.allow_tf32 else "ieee")
    return f"fp32 convolutions: cuDNN {conv_mode}; fp32 matmul precision: {torch.get_float32_matmul_precision()}."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18" if common.ON_CUDA else "small_convnet")
    p.add_argument("--batch", type=int, default=512 if common.ON_CUDA else 64)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"] if common.ON_CUDA else ["fp32", "bf16"],
                   choices=list(PRECISION_DTYPES), help="fp32 first: the ratios are to it")
    p.add_argument("--iters", type=int, default=20 if common.ON_CUDA else 3, help="timed calls per round")
    p.add_argument("--warmup", type=int, default=5 if common.ON_CUDA else 1)
    p.add_argument("--rounds", type=int, default=3 if common.ON_CUDA else 2)
    p.add_argument("--override", nargs="*", default=[], help="extra train.yaml overrides")
    args = p.parse_args()

    trainers, batches = {}, {}
    for precision in args.precisions:
        trainers[precision] = common.build_trainer(
            [f"backbone={args.backbone}", f"trainer.batch_size={args.batch}", f"trainer.precision={precision}",
             *args.override], images=args.batch)
        batches[precision] = common.first_batch(trainers[precision])
    device = next(iter(trainers.values())).device
    gen = torch.Generator(device=device).manual_seed(0)
    timings = common.time_interleaved(
        {p: (lambda p=p: trainers[p].train_step(batches[p], gen)) for p in args.precisions},
        device, args.iters, args.warmup, args.rounds)

    base = timings[args.precisions[0]].median_s
    rows = []
    for precision in args.precisions:
        step = timings[precision].median_s
        row = [precision, f"{1e3 * step:.1f}", f"{args.batch / step:,.0f}", f"{base / step:.2f}x"]
        if device.type == "cuda":
            is_r18 = args.backbone == "resnet18"
            row.append(f"{100 * common.mfu(args.batch / step):.1f}%" if is_r18 else "-")
        rows.append(row)
    columns = ["precision", "step ms", "images/s", f"speed vs {args.precisions[0]}"]
    if device.type == "cuda":
        columns.append("MFU")
    note = (f"SimCLR, {args.backbone}, batch {args.batch}, synthetic 32x32, "
            f"{'NHWC' if trainers[args.precisions[0]].channels_last else 'NCHW'}; "
            f"medians of {args.rounds}x{args.iters} full `train_step` calls after warm-up.")
    if device.type == "cuda":
        note += " " + tf32_note()
    if args.override:
        note += f" Overrides: {' '.join(args.override)}."
    print(common.header("Training-step time per precision (`bench/precision.py`)", device, note))
    print(common.markdown_table(columns, rows))


if __name__ == "__main__":
    main()
