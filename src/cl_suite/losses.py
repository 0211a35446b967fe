"""Contrastive losses for one's own training loop: any of the suite's negative samplers on a two-view batch.

    from cl_suite.losses import ContrastiveLoss
    from cl_suite.samplers import DebiasedSampler
    criterion = ContrastiveLoss(DebiasedSampler(tau_plus=0.1), temperature=0.5)
    loss = criterion(z1, z2)  # (B, D) projections of the two views of B images

This is SimCLR's in-batch loss (Chen et al., ICML 2020, NT-Xent) with the sampler deciding how the
negatives enter it: every one of the 2B views is an anchor, its positive is the other view of its image
and the other 2B - 2 views are its candidate negatives. With ``UniformSampler`` it is NT-Xent,
``DebiasedSampler`` DCL, ``HardSampler`` HCL, ``RingSampler`` the (symmetric) Ring loss. Under
torch.distributed the candidates are gathered from every process with their gradients, so the loss
equals the single-process loss of the global batch. ``method=simclr`` trains with this same function.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.distributed import gather_no_grad, gather_with_grad, get_rank
from cl_suite.objectives import checked_temperature
from cl_suite.samplers.base import NegativeSampler, SamplerOutput
from cl_suite.samplers.uniform import UniformSampler


def in_batch_negatives(rows: int, columns: int, offset: int, exclude_shifts: tuple[int, ...],
                       device: torch.device) -> torch.Tensor:
    """``(rows, columns)`` bool mask over gathered in-batch candidates, True = a negative: False at column
    ``offset + (i + shift) % rows`` of row ``i`` for each shift (0: the anchor itself; ``b`` of ``2b``
    rows: the other view of its image). ``offset`` is this process's first row in the gathered batch.

    The mask depends only on the batch layout, so it is built once per layout and reused (read-only:
    no caller may write into it). Inside a compiled graph it is built in the graph instead.
    """
    if torch.compiler.is_compiling():
        return _build_in_batch_negatives(rows, columns, offset, exclude_shifts, device)
    return _cached_in_batch_negatives(rows, columns, offset, exclude_shifts, torch.device(device))


def _build_in_batch_negatives(rows: int, columns: int, offset: int, exclude_shifts: tuple[int, ...],
                              device: torch.device) -> torch.Tensor:
    local = torch.arange(rows, device=device)
    mask = torch.ones(rows, columns, dtype=torch.bool, device=device)
    for shift in exclude_shifts:
        mask[local, offset + (local + shift) % rows] = False
    return mask


_cached_in_batch_negatives = functools.lru_cache(maxsize=16)(_build_in_batch_negatives)


def two_view_contrast(z: torch.Tensor, sampler: NegativeSampler, temperature: float,
                      labels: torch.Tensor | None = None) -> SamplerOutput:
    """The in-batch loss of ``z`` = (2B, D) unit-norm embeddings, view-1 rows first: row i's positive is
    row (i + B) mod 2B; the candidates are all gathered rows but the anchor itself and its positive.
    ``labels`` (B,) are only used for the sampler's diagnostics (false-negative rate)."""
    b = z.shape[0] // 2
    candidates = gather_with_grad(z)  # (2B x processes, D), rank-major, each rank's block laid out like z
    view_labels = None if labels is None else labels.repeat(2)
    mask = in_batch_negatives(2 * b, candidates.shape[0], get_rank() * 2 * b, (0, b), z.device)
    return sampler(anchors=z, positives=z.roll(b, dims=0), candidates=candidates, candidate_mask=mask,
                   temperature=temperature, anchor_labels=view_labels,
                   candidate_labels=None if view_labels is None else gather_no_grad(view_labels))


class ContrastiveLoss(nn.Module):
    """``loss = ContrastiveLoss(sampler, temperature)(z1, z2)``: see the module docstring.

    ``z1``/``z2`` need not be normalised (they are, in float32). ``diagnostics=True`` keeps the
    sampler's per-call statistics (similarity means, effective negatives, ...) in ``last_stats``;
    they cost about as much as the loss, so they are off by default.
    """

    def __init__(self, sampler: NegativeSampler | None = None, temperature: float = 0.5, diagnostics: bool = False):
        super().__init__()
        self.sampler = sampler if sampler is not None else UniformSampler()
        self.sampler.record_diagnostics = diagnostics
        self.temperature = checked_temperature(temperature, key="temperature")
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must be (B, D) of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        out = two_view_contrast(z, self.sampler, self.temperature, labels)
        self.last_stats = out.stats
        return out.loss
