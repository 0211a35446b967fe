"""Projection and prediction heads (MLPs) put on top of a backbone."""
from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dims: list[int] | tuple[int, ...], out_dim: int, batch_norm: bool = True,
        last_batch_norm: bool = False) -> nn.Sequential:
    """Linear(+BN)+ReLU for each hidden width, then a final Linear (optionally followed by a BN).

    SimCLR's projector is ``mlp(F, [2048], 128)``; DCL/HCL use ``mlp(2048, [512], 128)``; NNCLR ends
    with a BN (``last_batch_norm=True``). ``hidden_dims=[]`` gives a single linear layer.
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for hidden in hidden_dims:
        layers.append(nn.Linear(dim, hidden, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden
    layers.append(nn.Linear(dim, out_dim))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim))
    return nn.Sequential(*layers)
