"""Hard negative mixing: MoCHi (Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus, NeurIPS 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm


class MixingSampler(NegativeSampler):
    """Add synthetic negatives mixed from each anchor's ``n_hard`` most similar candidates.

    Type 1 (``s1`` per anchor): h = normalize(alpha c_i + (1 - alpha) c_j), i, j uniform with
    replacement from the hard set, alpha ~ U[0, 1). Type 2 (``s2`` per anchor): h' = normalize(beta a +
    (1 - beta) c_j) with the anchor a itself, beta ~ U[0, 0.5) so the anchor contributes less than half.
    The negative term is the InfoNCE sum over the real candidates plus exp(a.h/t) over the synthetics.
    Synthetics are detached (gradient reaches the encoder only through the anchor in a.h) and are
    never stored in a queue. Type k is active once the training progress reaches ``start_epoch<k>``
    (0 = from the start). Random draws come from torch's global generator, which the trainer seeds and
    checkpoints. With s1 = s2 = 0 this is InfoNCE.
    """

    def __init__(self, n_hard: int = 64, s1: int = 32, s2: int = 32, start_epoch1: float = 0.0,
                 start_epoch2: float = 0.0):
        super().__init__()
        if not (isinstance(n_hard, int) and n_hard >= 1):
            raise ValueError(f"sampler.n_hard={n_hard} is not allowed: expected an integer >= 1")
        for key, value in (("s1", s1), ("s2", s2)):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"sampler.{key}={value} is not allowed: expected an integer >= 0")
        for key, value in (("start_epoch1", start_epoch1), ("start_epoch2", start_epoch2)):
            if not value >= 0:
                raise ValueError(f"sampler.{key}={value} is not allowed: expected >= 0")
        self.n_hard, self.s1, self.s2 = n_hard, s1, s2
        self.start_epoch1, self.start_epoch2 = float(start_epoch1), float(start_epoch2)
        self._checked_counts = False

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        real = (ctx.cand_sim / ctx.temperature).masked_fill(~ctx.mask, float("-inf"))
        s1 = self.s1 if self.epoch >= self.start_epoch1 else 0
        s2 = self.s2 if self.epoch >= self.start_epoch2 else 0
        parts = [real]
        if s1 or s2:
            if not self._checked_counts:  # one host sync, on the first batch that mixes
                fewest = int(ctx.mask.sum(dim=1).min())
                if self.n_hard > fewest:
                    raise ValueError(f"sampler.n_hard={self.n_hard} is larger than the {fewest} candidates an "
                                     "anchor has: lower it or use more candidates")
                self._checked_counts = True
            parts += self._synthetic_logits(ctx, s1, s2)
        return NegativeTerm(log_mass=torch.logsumexp(torch.cat(parts, dim=1), dim=1),
                            extra_stats={"mixing/synthetic": torch.tensor(float(s1 + s2), device=real.device)})

    def _synthetic_logits(self, ctx: Contrast, s1: int, s2: int) -> list[torch.Tensor]:
        anchors = ctx.anchors
        n_anchors, dev = anchors.shape[0], anchors.device
        hardest = ctx.cand_sim.detach().masked_fill(~ctx.mask, float("-inf")).topk(self.n_hard, dim=1).indices
        hard = ctx.candidates.detach()[hardest]  # (A, n_hard, D)

        def pick(count: int) -> torch.Tensor:  # (A, count, D): hard candidates drawn with replacement
            idx = torch.randint(self.n_hard, (n_anchors, count), device=dev)
            return hard.gather(1, idx[..., None].expand(-1, -1, hard.shape[-1]))

        logits = []
        if s1:
            first, second = pick(s1), pick(s1)
            alpha = torch.rand(n_anchors, s1, 1, device=dev)
            mixed = F.normalize(alpha * first + (1 - alpha) * second, dim=-1)
            logits.append(torch.einsum("ad,asd->as", anchors, mixed.detach()) / ctx.temperature)
        if s2:
            other = pick(s2)
            beta = 0.5 * torch.rand(n_anchors, s2, 1, device=dev)
            mixed = F.normalize(beta * anchors.detach()[:, None, :] + (1 - beta) * other, dim=-1)
            logits.append(torch.einsum("ad,asd->as", anchors, mixed.detach()) / ctx.temperature)
        return logits
