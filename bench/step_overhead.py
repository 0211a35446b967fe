"""What a full SimCLR training step costs on top of the backbone's own forward + backward (issue item a).

For each ``backbone:batch`` run, on one batch of synthetic 32x32 uint8 images on the training device:
  full     ``Trainer.train_step``: two-view augmentation on the device, forward under autocast (backbone,
           projector, NT-Xent loss, online probe), backward, SGD + probe AdamW step, lr schedule;
  augment  the augmentation (and channels_last copy) alone;
  backbone forward + backward of the backbone alone on the same two augmented views (2B images), same
           autocast and memory format, loss ``h.float().sum()``;
  rest     full - augment - backbone: projector, loss, probe, optimizers, schedule, Python overhead.
full/backbone is the overhead ratio (1.0 = the step costs only the backbone's own compute). On CUDA the
table also has epoch seconds for 50k images and MFU at 6.67 GFLOPs per SimCLR image (ResNet-18, 32x32)
against 989 TFLOPS (H100 bf16 dense).

    python bench/step_overhead.py                                  # CPU: small_convnet:128 resnet18:16, fp32
    python bench/step_overhead.py --runs resnet18:512 resnet18:1024 --precision bf16   # CUDA default: resnet18:512
    python bench/step_overhead.py --override trainer.compile=true  # any train.yaml override
"""
from __future__ import annotations

import argparse

import torch

import common
from cl_suite.engine.precision import PRECISION_DTYPES


def measure(backbone: str, batch: int, args) -> list[object]:
    """One table row for ``backbone`` at global batch ``batch``."""
    overrides = [f"backbone={backbone}", f"trainer.batch_size={batch}", f"trainer.precision={args.precision}",
                 *args.override]
    trainer = common.build_trainer(overrides, images=batch)
    device = trainer.device
    batch_data = common.first_batch(trainer)
    gen = torch.Generator(device=device).manual_seed(0)
    views = common.augment_views(trainer, batch_data.images, gen)
    t = common.time_interleaved(
        {"full": lambda: trainer.train_step(batch_data, gen),
         "augment": lambda: common.augment_views(trainer, batch_data.images, gen),
         "backbone": common.backbone_fwd_bwd(trainer, views)},
        device, args.iters, args.warmup, args.rounds)
    full, aug, bb = (t[k].median_s for k in ("full", "augment", "backbone"))
    rest = full - aug - bb

    def ms(x: float) -> str:
        return f"{1e3 * x:.1f} ({100 * x / full:.0f}%)"

    images_per_s = batch / full
    row = [backbone, batch, args.precision, "NHWC" if trainer.channels_last else "NCHW", f"{1e3 * full:.1f}", ms(aug), ms(bb), ms(rest), f"{full / bb:.2f}",
           f"{images_per_s:,.0f}"]
    if device.type == "cuda":
        is_r18 = backbone == "resnet18" and trainer.cfg.dataset.augment.crop_size == 32
        row += [f"{50_000 / images_per_s:.2f}", f"{100 * common.mfu(images_per_s):.1f}%" if is_r18 else "-"]
    del trainer, views, batch_data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["resnet18:512"] if common.ON_CUDA else ["small_convnet:128", "resnet18:16"],
                   help="backbone:global_batch pairs (backbone = a conf/backbone option)")
    p.add_argument("--precision", default="bf16" if common.ON_CUDA else "fp32", choices=list(PRECISION_DTYPES))
    p.add_argument("--iters", type=int, default=20 if common.ON_CUDA else 3, help="timed calls per round")
    p.add_argument("--warmup", type=int, default=5 if common.ON_CUDA else 1)
    p.add_argument("--rounds", type=int, default=3 if common.ON_CUDA else 2,
                   help="full/augment/backbone are timed in turn, this many times (medians over all calls)")
    p.add_argument("--override", nargs="*", default=[], help="extra train.yaml overrides, e.g. trainer.compile=true")
    args = p.parse_args()

    rows = []
    for run in args.runs:
        backbone, batch = run.split(":")
        rows.append(measure(backbone, int(batch), args))
    device = torch.device("cuda" if common.ON_CUDA else "cpu")
    columns = ["backbone", "batch", "precision", "format", "full step ms", "augment ms (%)", "backbone fwd+bwd ms (%)",
               "rest ms (%)", "full/backbone", "images/s"]
    if device.type == "cuda":
        columns += ["epoch s (50k)", "MFU"]
    note = f"Medians of {args.rounds}x{args.iters} calls after warm-up; synthetic 32x32 images."
    if args.override:
        note += f" Overrides: {' '.join(args.override)}."
    print(common.header("Full training step vs backbone forward+backward (`bench/step_overhead.py`)", device, note))
    print(common.markdown_table(columns, rows))


if __name__ == "__main__":
    main()
