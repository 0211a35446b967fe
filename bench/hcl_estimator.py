"""HCL's estimator as one autograd.Function against the two log-sum-exps it replaces, measured in one run.

``cl_suite.objectives.hard_log_mass`` computes log R = LSE((1 + beta) s/t) - LSE(beta s/t) + log N with
``HardLogRatio`` (both exponentials once, the gradient in closed form). The reference below is the same
number written with two ``torch.logsumexp`` (each recomputes its exponentials in the backward pass), as
the suite computed it before. Both run the full sampler-sized step (similarities by matmul, the
estimator, the DCL debiasing, the loss, backward) next to InfoNCE's, in interleaved rounds; the script
prints each one's time / InfoNCE's (median, lowest-highest of the rounds) and checks the two agree.

    python bench/hcl_estimator.py                      # 256 anchors x 254 and x 4096 candidates
    python bench/hcl_estimator.py --candidates 16384 --rounds 9
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
import torch.nn.functional as F

from cl_suite.objectives import debiased_log_mass, hard_log_mass, infonce_log_mass


def two_logsumexp_log_mass(cand_sim, mask, pos_sim, temperature, beta, tau_plus):
    """The reference: log R with two masked log-sum-exps (the mask applied after scaling by beta)."""
    logits = cand_sim / temperature

    def masked(x):
        return x.masked_fill(~mask, float("-inf"))

    n = mask.sum(dim=1, dtype=logits.dtype)
    log_r = (torch.logsumexp(masked((1 + beta) * logits), dim=1) - torch.logsumexp(masked(beta * logits), dim=1)
             + torch.log(n))
    return debiased_log_mass(log_r, pos_sim, mask, temperature, tau_plus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", type=int, default=256)
    parser.add_argument("--candidates", type=int, nargs="+", default=[254, 4096])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10, help="calls per timing")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the order alternates)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# HCL estimator, {name}, torch {torch.__version__}, {datetime.date.today()}; beta 1, tau_plus 0.1, "
          f"t 0.2, d {args.dim}; {args.rounds} interleaved rounds of {args.iters} calls: median ratio to InfoNCE "
          f"(lowest-highest)\n")
    estimators = {"InfoNCE": lambda s, m, p: infonce_log_mass(s, m, 0.2),
                  "HCL, two logsumexp": lambda s, m, p: two_logsumexp_log_mass(s, m, p, 0.2, 1.0, 0.1),
                  "HCL, HardLogRatio": lambda s, m, p: hard_log_mass(s, m, p, 0.2, 1.0, 0.1)}
    rows = []
    for count in args.candidates:
        torch.manual_seed(0)
        anchors = F.normalize(torch.randn(args.anchors, args.dim, device=device), dim=1).requires_grad_()
        positives = F.normalize(torch.randn(args.anchors, args.dim, device=device), dim=1)
        candidates = F.normalize(torch.randn(count, args.dim, device=device), dim=1)
        mask = torch.rand(args.anchors, count, device=device) > 0.01

        def step(estimator):
            def run():
                anchors.grad = None
                pos = (anchors * positives).sum(dim=1)
                log_mass = estimator(anchors @ candidates.T, mask, pos.detach())
                loss = (log_mass - pos / 0.2).mean()
                loss.backward()
                return loss
            return run

        runs = {label: step(fn) for label, fn in estimators.items()}
        values = {label: run().item() for label, run in runs.items()}
        grads = {}
        for label, run in runs.items():
            run()
            grads[label] = anchors.grad.clone()
        agree = abs(values["HCL, two logsumexp"] - values["HCL, HardLogRatio"])
        grad_agree = (grads["HCL, two logsumexp"] - grads["HCL, HardLogRatio"]).abs().max().item()
        times = {label: [] for label in runs}
        for r in range(args.rounds):
            for label in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.iters):
                    runs[label]()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[label].append((time.perf_counter() - start) / args.iters)
        base = times["InfoNCE"]
        for label in runs:
            ratios = [t / b for t, b in zip(times[label], base)]
            rows.append([str(count), label, f"{statistics.median(times[label]) * 1e3:.2f}",
                         f"{statistics.median(ratios):.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}"])
        print(f"{count} candidates: the two HCL forms differ by {agree:.1e} in the loss, {grad_agree:.1e} in the "
              "gradient")
    print("\n| candidates | estimator | ms | x InfoNCE | spread |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
