"""Every sampler's loss and input gradients on 1 process (python) or W processes (torchrun).

Each process computes the loss of its local anchors against the all-gathered candidates; the saved
numbers are the mean loss over processes and the input gradients divided by W (what DDP's averaging
gives), which must equal the 1-process run on the whole batch. Writes them to argv[1].
"""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import simclr_on_raw_embeddings  # noqa: E402

from cl_suite.distributed import cleanup_distributed, gather_no_grad, get_rank, get_world_size  # noqa: E402
from cl_suite.distributed import init_distributed, mean_over_processes  # noqa: E402
from cl_suite.samplers import DebiasedSampler, HardSampler, MixingSampler, RingSampler, UniformSampler  # noqa: E402

SAMPLERS = {
    "uniform": UniformSampler,
    "debiased": lambda: DebiasedSampler(tau_plus=0.1),
    "hard": lambda: HardSampler(beta=1.0, tau_plus=0.1),
    "ring": lambda: RingSampler(outer_fraction=0.7, inner_fraction=0.3),
}
# (sampler, SimCLR form): every sampler on NT-Xent's candidates, plus the Ring code's SimCLR-Ring form
# (view-1 anchors ranking all 2B gathered views) and its SimCLR baseline's (the positive masked out).
CASES = {name: (make, "nt_xent") for name, make in SAMPLERS.items()}
CASES["ring_code"] = (lambda: RingSampler(outer_fraction=0.5, inner_fraction=0.1), "ring_code")
CASES["ring_code_simclr"] = (UniformSampler, "ring_code_simclr")  # the Ring code's SimCLR: the positive masked


def main(out_path: str) -> None:
    init_distributed("cpu")
    rank, world = get_rank(), get_world_size()
    torch.manual_seed(0)
    global_batch, dim, t = 16, 6, 0.2
    x1, x2 = torch.randn(global_batch, dim), torch.randn(global_batch, dim)
    labels = torch.arange(global_batch) % 4
    local = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    results = {}
    for name, (make, form) in CASES.items():
        method = simclr_on_raw_embeddings(dim, t)
        method.sampler, method.form = make(), form
        a, b = x1[local].clone().requires_grad_(), x2[local].clone().requires_grad_()
        out = method((a, b), labels=labels[local])
        out.loss.backward()
        results[name] = {
            "loss": gather_no_grad(out.loss.detach().view(1)).mean(),
            "grad": gather_no_grad(torch.cat([a.grad, b.grad], dim=1)) / world,
            "false_negative_rate": gather_no_grad(out.stats["negatives/false_negative_rate"].view(1)).mean(),
            # what a schedule that follows the loss is told (the ring's adaptive_loss): the global batch's loss
            "mean_over_processes": torch.tensor(mean_over_processes(out.loss.detach())),
        }
    # MoCHi over a queue-like pool shared by all processes, anchors rank-major as in MoCo: the random
    # mixing draws too must be those of the 1-process run.
    pool = torch.nn.functional.normalize(torch.randn(40, dim), dim=1)
    a, b = x1[local].clone().requires_grad_(), x2[local].clone().requires_grad_()
    torch.manual_seed(1)  # the same global generator state on every process, as the trainer's seeding gives
    sampler = MixingSampler(n_hard=8, s1=5, s2=3)
    unit = torch.nn.functional.normalize
    out = sampler(unit(a, dim=1), unit(b, dim=1), pool, None, t, labels[local], torch.arange(40) % 4)
    out.loss.backward()
    results["mixing_queue"] = {"loss": gather_no_grad(out.loss.detach().view(1)).mean(),
                               "grad": gather_no_grad(torch.cat([a.grad, b.grad], dim=1)) / world,
                               "false_negative_rate": gather_no_grad(
                                   out.stats["negatives/false_negative_rate"].view(1)).mean(),
                               "mean_over_processes": torch.tensor(mean_over_processes(out.loss.detach()))}
    if rank == 0:
        torch.save(results, out_path)
    cleanup_distributed(wait_for_all=True)  # rank 0 has written its file before any process exits


if __name__ == "__main__":
    main(sys.argv[1])
