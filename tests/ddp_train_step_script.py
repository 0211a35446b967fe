"""One full SimCLR + online-probe training step, on 1 process (python) or 2 (torchrun).

The model has no BatchNorm (whose statistics are per process by design), so W processes x B/W images
must give the same updated parameters as 1 process x B: global negatives through the all-gather, DDP
averaging of the method's and the probe's gradients. Writes the parameters after the step to argv[1].
"""
import sys

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cl_suite.engine.distributed import cleanup_distributed, get_rank, get_world_size, init_distributed
from cl_suite.engine.pretrainer import Pretrainer
from cl_suite.engine.probe import OnlineProbe
from cl_suite.methods import SimCLR
from cl_suite.samplers import UniformSampler


class LinearBackbone(nn.Module):
    def __init__(self, in_dim=12, num_features=10):
        super().__init__()
        self.num_features = num_features
        self.linear = nn.Linear(in_dim, num_features)

    def forward(self, x):
        return torch.relu(self.linear(x.flatten(1)))


def main(out_path: str) -> None:
    init_distributed("cpu")
    rank, world = get_rank(), get_world_size()
    torch.manual_seed(0)
    global_batch = 8
    x1, x2 = torch.randn(global_batch, 3, 2, 2), torch.randn(global_batch, 3, 2, 2)
    labels = torch.arange(global_batch) % 3
    method = SimCLR(LinearBackbone(), UniformSampler(), temperature=0.3, projector_hidden_dims=[16],
                    projector_dim=6, projector_batch_norm=False)
    model = Pretrainer(method, OnlineProbe(10, 3))
    train_model = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    local = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    out, probe_loss, _ = train_model((x1[local], x2[local]), labels[local], torch.arange(global_batch)[local])
    (out.loss + probe_loss).backward()
    opt.step()
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out_path)
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
