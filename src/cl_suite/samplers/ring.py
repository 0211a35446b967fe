"""Conditional negatives in a ring: Ring (Wu, Mosse, Zhuang, Yamins, Goodman, ICLR 2021)."""
from __future__ import annotations

import torch

from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm


def percentile_count(percentile: float, counts: torch.Tensor) -> torch.Tensor:
    """floor(percentile / 100 * count) in integer arithmetic (float rounding would move ring borders)."""
    scaled = round(percentile * 1_000_000)  # the percentile in millionths: exact for any value a config holds
    return torch.div(scaled * counts, 100_000_000, rounding_mode="floor")


class RingSampler(NegativeSampler):
    """Keep, per anchor, only the candidates whose similarity lies between two percentiles of that
    anchor's candidate similarities; the negative term sums exp(s/t) over the kept ring (the MoCo-Ring
    form: every ring element is used, none resampled).

    With m candidates sorted by ascending similarity, the kept positions are
    floor(lower/100 m) .. floor(upper/100 m) - 1. The paper's outer fraction u (the closest u of the
    pool) and inner fraction l (the hole, l of those) are lower = 100 (1 - u), upper = 100 (1 - l u):
    its defaults u = l = 0.1 give 90..99, its SimCLR-Ring u = 0.5, l = 0.1 gives 50..95. 0..100 keeps
    every candidate (InfoNCE). No gradient flows through the selection. Ties at a border (equal
    similarities) are all kept; with continuous similarities they do not occur.

    ``anneal_epochs > 0``: the lower percentile rises linearly from 0 to ``lower_percentile`` over the
    first ``anneal_epochs`` epochs, so the ring starts as the whole pool and tightens toward hard
    negatives, the easy-to-hard direction of the paper's annealing (sec. 1.2 of METHODS.md).
    """

    def __init__(self, lower_percentile: float = 90.0, upper_percentile: float = 99.0, anneal_epochs: float = 0.0):
        super().__init__()
        for key, value in (("lower_percentile", lower_percentile), ("upper_percentile", upper_percentile)):
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"sampler.{key}={value} is not allowed: percentiles lie in [0, 100]")
        if not lower_percentile < upper_percentile:
            raise ValueError(f"sampler.lower_percentile={lower_percentile} must be below "
                             f"sampler.upper_percentile={upper_percentile}: the ring would be empty")
        if not anneal_epochs >= 0:
            raise ValueError(f"sampler.anneal_epochs={anneal_epochs} is not allowed: expected >= 0")
        self.lower_percentile = float(lower_percentile)
        self.upper_percentile = float(upper_percentile)
        self.anneal_epochs = float(anneal_epochs)
        self._checked_counts = False

    def current_lower_percentile(self) -> float:
        if self.anneal_epochs == 0:
            return self.lower_percentile
        return self.lower_percentile * min(1.0, self.epoch / self.anneal_epochs)

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        sim = ctx.cand_sim.detach().masked_fill(~ctx.mask, float("-inf"))
        n_cand = sim.shape[1]
        counts = ctx.mask.sum(dim=1)  # (A,) candidates of each anchor
        if not self._checked_counts:  # one host sync, on the first batch, with the final (tightest) window
            widths = percentile_count(self.upper_percentile, counts) - percentile_count(self.lower_percentile, counts)
            if bool((widths < 1).any()):
                raise ValueError(
                    f"sampler.lower_percentile={self.lower_percentile} and sampler.upper_percentile="
                    f"{self.upper_percentile} keep no negative for an anchor with {int(counts.min())} candidates: "
                    "widen the window or use more candidates (a larger batch, queue or bank)")
            self._checked_counts = True
        lower = self.current_lower_percentile()
        start = percentile_count(lower, counts)
        stop = percentile_count(self.upper_percentile, counts)
        ascending = sim.sort(dim=1).values  # masked (-inf) entries come first: offset by their number
        offset = n_cand - counts
        low = ascending.gather(1, (offset + start).clamp(max=n_cand - 1)[:, None])
        high = ascending.gather(1, (offset + stop - 1).clamp(min=0, max=n_cand - 1)[:, None])
        keep = ctx.mask & (sim >= low) & (sim <= high) & (stop > start)[:, None]
        logits = (ctx.cand_sim / ctx.temperature).masked_fill(~keep, float("-inf"))
        kept = keep.sum(dim=1)
        return NegativeTerm(
            log_mass=torch.logsumexp(logits, dim=1),
            weights=keep.float(),
            extra_stats={"ring/kept_fraction": (kept / counts.clamp(min=1)).float().mean(),
                         "ring/lower_percentile": torch.tensor(lower, device=sim.device)},
        )
