"""Debiased negatives: DCL (Chuang, Robinson, Lin, Torralba, Jegelka, NeurIPS 2020)."""
from __future__ import annotations

from cl_suite.objectives import debiased_log_mass, infonce_log_mass
from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm


def check_tau_plus(tau_plus: float) -> float:
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"sampler.tau_plus={tau_plus} is not allowed: the class prior must lie in [0, 1)")
    return float(tau_plus)


class DebiasedSampler(NegativeSampler):
    """DCL: remove the expected mass of false negatives (same-class candidates) from the negative term.

    ``tau_plus`` is the class prior (the chance a random candidate shares the anchor's class). With
    tau_plus = 0 this is InfoNCE exactly. The estimator, its floor N e^{-1/t} included, is
    ``cl_suite.objectives.debiased_log_mass``.
    """

    def __init__(self, tau_plus: float = 0.1):
        super().__init__()
        self.tau_plus = check_tau_plus(tau_plus)

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        log_sum = infonce_log_mass(ctx.cand_sim, ctx.mask, ctx.temperature)
        return NegativeTerm(log_mass=debiased_log_mass(log_sum, ctx.pos_sim, ctx.mask, ctx.temperature, self.tau_plus))
