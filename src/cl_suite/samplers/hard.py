"""Hard negatives by importance weighting: HCL (Robinson, Chuang, Sra, Jegelka, ICLR 2021)."""
from __future__ import annotations

import torch

from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm
from cl_suite.samplers.debiased import check_tau_plus, debiased_log_mass


class HardSampler(NegativeSampler):
    """HCL: weight each candidate by w = exp(beta * s / t), then debias as DCL.

    R_a = sum_j w_j n_j / mean_j w_j with n_j = exp(s_j / t): the weights are normalised by their
    **mean** over the anchor's candidates (so R stays on the scale of the plain sum; the authors
    confirmed the code, not the appendix pseudo-code, in joshr17/HCL #1 and #5), and they are not
    detached. beta multiplies s/t, as in the authors' code. beta = 0 is DCL; beta = tau_plus = 0 is InfoNCE.
    """

    def __init__(self, beta: float = 1.0, tau_plus: float = 0.1):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"sampler.beta={beta} is not allowed: the hardness must be >= 0")
        self.beta = float(beta)
        self.tau_plus = check_tau_plus(tau_plus)

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        logits = ctx.cand_sim / ctx.temperature

        def masked(x):  # mask after scaling: beta = 0 times -inf would be NaN
            return x.masked_fill(~ctx.mask, float("-inf"))

        n = ctx.mask.sum(dim=1)
        # log R = LSE((1 + beta) s/t) - LSE(beta s/t) + log N   (sum w n / ((1/N) sum w))
        log_r = (torch.logsumexp(masked((1 + self.beta) * logits), dim=1)
                 - torch.logsumexp(masked(self.beta * logits), dim=1) + torch.log(n.to(logits.dtype)))
        weights = torch.softmax(masked(self.beta * logits), dim=1).detach()  # normalised, for the diagnostics
        return NegativeTerm(log_mass=debiased_log_mass(log_r, ctx, self.tau_plus), weights=weights)
