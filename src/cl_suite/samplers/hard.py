"""Hard negatives by importance weighting: HCL (Robinson, Chuang, Sra, Jegelka, ICLR 2021)."""
from __future__ import annotations

import math

import torch

from cl_suite.errors import as_written
from cl_suite.objectives import hard_log_mass, hard_weights
from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm
from cl_suite.samplers.debiased import check_tau_plus

ANNEAL_SCHEDULES = ("down",)
ANNEAL_LEVELS = 9  # beta takes the values linspace(beta, 0, 9), as in the authors' code


def annealed_beta(beta: float, epoch: int, total_epochs: int) -> float:
    """beta in (0-based, whole) ``epoch`` of ``total_epochs`` under the authors' ``--anneal down``.

    The authors' loop (joshr17/HCL, ``image/main.py``) counts epochs from 1, and after finishing each epoch
    that is a multiple of floor(E / 9) it sets beta to the next value of linspace(beta, 0, 9). The first
    of those values is beta itself, so beta first drops after epoch 2 floor(E / 9), and reaches 0 after
    epoch 9 floor(E / 9): for E = 400 the 1-based epochs 1-88 use beta, 89-132 use 7/8 beta, ...,
    353-396 use beta / 8 and 397-400 use 0. In 0-based epochs i, beta is linspace(beta, 0, 9)[k - 1]
    after k = floor(i / floor(E / 9)) >= 1 changes. Where E holds a 10th multiple of floor(E / 9), i.e.
    10 floor(E / 9) <= E (E = 10-17, 20-26, 30-35, 40-44, 50-53, 60-62, 70, 71 and 80), the authors' code
    stops after that epoch with an exhausted iterator; here beta stays 0 to the end. E < 9 (a period of
    0 epochs) is refused.
    """
    period = total_epochs // ANNEAL_LEVELS
    level = min(max(epoch // period - 1, 0), ANNEAL_LEVELS - 1)
    if level == ANNEAL_LEVELS - 1:
        return 0.0  # linspace's end point is exactly 0
    return beta - level * (beta / (ANNEAL_LEVELS - 1))


class HardSampler(NegativeSampler):
    """HCL: weight each candidate by w = exp(beta * s / t), then debias as DCL.

    R_a = sum_j w_j n_j / mean_j w_j with n_j = exp(s_j / t): the weights are normalised by their
    **mean** over the anchor's candidates (so R stays on the scale of the plain sum; the authors
    confirmed the code, not the appendix pseudo-code, in joshr17/HCL #1 and #5), and they are not
    detached. beta multiplies s/t, as in the authors' code. beta = 0 is DCL; beta = tau_plus = 0 is InfoNCE.
    The estimator is ``cl_suite.objectives.hard_log_mass``.

    ``anneal="down"``: the beta schedule of the ``--anneal down`` option of the authors' code (joshr17/HCL,
    ``image/main.py``): beta steps down per whole epoch through
    linspace(beta, 0, 9) over ``anneal_epochs`` (the run's ``trainer.epochs``, the authors' ``--epochs``),
    from hard negatives towards DCL at the end; see ``annealed_beta`` for the exact epochs. The schedule
    changes only the beta of the importance weights (the DCL debiasing is unchanged) and depends only on
    the optimizer step, so a resumed run sees the same betas. ``None`` (the default): beta is constant.
    The beta in use is logged per step as ``hard/beta``.
    """

    def __init__(self, beta: float = 1.0, tau_plus: float = 0.1, anneal: str | None = None,
                 anneal_epochs: int | None = None):
        super().__init__()
        if not (beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"sampler.beta={beta} is not allowed: the hardness must be a finite number >= 0")
        if anneal is not None and anneal not in ANNEAL_SCHEDULES:
            raise ValueError(f"sampler.anneal={anneal} is not allowed: expected null (constant beta) or "
                             f"{', '.join(ANNEAL_SCHEDULES)} (the authors' --anneal down schedule)")
        if anneal_epochs is not None and not (
                isinstance(anneal_epochs, (int, float)) and not isinstance(anneal_epochs, bool)
                and math.isfinite(anneal_epochs) and float(anneal_epochs).is_integer() and anneal_epochs >= 1):
            raise ValueError(f"sampler.anneal_epochs={as_written(anneal_epochs)} is not allowed: expected a whole "
                             "number of epochs >= 1 (the length of the run, trainer.epochs) or null")
        if anneal is not None and (anneal_epochs is None or anneal_epochs < ANNEAL_LEVELS):
            raise ValueError(f"sampler.anneal_epochs={as_written(anneal_epochs)} is not allowed with "
                             f"sampler.anneal={anneal}: the schedule changes beta every floor(anneal_epochs / "
                             f"{ANNEAL_LEVELS}) epochs, so it needs anneal_epochs >= {ANNEAL_LEVELS}")
        self.beta = float(beta)
        self.tau_plus = check_tau_plus(tau_plus)
        self.anneal = anneal
        self.anneal_epochs = None if anneal_epochs is None else int(anneal_epochs)
        self._beta_now = self._beta_at_this_step()

    def set_progress(self, step: int, steps_per_epoch: int, record_diagnostics: bool = True) -> None:
        super().set_progress(step, steps_per_epoch, record_diagnostics)
        # Computed here, outside torch.compile's graph: reading the step inside it would recompile the graph
        # at every step; the graph sees only beta, which changes once per level (9 values).
        self._beta_now = self._beta_at_this_step()

    def _beta_at_this_step(self) -> float:
        if self.anneal is None:
            return self.beta
        return annealed_beta(self.beta, self.step // self.steps_per_epoch, self.anneal_epochs)

    def current_beta(self) -> float:
        """The beta of the current step (``set_progress``): ``beta``, or its annealed value in the current
        whole epoch."""
        return self._beta_now

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        beta = self.current_beta()
        log_mass = hard_log_mass(ctx.cand_sim, ctx.mask, ctx.pos_sim, ctx.temperature, beta, self.tau_plus)
        if not ctx.with_diagnostics:
            return NegativeTerm(log_mass=log_mass)
        # Normalised weights, read by the diagnostics only: another (A, M) pass, so only when they are recorded.
        weights = hard_weights(ctx.cand_sim.detach(), ctx.mask, ctx.temperature, beta)
        # torch.full launches a fill kernel; torch.tensor(beta, device=cuda) would copy from the host and sync.
        return NegativeTerm(log_mass=log_mass, weights=weights,
                            extra_stats={"hard/beta": torch.full((), beta, device=ctx.cand_sim.device)})
