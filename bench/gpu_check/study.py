"""Stage ``study``: SimCLR vs DCL vs HCL vs Ring (``method=simclr/dcl/hcl/ring``) on CIFAR-10 (the JPEG
copy), CIFAR ResNet-18, the same few epochs, batch, optimizer and schedule each, through the real
``train()`` path; kNN (k=20) and linear top-1 on the test split at the end. One row per method, written as
soon as it finishes (a stage timeout keeps the finished rows). A few epochs rank nothing for good: this
is a smoke study of the whole path on real data, with numbers to compare against the next run's.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import _shared
import common
from cl_suite.engine.trainer import train


def main() -> None:
    dry, cuda = _shared.DRY, torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["simclr", "dcl", "hcl", "ring"])
    p.add_argument("--epochs", type=int, default=2 if dry else 4)
    p.add_argument("--backbone", default="small_convnet" if dry else "resnet18")
    p.add_argument("--batch", type=int, default=32 if dry else 512)
    p.add_argument("--precision", default="bf16" if cuda else "fp32")
    p.add_argument("--linear-epochs", type=int, default=2 if dry else 30)
    p.add_argument("--override", nargs="*", default=[], help="extra train.yaml overrides for every run")
    args = p.parse_args()

    section = _shared.Section("study", "Study: SimCLR vs DCL vs HCL vs Ring on CIFAR-10")
    common_overrides = [*_shared.data_overrides(), f"backbone={args.backbone}", f"trainer.batch_size={args.batch}",
                        f"trainer.precision={args.precision}", f"trainer.epochs={args.epochs}",
                        f"scheduler.warmup_epochs={min(1, args.epochs - 1)}",
                        f"evaluation.linear.epochs={args.linear_epochs}", "evaluation.embedding_snapshot=0",
                        *args.override]
    section.add(f"{common.describe_device(torch.device('cuda' if cuda else 'cpu'))}, torch {torch.__version__}. "
                f"Each run: `{' '.join(common_overrides)}` + `method=<m>` (default SGD, lr scaled to the batch, "
                f"warm-up + cosine); test-split top-1 %.")
    columns = ["method", "epochs", "train s", "images/s (last epoch)", "final loss", "kNN top-1", "linear top-1"]
    rows: list[list[object]] = []
    for method in args.methods:
        run_dir = Path(common.temp_dir()) / method
        cfg = _shared.compose([*common_overrides, f"method={method}"], str(run_dir))
        start = time.perf_counter()
        final = train(cfg)
        seconds = time.perf_counter() - start
        epochs = json.loads((run_dir / "metrics.json").read_text())["epochs"]
        train_s = sum(e["epoch_time_s"] for e in epochs)
        rows.append([method, len(epochs), f"{train_s:.1f}", f"{epochs[-1]['train/epoch_images_per_s']:,.0f}",
                     f"{epochs[-1]['train/epoch_loss']:.3f}", f"{final['knn/top1']:.2f}", f"{final['linear/top1']:.2f}"])
        section.parts[2:] = [_shared.table(columns, rows) + "\n"]
        section.flush()
        # After each method: a stage stopped at its deadline keeps the line of the methods that finished.
        section.headline(", ".join(f"{r[0]} kNN {r[5]} / lin {r[6]}" for r in rows) + f" ({args.epochs} ep)")
        print(f"{method}: {rows[-1]} ({seconds:.0f} s with evaluation)", flush=True)
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
