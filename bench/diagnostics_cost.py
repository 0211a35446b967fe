"""Cost of the per-step sampler diagnostics relative to the loss alone, measured in one run.

For NT-Xent (SimCLR's in-batch form: 2B anchors, the 2B-2 other views as candidates, labels given so the
false-negative rate is computed) and for HCL, times forward + backward w.r.t. the embeddings of

* the loss alone: the sampler's loss written out here (``negative_term`` + softplus, nothing else);
* a logging step: ``record_diagnostics=True``, the loss plus the diagnostics (similarity means, two
  histograms, effective sample size, false-negative rate over the (2B, 2B) matrix). Before the change
  every step paid this;
* a non-logging step: ``record_diagnostics=False``, what every other step pays now.

The three are timed in interleaved rounds (the order rotates, ``iters`` calls each), so a slow spell on a
shared machine hits all of them; each cell is the median over the rounds of the per-round ratio to the
loss alone, with the lowest and highest round ratio as its spread. "per step, log every 10" is
(9 non-logging + 1 logging) / 10 of the medians: the mean cost of a step at the default
``trainer.log_every_steps=10`` (the epoch's last step also records; ignored here).

    python bench/diagnostics_cost.py                       # B = 256 and 1024, d = 128
    python bench/diagnostics_cost.py --batches 256 --rounds 9
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cl_suite.samplers import Contrast, HardSampler, UniformSampler
from common import describe_device, header, markdown_table, synchronize

SAMPLERS = {"NT-Xent (uniform)": UniformSampler, "HCL (beta 1, tau+ 0.1)": lambda: HardSampler(beta=1.0, tau_plus=0.1)}
T = 0.2


def simclr_inputs(batch: int, dim: int, device: torch.device):
    """2B unit embeddings (view 1 then view 2), the SimCLR mask (no self, no positive), 4-class labels."""
    torch.manual_seed(0)
    z = F.normalize(torch.randn(2 * batch, dim, device=device), dim=1).requires_grad_()
    n = 2 * batch
    local = torch.arange(n, device=device)
    partner = (local + batch) % n
    mask = torch.ones(n, n, dtype=torch.bool, device=device)
    mask[local, local] = False
    mask[local, partner] = False
    labels = torch.randint(0, 4, (batch,), device=device).repeat(2)
    return z, partner, mask, labels


def loss_alone(sampler, z, partner, mask):
    """The loss of ``NegativeSampler.forward`` and nothing else (no diagnostics, no HCL weights)."""
    positives = z[partner]
    pos_sim = (z * positives).sum(dim=1)
    cand_sim = z @ z.T
    term = sampler.negative_term(Contrast(z, z, pos_sim, cand_sim, mask, T, with_diagnostics=False))
    return F.softplus(term.log_mass - pos_sim / T).mean()


def variants(sampler, z, partner, mask, labels):
    def alone():
        z.grad = None
        loss_alone(sampler, z, partner, mask).backward()

    def step(record: bool):
        def run():
            z.grad = None
            sampler.set_progress(0, 1, record_diagnostics=record)
            out = sampler(z, z[partner], z, mask, T, anchor_labels=labels, candidate_labels=labels)
            out.loss.backward()
            if record:
                assert out.stats  # the diagnostics were computed (they stay on the device, as in training)
        return run

    return {"loss": alone, "logging": step(True), "non-logging": step(False)}


def timed(fn, iters: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def interleaved(fns: dict, rounds: int, iters: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, one measurement per round; the order rotates every round."""
    for fn in list(fns.values()) * 2:  # warm-up
        fn()
    names = list(fns)
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(timed(fns[name], iters, device))
    return seconds


def main() -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024], help="images B (2B anchors)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=None, help="calls per measurement (default: ~0.2 s worth)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    rows = []
    for batch in args.batches:
        z, partner, mask, labels = simclr_inputs(batch, args.dim, device)
        for name, make in SAMPLERS.items():
            fns = variants(make(), z, partner, mask, labels)
            iters = args.iters or max(1, round(0.2 / timed(fns["loss"], 2, device)))
            seconds = interleaved(fns, args.rounds, iters, device)
            ratio = {k: [a / b for a, b in zip(seconds[k], seconds["loss"])] for k in ("logging", "non-logging")}
            med = {k: statistics.median(v) for k, v in ratio.items()}
            row = [f"{name}, B={batch}", f"{statistics.median(seconds['loss']) * 1e3:.2f}"]
            for k in ("logging", "non-logging"):
                row += [f"{statistics.median(seconds[k]) * 1e3:.2f}",
                        f"{med[k]:.2f} ({min(ratio[k]):.2f}-{max(ratio[k]):.2f})"]
            row.append(f"{(9 * med['non-logging'] + med['logging']) / 10:.2f}")
            rows.append(row)
    note = (f"Forward + backward w.r.t. the 2B embeddings, d={args.dim}, t={T}, SimCLR mask and 4-class labels; "
            f"{args.rounds} interleaved rounds; ratio = median over rounds of time / loss alone (lowest-highest).")
    print(header("Sampler diagnostics vs the loss alone (`bench/diagnostics_cost.py`)", device, note))
    print(markdown_table(["sampler, batch", "loss ms", "logging step ms", "logging / loss",
                          "non-logging step ms", "non-logging / loss", "per step, log every 10"], rows))
    print(f"\n({describe_device(device)}; before the change every step was a logging step.)")


if __name__ == "__main__":
    main()
