"""The sampler interface: one positive and a set of candidate negatives per anchor -> a loss.

A framework (``cl_suite.methods``) decides where positives and candidates come from (the other view,
a queue, a memory bank); a sampler decides how the candidates become the negative term. Neither
knows about the other. All samplers write the loss per anchor as

    loss_a = -log( P_a / (P_a + N_a) ),  P_a = exp(s(a, a+)/t),

and differ only in the negative mass ``N_a`` (InfoNCE: the sum over candidates; DCL: debiased; ...).
They return ``log N_a``, and the shared code evaluates ``softplus(log N_a - log P_a)`` in log space.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SamplerOutput:
    loss: torch.Tensor  # scalar: mean over anchors
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached diagnostics, logged every N steps


class NegativeSampler(nn.Module):
    """Base class. Subclasses implement ``log_negative_mass``.

    Similarities are computed in fp32 whatever the autocast dtype: logsumexp over thousands of
    candidates at temperatures of 0.07-0.5 loses most of its mantissa in bf16, and the percentiles and
    exp(beta * s) of later samplers are just as sensitive.
    """

    def forward(
        self,
        anchors: torch.Tensor,  # (A, D), L2-normalised
        positives: torch.Tensor,  # (A, D), L2-normalised; row a is anchor a's positive
        candidates: torch.Tensor,  # (M, D), L2-normalised pool of candidate negatives
        candidate_mask: torch.Tensor | None,  # (A, M) bool, True where candidate m is a negative for a
        temperature: float,
    ) -> SamplerOutput:
        # Casting alone is not enough: autocast would run the matmul in bf16/fp16 again.
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            anchors, positives, candidates = anchors.float(), positives.float(), candidates.float()
            pos_sim = (anchors * positives).sum(dim=1)  # (A,)
            cand_sim = anchors @ candidates.T  # (A, M)
            if candidate_mask is None:
                candidate_mask = torch.ones_like(cand_sim, dtype=torch.bool)
            log_pos = pos_sim / temperature
            log_neg = self.log_negative_mass(pos_sim, cand_sim, candidate_mask, temperature)
            # -log(P / (P + N)) = log(1 + N/P) = softplus(log N - log P): exact also when the loss is tiny.
            loss = F.softplus(log_neg - log_pos).mean()
        with torch.no_grad():
            n_neg = candidate_mask.sum()
            stats = {
                "sim/positive_mean": pos_sim.mean(),
                "sim/negative_mean": (cand_sim * candidate_mask).sum() / n_neg.clamp(min=1),
            }
        return SamplerOutput(loss=loss, stats=stats)

    def log_negative_mass(
        self, pos_sim: torch.Tensor, cand_sim: torch.Tensor, candidate_mask: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """Return ``log N_a`` for each anchor, shape (A,)."""
        raise NotImplementedError
