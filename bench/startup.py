"""Start-up cost of a run: importing the training modules, with the heavy libraries lazy (as the suite
does) against importing them eagerly (as it did before: torchvision through the data readers and the
ResNet backbones, torchmetrics through the kNN accuracy, torch._dynamo through the samplers'
``torch.compiler.disable`` decorators; now only trainer.compile=true or an annealed ring imports it).

Each side runs in a fresh interpreter; the sides alternate in groups (on a busy machine every side of a
group slows down alike) and the table gives medians and the median pair ratio with its spread.

    python bench/startup.py --pairs 7
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time

import common

SUITE = "import cl_suite.engine.trainer, cl_suite.engine.build"
SIDES = {
    "suite (torchvision, torchmetrics lazy)": SUITE,
    "+ torch._dynamo eagerly": SUITE + "; import torch._dynamo",
    "+ torchvision, torchmetrics, torch._dynamo eagerly": SUITE + "; import torchvision, torchmetrics, torch._dynamo",
}


def seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=7)
    args = p.parse_args()
    seconds(SUITE)  # warm the file cache once
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    lazy = next(iter(SIDES))
    ratios: dict[str, list[float]] = {name: [] for name in SIDES if name != lazy}
    for i in range(args.pairs):
        order = list(SIDES) if i % 2 == 0 else list(reversed(SIDES))
        group = {name: seconds(SIDES[name]) for name in order}
        for name, t in group.items():
            times[name].append(t)
            if name != lazy:
                ratios[name].append(t / group[lazy])
    print(f"# Start-up imports, {datetime.date.today()}, {common.cpu_model()}, python {sys.version.split()[0]}; "
          f"{args.pairs} interleaved pairs; {common.contention()}")
    rows = [[name, f"{statistics.median(ts):.2f}", f"{min(ts):.2f}-{max(ts):.2f}"] for name, ts in times.items()]
    print(common.markdown_table(["imports", "median s", "range s"], rows))
    for name, rs in ratios.items():
        print(f"{name} / lazy: {statistics.median(rs):.2f} (groups {min(rs):.2f}-{max(rs):.2f})")


if __name__ == "__main__":
    main()
