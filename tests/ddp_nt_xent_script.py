"""Run under torchrun by tests/test_ddp.py: NT-Xent on W processes x B/W vs one process x B
(the slow float64 loop of test_simclr_loss).

Each process computes the loss of its local anchors against the all-gathered candidates and
back-propagates; rank 0 compares the gathered losses and input gradients with a single-process run on
the whole batch. Exits non-zero on a mismatch.
"""
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_simclr_loss import nt_xent_slow, simclr_on_raw_embeddings  # noqa: E402

from cl_suite.engine.distributed import gather_no_grad  # noqa: E402


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    global_batch, dim, t = 8, 5, 0.2
    x1, x2 = torch.randn(global_batch, dim), torch.randn(global_batch, dim)
    local = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    method = simclr_on_raw_embeddings(dim, t)

    a, b = x1[local].clone().requires_grad_(), x2[local].clone().requires_grad_()
    loss = method((a, b), labels=torch.zeros(a.shape[0], dtype=torch.long)).loss
    loss.backward()
    # DDP would average parameter gradients over ranks: the global loss is the mean of the local ones.
    losses = gather_no_grad(loss.detach().view(1))
    grads = gather_no_grad(torch.cat([a.grad, b.grad], dim=1)) / world

    if rank == 0:
        # The reference must not touch the process group: the slow float64 loop over the whole batch.
        r1, r2 = x1.double().requires_grad_(), x2.double().requires_grad_()
        ref = nt_xent_slow(r1, r2, t)
        ref.backward()
        torch.testing.assert_close(losses.mean().double(), ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads.double(), torch.cat([r1.grad, r2.grad], dim=1), rtol=1e-4, atol=1e-6)
        print("DDP NT-Xent equals single process")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
