"""Hard negative mixing: MoCHi (Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus, NeurIPS 2020)."""
from __future__ import annotations

import torch

from cl_suite.distributed import get_rank, get_world_size
from cl_suite.errors import ConfigError
from cl_suite.objectives import hardest_candidates, mixing_log_mass, mixing_synthetics
from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm, config_value


class MixingSampler(NegativeSampler):
    """Add synthetic negatives mixed from each anchor's ``n_hard`` most similar candidates (MoCHi,
    Kalantidis et al., NeurIPS 2020).

    Type 1 (``s1`` per anchor): h = normalize(alpha c_i + (1 - alpha) c_j), i, j uniform with
    replacement from the hard set, alpha ~ U[0, 1). Type 2 (``s2`` per anchor): h' = normalize(beta a +
    (1 - beta) c_j) with the anchor a itself, beta ~ U[0, 0.5) so the anchor contributes less than half.
    The negative term is the InfoNCE sum over the real candidates plus exp(a.h/t) over the synthetics.
    Synthetics are detached (gradient reaches the encoder only through the anchor in a.h) and are
    never stored in a queue. Type k is active once the training progress (``set_progress``) reaches
    ``start_epoch<k>`` (``self.epoch >= start_epoch<k>``, so 0 = from the start; the davidsvy implementation uses a strict
    ``step > start`` and treats start = 0 as "off", which we do not copy). Random draws come from torch's
    global generator, which the trainer seeds and checkpoints. With s1 = s2 = 0 this is InfoNCE.

    Masked candidates (``candidate_mask`` False: the anchor itself and its positive in a batch, queue
    entries of the anchor's own image under ``method.mask_same_image``) are left out of both the real
    sum and the hard set, so they are never mixed: an older key of the anchor's own image would
    otherwise be its hardest "negative" and end up in most of its synthetics.

    ``n_hard`` larger than an anchor's candidate count is checked once, on the first batch that mixes
    (one host sync). Should a later batch leave an anchor fewer than ``n_hard`` unmasked candidates
    (a queue holding several keys of its image), the hard-set slots that would fall on masked
    candidates take its hardest unmasked candidate instead, so a masked candidate is never mixed.
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
        self._synthetics_now = self._synthetics_at_this_step()

    def set_progress(self, step: int, steps_per_epoch: int, record_diagnostics: bool = True) -> None:
        super().set_progress(step, steps_per_epoch, record_diagnostics)
        # Computed here, outside torch.compile's graph: comparing the (fractional, per-step) epoch inside it
        # recompiled the graph at every step; the graph sees only (s1, s2) now, which change at most twice.
        self._synthetics_now = self._synthetics_at_this_step()

    def _synthetics_at_this_step(self) -> tuple[int, int]:
        """(s1, s2) in use at the current progress: a type mixes from its start epoch on (inclusive)."""
        return (self.s1 if self.epoch >= self.start_epoch1 else 0,
                self.s2 if self.epoch >= self.start_epoch2 else 0)

    @classmethod
    def check_candidates(cls, sampler_cfg, count: int, source: str) -> None:
        """Mixing (s1 or s2 > 0) draws from each anchor's ``n_hard`` hardest candidates: it needs that many."""
        n_hard = config_value(cls, sampler_cfg, "n_hard")
        mixes = config_value(cls, sampler_cfg, "s1") or config_value(cls, sampler_cfg, "s2")
        if mixes and n_hard > count:
            raise ConfigError(f"sampler.n_hard={n_hard} is larger than the {count} candidate negatives per anchor of "
                              f"{source}: lower sampler.n_hard or use more candidates")

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        s1, s2 = self._synthetics_now
        synthetics = []
        if s1 or s2:
            if not self._checked_counts:  # one host sync, on the first batch that mixes
                fewest = int(ctx.mask.sum(dim=1).min())
                if self.n_hard > fewest:
                    raise ValueError(f"sampler.n_hard={self.n_hard} is larger than the {fewest} candidates an "
                                     "anchor has: lower it or use more candidates")
                self._checked_counts = True
            synthetics = self.synthetic_negatives(ctx, s1, s2)
        # Gradient only through the anchor: the synthetics are detached.
        log_mass = mixing_log_mass(ctx.cand_sim, ctx.mask, ctx.anchors, synthetics, ctx.temperature)
        if not ctx.with_diagnostics:
            return NegativeTerm(log_mass=log_mass)
        # torch.full is a device fill; torch.tensor(x, device=cuda) would copy from the host every step.
        return NegativeTerm(log_mass=log_mass,
                            extra_stats={"mixing/synthetic": torch.full((), float(s1 + s2), device=log_mass.device)})

    def synthetic_negatives(self, ctx: Contrast, s1: int, s2: int) -> list[torch.Tensor]:
        """The anchors' synthetic negatives, detached and L2-normalised: [type 1 (A, s1, D), type 2 (A, s2, D)]
        (a type with no synthetics is left out). The draws use torch's global generator on the anchors'
        device in a fixed order: type-1 indices i, j, then alpha; type-2 indices, then beta."""
        n_anchors, dev = ctx.anchors.shape[0], ctx.anchors.device
        # Per-anchor hardest set on detached similarities; masked candidates (the anchor itself, its positive,
        # same-image queue entries) are never in it.
        hard = ctx.candidates.detach()[hardest_candidates(ctx.cand_sim, ctx.mask, self.n_hard)]  # (A, n_hard, D)

        # Draws for the anchors of every process, this process keeping its block: all processes consume
        # the (identically seeded) global generator alike, and W processes x A anchors get the numbers of
        # one process x WA anchors when anchors are laid out rank-major (MoCo, IR, CMC; SimCLR's
        # [view 1, view 2] blocks get a permutation of them: same distribution, not the same numbers).
        world, local = get_world_size(), slice(get_rank() * n_anchors, (get_rank() + 1) * n_anchors)

        def uniform(count: int, high: float) -> torch.Tensor:  # (A, count, 1) ~ U[0, high)
            return high * torch.rand(world * n_anchors, count, 1, device=dev)[local]

        def indices(count: int) -> torch.Tensor:  # (A, count): hard-set slots drawn uniformly with replacement
            return torch.randint(self.n_hard, (world * n_anchors, count), device=dev)[local]

        pairs = anchor_mixes = None
        if s1:  # alpha ~ U[0, 1)
            first, second = indices(s1), indices(s1)
            pairs = (first, second, uniform(s1, 1.0))
        if s2:  # beta ~ U[0, 0.5): the anchor weighs < 1/2
            other = indices(s2)
            anchor_mixes = (other, uniform(s2, 0.5))
        return mixing_synthetics(ctx.anchors, hard, pairs, anchor_mixes)
