"""Uniform negatives: InfoNCE (Oord et al. 2018) / NT-Xent (SimCLR, Chen et al. 2020, eq. 1)."""
from __future__ import annotations

from cl_suite.objectives import infonce_log_mass
from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm


class UniformSampler(NegativeSampler):
    """Every candidate is a negative with weight one: ``N_a = sum_j exp(s(a, c_j)/t)``.

    With SimCLR's candidates (the 2B-2 other views of the batch) this is NT-Xent,
    ``-log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)`` (SimCLR eq. 1).
    """

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        return NegativeTerm(log_mass=infonce_log_mass(ctx.cand_sim, ctx.mask, ctx.temperature))
