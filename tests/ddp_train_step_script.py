"""One full training step (method + online probe) of SimCLR, MoCo, IR, CMC, SupCon (with a bank) and
RINCE, and two of NNCLR and KMCLR (the second step looks its positives up in what the first one wrote)
and of symmetric MoCo with one queue per view and same-image masking (the second step masks what the
first one wrote into each view's queue), on 1 process (python) or 2 (torchrun).

The models have no BatchNorm (whose statistics are per process by design; NNCLR's and KMCLR's heads
have theirs replaced by identities), so W processes x B/W images must give the same updated parameters
as 1 process x B: global negatives through the all-gather, DDP averaging of the method's and the probe's
gradients, the momentum updates, and queues, banks, support sets and k-means prototypes that hold every
process's embeddings (IR/CMC draw their bank rows from the identically seeded generator). Writes each
model's state after its last step to argv[1].
"""
import sys

import torch

from cl_suite.distributed import cleanup_distributed, get_rank, get_world_size, init_distributed
from torch import nn

from cl_suite.methods import CMC, KMCLR, NNCLR, RINCE, InstanceRecognition, MoCo, SimCLR, SupCon
from cl_suite.samplers import UniformSampler
from helpers import LinearBackbone, one_step


def without_batch_norm(method):
    """``method`` with every BatchNorm1d of its heads replaced by an identity."""
    for module in list(method.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm1d):
                setattr(module, name, nn.Identity())
    return method


def main(out_path: str) -> None:
    init_distributed("cpu")
    rank, world = get_rank(), get_world_size()
    torch.manual_seed(0)
    global_batch = 8
    x1, x2 = torch.randn(global_batch, 3, 2, 2), torch.randn(global_batch, 3, 2, 2)
    labels = torch.arange(global_batch) % 3
    head = dict(projector_hidden_dims=[16], projector_dim=6, projector_batch_norm=False)
    torch.manual_seed(1)
    simclr = SimCLR(LinearBackbone(), UniformSampler(), temperature=0.3, **head)
    torch.manual_seed(2)
    moco = MoCo(LinearBackbone(), UniformSampler(), temperature=0.3, queue_size=12, momentum=0.9,
                momentum_final=0.9, **head)
    torch.manual_seed(2)
    moco_per_view = MoCo(LinearBackbone(), UniformSampler(), temperature=0.3, queue_size=12, momentum=0.9,
                         momentum_final=0.9, symmetric=True, queue_per_view=True, mask_same_image=True, **head)
    torch.manual_seed(3)
    ir = InstanceRecognition(LinearBackbone(), UniformSampler(), num_samples=global_batch, temperature=0.3,
                             projector_dim=6, num_negatives=5)
    torch.manual_seed(4)
    cmc = CMC(LinearBackbone(), UniformSampler(), num_samples=global_batch, mean=[0.5] * 3, std=[0.25] * 3,
              temperature=0.3, projector_dim=6, num_negatives=5)
    torch.manual_seed(5)
    supcon = SupCon(LinearBackbone(), temperature=0.3, bank_size=12, **head)
    torch.manual_seed(6)
    rince = RINCE(LinearBackbone(), class_groups=[[0, 1], [2]], bank_size=12, **head)
    nn_heads = dict(projector_hidden_dims=[16], projector_dim=6, predictor_hidden_dims=[8])
    torch.manual_seed(8)
    nnclr = without_batch_norm(NNCLR(LinearBackbone(), UniformSampler(), temperature=0.3, support_set_size=12,
                                     **nn_heads))
    torch.manual_seed(9)
    kmclr = without_batch_norm(KMCLR(LinearBackbone(), UniformSampler(), steps_per_epoch=1, temperature=0.3,
                                     num_prototypes=4, **nn_heads))
    states = {}
    for name, method, steps in [("simclr", simclr, 1), ("moco", moco, 1), ("moco_per_view", moco_per_view, 2),
                                ("ir", ir, 1), ("cmc", cmc, 1),
                                ("supcon", supcon, 1), ("rince", rince, 1), ("nnclr", nnclr, 2), ("kmclr", kmclr, 2)]:
        torch.manual_seed(7)  # the same generator state on every process, as the trainer's seeding gives
        states[name] = one_step(method, x1, x2, labels, rank, world, steps)
    if rank == 0:
        torch.save(states, out_path)
    cleanup_distributed(wait_for_all=True)  # rank 0 has written its file before any process exits


if __name__ == "__main__":
    main(sys.argv[1])
