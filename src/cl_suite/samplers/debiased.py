"""Debiased negatives: DCL (Chuang, Robinson, Lin, Torralba, Jegelka, NeurIPS 2020)."""
from __future__ import annotations

import math

import torch

from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm


def check_tau_plus(tau_plus: float) -> float:
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"sampler.tau_plus={tau_plus} is not allowed: the class prior must lie in [0, 1)")
    return float(tau_plus)


def debiased_log_mass(log_sum: torch.Tensor, ctx: Contrast, tau_plus: float) -> torch.Tensor:
    """``log N_g`` with N_g = max((R - tau_plus * N * P) / (1 - tau_plus), N * exp(-1/t)).

    ``log_sum`` is log R, the (possibly re-weighted) sum over the N unmasked candidates of
    exp(s/t); P = exp(s_pos/t). The debiased estimator of Chuang et al. (NeurIPS 2020) as chingyaoc/DCL
    ``main.py`` computes it, with one positive (M = 1): the clamp acts on the sum-scale N_g and
    its floor N e^{-1/t} is the smallest value the sum can take (all cosines -1). Computed in log space:
    log(R - c P) = log R + log(1 - exp(log(c P) - log R)), clamped below at log N - 1/t.
    """
    n = ctx.mask.sum(dim=1).to(log_sum.dtype)
    log_floor = torch.log(n) - 1.0 / ctx.temperature
    if tau_plus == 0.0:
        return torch.maximum(log_sum, log_floor)  # the floor can only bind through rounding here
    log_false = math.log(tau_plus) + torch.log(n) + ctx.pos_sim / ctx.temperature  # log(tau_plus * N * P)
    ratio = torch.exp(log_false - log_sum)  # (tau_plus N P) / R
    # Where the debiased sum would drop below the floor (or below zero), the floor holds; computing the
    # log only where it is positive keeps NaN out of the gradient of the other branch.
    safe = ratio < 1.0
    debiased = log_sum + torch.log1p(-torch.where(safe, ratio, torch.zeros_like(ratio))) - math.log1p(-tau_plus)
    return torch.where(safe, torch.maximum(debiased, log_floor), log_floor)


class DebiasedSampler(NegativeSampler):
    """DCL: remove the expected mass of false negatives (same-class candidates) from the negative term.

    ``tau_plus`` is the class prior (the chance a random candidate shares the anchor's class). With
    tau_plus = 0 this is InfoNCE exactly.
    """

    def __init__(self, tau_plus: float = 0.1):
        super().__init__()
        self.tau_plus = check_tau_plus(tau_plus)

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        logits = (ctx.cand_sim / ctx.temperature).masked_fill(~ctx.mask, float("-inf"))
        return NegativeTerm(log_mass=debiased_log_mass(torch.logsumexp(logits, dim=1), ctx, self.tau_plus))
