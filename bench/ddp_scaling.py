"""Training images/s with 1 process vs several DDP processes at the same global batch (issue item d).

The parent launches this script once per layout through ``python -m torch.distributed.run --standalone``
(``PxT`` = P processes with OMP_NUM_THREADS=T each). Each worker joins the process group as
``cl_suite.engine.trainer.train`` does (``init_distributed``: gloo on CPU, nccl on CUDA; no group for one
process), builds a ``Trainer`` (global ``trainer.batch_size`` split over the processes, DDP-wrapped,
SimCLR candidates all-gathered), runs ``--warmup`` steps, then times ``--iters`` steps of the real
``train_step`` with the loop's own per-step seeding; the slowest rank's time counts. Rank 0 writes a JSON
file; the parent prints the table and each layout's speed relative to the first.

CUDA is used when there are at least as many GPUs as the largest layout's processes (one GPU per
process, nccl); otherwise everything runs on the CPU with gloo.

    python bench/ddp_scaling.py                                   # CPU: small_convnet, batch 128, 1x2 2x1 1x1
    python bench/ddp_scaling.py --layouts 1x8 2x8 4x4 --batch 1024  # GPUs (CUDA default: resnet18, bf16)
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import common
from cl_suite.distributed import run_torchrun
from cl_suite.engine.precision import PRECISION_DTYPES

CORES = os.cpu_count() or 1


def worker(args) -> None:
    """One torchrun process: train ``warmup + iters`` steps, time the last ``iters``; rank 0 writes JSON."""
    from cl_suite.distributed import barrier, cleanup_distributed, get_rank, get_world_size, init_distributed
    from cl_suite.engine.trainer import step_seed

    with contextlib.ExitStack() as teardown:  # as in trainer.train: the group goes away last
        init_distributed(args.device)
        teardown.push(lambda exc_type, exc, tb: cleanup_distributed(wait_for_all=exc_type is None))
        steps = args.warmup + args.iters
        trainer = common.build_trainer(
            [f"trainer.device={args.device}", f"backbone={args.backbone}", f"trainer.batch_size={args.batch}",
             f"trainer.precision={args.precision}", f"trainer.max_steps={steps}", *args.override],
            images=args.batch * min(steps, 4))
        teardown.callback(trainer.logger.finish)
        device, gen = trainer.device, torch.Generator(device=trainer.device)
        start = 0.0
        for epoch in itertools.count():
            for batch in trainer.batches.epoch(epoch):
                if trainer.step == args.warmup:
                    common.synchronize(device)
                    barrier()
                    start = time.perf_counter()
                gen.manual_seed(step_seed(trainer.cfg.seed, trainer.step, trainer.rank))
                trainer.train_step(batch, gen)
                if trainer.step >= trainer.stop_step:
                    break
            if trainer.step >= trainer.stop_step:
                break
        common.synchronize(device)
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64,
                               device=device if device.type == "cuda" else "cpu")
        if get_world_size() > 1:
            torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
        if get_rank() == 0:
            seconds = elapsed.item()
            Path(args.out).write_text(json.dumps({
                "processes": get_world_size(), "threads": torch.get_num_threads(),
                "backend": torch.distributed.get_backend() if get_world_size() > 1 else "none",
                "device": common.describe_device(device), "global_batch": args.batch,
                "local_batch": trainer.batches.local_batch_size, "iters": args.iters,
                "step_s": seconds / args.iters, "images_per_s": args.iters * args.batch / seconds}))


def launch(layout: str, args, device: str) -> dict:
    """Run one ``PxT`` layout under torchrun; return rank 0's JSON record."""
    procs, threads = (int(x) for x in layout.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               __file__, *sys.argv[1:], "--worker", "--device", device, "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # once more if a process aborted at exit (torch's gloo threads; see cl_suite.distributed)
        result = run_torchrun(cmd, f"layout {layout}", lambda: out.unlink(missing_ok=True), env=env,
                              timeout=args.timeout)
        if result.returncode != 0 or not out.exists():
            sys.exit(f"layout {layout} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", nargs="+",
                   default=[f"1x{CORES}", f"2x{max(1, CORES // 2)}"] + ([] if common.ON_CUDA else ["1x1"]),
                   help="PxT: P processes with T threads each; ratios are to the first layout")
    p.add_argument("--backbone", default="resnet18" if common.ON_CUDA else "small_convnet")
    p.add_argument("--batch", type=int, default=1024 if common.ON_CUDA else 128, help="global batch")
    p.add_argument("--precision", default="bf16" if common.ON_CUDA else "fp32", choices=list(PRECISION_DTYPES))
    p.add_argument("--iters", type=int, default=20 if common.ON_CUDA else 6, help="timed steps")
    p.add_argument("--warmup", type=int, default=5 if common.ON_CUDA else 2, help="untimed steps first")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda if there is one GPU per process of the largest layout, else cpu")
    p.add_argument("--override", nargs="*", default=[], help="extra train.yaml overrides")
    p.add_argument("--timeout", type=int, default=600, help="seconds per layout")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    most = max(int(layout.lower().split("x")[0]) for layout in args.layouts)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.device_count() >= most else "cpu"
    records = [launch(layout, args, device) for layout in args.layouts]
    base = records[0]["images_per_s"]
    rows = [[f"{r['processes']}x{r['threads']}", r["backend"], r["local_batch"], r["global_batch"],
             f"{1e3 * r['step_s']:.1f}", f"{r['images_per_s']:,.0f}", f"{r['images_per_s'] / base:.2f}x"]
            for r in records]
    columns = ["processes x threads", "backend", "local batch", "global batch", "step ms", "images/s",
               f"vs {args.layouts[0]}"]
    note = (f"SimCLR, {args.backbone}, {args.precision}, synthetic 32x32; mean of {args.iters} steps after "
            f"{args.warmup} warm-up steps, slowest rank; threads = OMP_NUM_THREADS per process.")
    print(common.header("DDP scaling at a fixed global batch (`bench/ddp_scaling.py`)",
                        torch.device("cuda" if device == "cuda" else "cpu"), note))
    print(common.markdown_table(columns, rows))


if __name__ == "__main__":
    main()
