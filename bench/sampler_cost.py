"""Cost of each negative sampler relative to uniform (InfoNCE), measured in one run.

Times the sampler's loss forward + backward (w.r.t. the embeddings) for B anchors of dimension d
against (a) SimCLR's 2B-2 in-batch candidates and (b) a pool of 16384 candidates (a MoCo queue or a
memory-bank sample), and prints each sampler's time / uniform's time. Each cell is the median of
interleaved A/B pairs (uniform and the sampler timed back to back, order alternating), with the lowest
and highest pair ratio as its spread: on a busy machine both sides of a pair slow down alike. The goal
is <= 1.3 for every sampler but mixing (which adds synthetic negatives by design).

    python bench/sampler_cost.py                 # B=512, d=128 on CUDA; smaller default on a CPU
    python bench/sampler_cost.py --batch 512 --pool 16384 --iters 20
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
import torch.nn.functional as F

from cl_suite.samplers import DebiasedSampler, HardSampler, MixingSampler, RingSampler, UniformSampler

SAMPLERS = {
    "uniform": UniformSampler,
    "debiased (DCL)": lambda: DebiasedSampler(tau_plus=0.1),
    "hard (HCL)": lambda: HardSampler(beta=1.0, tau_plus=0.1),
    "ring (u = l = 0.1)": lambda: RingSampler(outer_fraction=0.1, inner_fraction=0.1),
    "ring, 4095 draws (IR-Ring)": lambda: RingSampler(outer_fraction=0.1, inner_fraction=0.1, num_samples=4095),
    "mixing (MoCHi)": lambda: MixingSampler(n_hard=128, s1=128, s2=128),
}


def timed(fn, iters: int, device: torch.device) -> float:
    """Mean seconds per call of ``iters`` calls; CUDA is synchronised around the timed loop."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def paired(baseline, other, rounds: int, iters: int, device: torch.device) -> tuple[float, float, float, float]:
    """Interleaved A/B timing: ``rounds`` back-to-back pairs (the order alternates), so a busy machine slows
    both sides of a pair alike. Returns the median seconds of ``other``, and the median, lowest and highest
    of the per-pair ratios other / baseline."""
    for fn in (baseline, other, baseline, other):  # warm-up
        fn()
    ratios, seconds = [], []
    for r in range(rounds):
        if r % 2 == 0:
            a, b = timed(baseline, iters, device), timed(other, iters, device)
        else:
            b, a = timed(other, iters, device), timed(baseline, iters, device)
        ratios.append(b / a)
        seconds.append(b)
    return statistics.median(seconds), statistics.median(ratios), min(ratios), max(ratios)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512 if cuda else 128, help="images B (anchors: 2B)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--pool", type=int, default=16384 if cuda else 4096, help="candidates of setting (b)")
    parser.add_argument("--iters", type=int, default=20 if cuda else 3, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved A/B pairs per sampler and setting")
    parser.add_argument("--with-diagnostics", action="store_true",
                        help="time the steps that record diagnostics (every log step) instead of the others")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# sampler cost, {name}, torch {torch.__version__}, {datetime.date.today()}")
    print(f"B={args.batch} images ({2 * args.batch} anchors), d={args.dim}, temperature 0.2; {args.rounds} "
          f"interleaved pairs of {args.iters} calls against uniform per cell: median ratio (lowest-highest); "
          f"{'steps that record diagnostics' if args.with_diagnostics else 'steps without diagnostics (all but the log steps)'}\n")

    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(2 * args.batch, args.dim, device=device), dim=1).requires_grad_()
    positives = F.normalize(torch.randn(2 * args.batch, args.dim, device=device), dim=1)
    settings = {
        f"batch ({2 * args.batch - 2} cand.)": (anchors, True),  # candidates carry gradient, as in SimCLR
        f"pool ({args.pool} cand.)": (F.normalize(torch.randn(args.pool, args.dim, device=device), dim=1), False),
    }

    def loss_step(sampler, candidates, mask):
        def step():
            anchors.grad = None
            sampler(anchors, positives, candidates, mask, 0.2).loss.backward()
        return step

    rows = []
    for sampler_name, make in SAMPLERS.items():
        sampler, uniform = make(), UniformSampler()
        for s in (sampler, uniform):  # as the training loop sets them on a (non-)recording step
            s.set_progress(0, 1, record_diagnostics=args.with_diagnostics)
        row = [sampler_name]
        for candidates, in_batch in settings.values():
            mask = None
            if in_batch:  # SimCLR: drop self and the positive (the other view) from the candidates
                n = candidates.shape[0]
                mask = ~torch.eye(n, dtype=torch.bool, device=device)
                mask[torch.arange(n), (torch.arange(n) + n // 2) % n] = False
            seconds, ratio, low, high = paired(loss_step(uniform, candidates, mask), loss_step(sampler, candidates, mask),
                                               args.rounds, args.iters, device)
            row += [f"{seconds * 1e3:.2f}", f"{ratio:.2f}", f"{low:.2f}-{high:.2f}"]
        rows.append(row)
    header = ["sampler"] + [h for s in settings for h in (f"{s} ms", "x uniform", "spread")]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
